"""Whether LD_PRELOAD can see a program at all, from its ELF header: static binaries (such as the
Codex CLI) and set-user-ID programs cannot be seen, so the preload hooks would miss them.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PreloadCheck:
    visible: bool
    path: str
    reason: str

    def __bool__(self) -> bool:
        return self.visible


def _elf_interp(header: bytes, f: Any) -> bool | None:
    """True if the ELF file has a program interpreter, None if it is not ELF."""
    if header[:4] != b"\x7fELF" or len(header) < 64:
        return None
    is64 = header[4] == 2
    order = "little" if header[5] == 1 else "big"

    def num(off: int, size: int) -> int:
        return int.from_bytes(header[off:off + size], order)

    if is64:
        phoff, phentsize, phnum = num(32, 8), num(54, 2), num(56, 2)
    else:
        phoff, phentsize, phnum = num(28, 4), num(42, 2), num(44, 2)
    f.seek(phoff)
    table = f.read(phentsize * min(phnum, 512))
    for i in range(min(phnum, 512)):
        if int.from_bytes(table[i * phentsize:i * phentsize + 4], order) == 3:  # PT_INTERP
            return True
    return False


def preload_check(executable: str | os.PathLike[str], _depth: int = 0) -> PreloadCheck:
    """Whether LD_PRELOAD reaches `executable`: a dynamically linked ELF (or a script whose
    interpreter is one) is visible; a static ELF or a set-user-ID program is not."""
    name = os.fspath(executable)
    path = name if os.sep in name else shutil.which(name)
    if path is None or not os.path.isfile(path):
        return PreloadCheck(True, name, "not found; assuming a dynamically linked program")
    path = os.path.realpath(path)
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            header = f.read(256)
            interp = _elf_interp(header, f)
    except OSError as exc:
        return PreloadCheck(True, path, f"cannot read it ({exc.strerror}); assuming visible")
    if st.st_mode & 0o6000 and st.st_uid != os.geteuid():
        return PreloadCheck(False, path, "set-user-ID/set-group-ID: the loader ignores "
                            "LD_PRELOAD for it")
    if interp is True:
        return PreloadCheck(True, path, "dynamically linked")
    if interp is False:
        return PreloadCheck(False, path, "statically linked: LD_PRELOAD cannot see it "
                            "(use --netmon=netns)")
    if header.startswith(b"#!") and _depth < 4:
        words = header[2:].split(b"\n", 1)[0].decode(errors="replace").split()
        if words:
            interp_name = words[1] if os.path.basename(words[0]) == "env" and len(words) > 1 \
                else words[0]
            inner = preload_check(interp_name, _depth + 1)
            return PreloadCheck(inner.visible, path, f"script run by {inner.path}: {inner.reason}")
    return PreloadCheck(True, path, "not an ELF program; assuming visible")


def is_preload_visible(executable: str | os.PathLike[str]) -> bool:
    """False when LD_PRELOAD cannot see `executable` (static binary, set-user-ID)."""
    return preload_check(executable).visible
