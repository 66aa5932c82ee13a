"""Untrusted text on the user's terminal: data, never markup, never a terminal command.

What the CLI shows comes largely from others: an agent's restart reason and command line, a
peer's host name, a socket path, a task description, a namespace name. Two ways it could act
instead of being read:
- Rich markup: a `[/bold]` with no opening tag makes Rich raise (the command dies), a
  `[link=...]` makes a hyperlink. Data goes to Rich as `Text` objects, which Rich never
  parses for markup (nor emoji codes, nor highlighting).
- Terminal escapes: Rich passes control characters inside a `Text` through (it strips only
  BEL, BS, VT, FF and CR), so `\\x1b]52;...` would set the clipboard and `\\x1b[2J` clear the
  screen. Every control character, and the Unicode ones that reorder or break what the user
  reads (bidi overrides, line separators), is shown as its escape (`\\x1b`, `\\u202e`).

The rule, one way everywhere: data printed with `print` goes through `plain()`, data given to
Rich goes through `text()`. JSON output needs neither (`json.dumps` escapes control characters).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

# C0 controls, DEL and C1 controls (0x9b is a one-byte CSI on some terminals).
_CONTROLS = [*range(0x20), *range(0x7F, 0xA0)]
# Bidi embeddings, overrides and isolates, and the line/paragraph separators.
_INVISIBLE = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028,
              0x2029]
_VISIBLE = {c: f"\\x{c:02x}" for c in _CONTROLS} | {c: f"\\u{c:04x}" for c in _INVISIBLE}
_VISIBLE |= {ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"}


def plain(value: object) -> str:
    """`value` as one line of inert text: control characters shown as escapes."""
    return str(value).translate(_VISIBLE)


def short(value: object, width: int) -> str:
    """`value` on one line (its white space folded) and cut to `width` with an ellipsis: for a
    table cell; still data, to pass through `text` or `plain`."""
    flat = " ".join(str(value if value is not None else "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def text(value: object, style: str = "") -> Text:
    """`value` as a Rich `Text`: printed literally (no markup), its control characters shown
    as escapes."""
    from rich.text import Text

    return Text(plain(value), style=style)


def lines(values: list[str], style: str = "") -> Text:
    """Several untrusted lines as one Rich `Text`, one per line."""
    from rich.text import Text

    return Text("\n".join(plain(v) for v in values), style=style)


# Piped, a table is as wide as its values: Rich would otherwise lay it out for 80 columns and
# cut what does not fit ("00:00:…", "/tmp/s…"), and a script reading it would get less.
_UNCUT = 1_000_000


def console() -> Console:
    """Rich's console on stdout: on a terminal its width, elsewhere no width limit at all."""
    from rich.console import Console

    out = Console(highlight=False)
    return out if out.is_terminal else Console(highlight=False, width=_UNCUT)


def print_table(table: Any, out: Console | None = None) -> None:
    """A Rich table (or any renderable) on stdout; piped, each value whole and without the
    spaces that pad its lines to the table's width."""
    out = out or console()
    if out.is_terminal:
        out.print(table)
        return
    with out.capture() as captured:
        out.print(table)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
