"""What the view's rows and panes say: snapshot records in, Rich texts out.

Every value that came from an agent, a peer or the user (a task, a restart reason, a host
name, a path, a last event) goes through `display.text`: shown, never interpreted.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.text import Text
from textual.widgets import DataTable

from aegis_mcp import display
from aegis_mcp.display import text
from aegis_mcp.netmon.digest import NetworkDigest, describe, size
from aegis_mcp.top.snapshot import AgentView, Snapshot, SupervisorView

SUPERVISOR_COLUMNS = [("pid", "pid"), ("agent", "agent"), ("agent_pid", "agent pid"),
                      ("up", "up"), ("restarts", "restarts"), ("last", "last restart"),
                      ("session", "session"), ("mcp", "mcp"), ("netmon", "netmon"),
                      ("conns", "conns"), ("bytes", "sent/recv"), ("failed", "failed"),
                      ("denied", "denied"), ("hosts", "top hosts")]
AGENT_COLUMNS = [("id", "id"), ("state", "state"), ("type", "type"), ("elapsed", "elapsed"),
                 ("turns", "turns"), ("cost", "cost"), ("net", "conns"), ("last", "last event"),
                 ("holds", "queue / lock"), ("worktree", "worktree (branch)"),
                 ("task", "task")]
ACTIVE = ("queued", "starting", "running")
CLOCKED = ("starting", "running")
STATE_STYLE = {"queued": "yellow", "starting": "cyan", "running": "bold cyan",
               "completed": "green", "failed": "red", "stopped": "magenta", "lost": "red",
               "stale": "red"}
PHASE_STYLE = {"running": "green", "restarting": "yellow", "restart-pending": "yellow",
               "starting": "cyan", "shutdown": "magenta"}


def short(value: Any, width: int = 40) -> str:
    return display.short(value or "", width)


def duration(secs: float | None) -> str:
    """A clock for the tables, to the minute: a cell that changed every second would have the
    table drawn anew every second (the detail pane has the seconds)."""
    if secs is None:
        return "-"
    minutes = max(0, int(secs)) // 60
    if minutes < 1:
        return "<1m"
    if minutes < 60:
        return f"{minutes}m"
    if minutes < 24 * 60:
        return f"{minutes // 60}h{minutes % 60:02d}m"
    return f"{minutes // 1440}d{minutes % 1440 // 60:02d}h"


def seconds(secs: float | None) -> str:
    """A clock to the second, for the detail pane."""
    if secs is None:
        return "-"
    secs = max(0, int(secs))
    hours, rest = divmod(secs, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"



def supervisor_cells(s: SupervisorView, now: float, taken_at: float | None = None
                     ) -> dict[str, Any]:
    """The row of a supervisor, by column key."""
    if s["stale"]:
        left = ", ".join(str(p["pid"]) for p in s["leftovers"]) or "nothing"
        return {"pid": str(s["pid"]), "agent": Text("stale", style="red"), "agent_pid": "-",
                "up": "-", "restarts": "-", "last": text(f"died; left running: {left}"),
                "session": "-", "mcp": "-", "netmon": "-", "conns": "-", "bytes": "-",
                "failed": "-", "denied": "-", "hosts": "-"}
    net = s["network"]
    up = s["uptime_s"]
    if up is not None and taken_at is not None:
        up += now - taken_at
    phase = s["phase"] or "?"
    agent = Text.assemble(text(s["agent"] or "?"),
                          *([] if phase == "running" else
                            [" ", text(phase, style=PHASE_STYLE.get(phase, "yellow"))]))
    return {
        "pid": str(s["pid"]), "agent": agent, "agent_pid": str(s["agent_pid"] or "-"),
        "up": duration(up), "restarts": str(s["restarts"]),
        "last": text(short(s["last_restart_reason"] or "-", 30)),
        "session": text((s["session_id"] or "-")[:8]),
        "mcp": Text(str(s["mcp_servers_up"]), style="green" if s["mcp_servers_up"] else "dim"),
        "netmon": text(s["netmon_mode"] or "off"),
        **_network_cells(net),
    }


def _network_cells(net: NetworkDigest | None) -> dict[str, Any]:
    if net is None:
        return {"conns": "-", "bytes": "-", "failed": "-", "denied": "-", "hosts": "-"}
    if net["error"]:
        return {"conns": "?", "bytes": "?", "failed": "?", "denied": "?",
                "hosts": text(short(net["error"], 30), style="red")}
    return {"conns": f"{net['open']}/{net['connections']}",
            "bytes": f"{size(net['sent'])}/{size(net['recv'])}",
            "failed": Text(str(net["failed"]), style="red" if net["failed"] else ""),
            # a denial is the policy at work, or the agent reaching out of bounds: it stands out
            "denied": Text(str(net["denied"]), style="bold white on red" if net["denied"]
                           else "dim"),
            "hosts": text(short(", ".join(net["top_hosts"]) or "-", 40))}


def agent_cells(a: AgentView, now: float, taken_at: float | None = None) -> dict[str, Any]:
    """The row of a background agent, by column key."""
    s = a["status"]
    elapsed = s["elapsed_secs"]
    if elapsed is not None and taken_at is not None and s["state"] in CLOCKED:
        elapsed += now - taken_at
    if s["state"] == "queued":
        holds = f"queue #{s['queue_position']}" + (
            f" after {', '.join(w[:8] for w in s['waiting_for'])}" if s["waiting_for"] else "")
    else:
        holds = short(a["lock"], 30) if a["lock"] else "-"
    last = s["reason"] if s["state"] in ("failed", "stopped", "lost") and s["reason"] \
        else s["last_event"]
    cost = s["total_cost_usd"]
    worktree = f"{short(s['worktree_path'], 24)} ({s['branch']})" if s["worktree_path"] else "-"
    return {
        "id": text(s["agent_id"][:8]), "state": text(s["state"],
                                                     style=STATE_STYLE.get(s["state"], "")),
        "type": text(s["agent_type"]), "elapsed": duration(elapsed),
        "turns": str(s["num_turns"] if s["num_turns"] is not None else s["iterations"]),
        "cost": f"${cost:.4f}" if cost is not None else "-",
        "net": _agent_network_cell(s["network"]),
        "last": text(short(last or "-", 40)), "holds": text(holds), "worktree": text(worktree),
        "task": text(short(s["description"], 40)),
    }


def _agent_network_cell(net: NetworkDigest | None) -> Text:
    if net is None:
        return Text("-")
    if net["error"]:
        return Text("?", style="red")
    cell = Text(f"{net['open']}/{net['connections']}")
    if net["failed"]:
        cell.append(f" {net['failed']} failed", style="red")
    return cell


def fill(table: DataTable, rows: list[tuple[str, dict[str, Any]]]) -> None:
    """Make `table` show `rows` (key, cells by column key). The same keys in the same order
    (the usual case: a state or a counter changed) update only the cells that changed, so the
    cursor and the scroll stay where the user put them; otherwise the rows are laid anew and
    the cursor goes back to the row it was on."""
    columns = [c.key.value for c in table.columns.values()]
    current = [k.value for k in table.rows]
    if current == [key for key, _ in rows]:
        for key, cells in rows:
            for col in columns:
                if table.get_cell(key, col) != cells[col]:
                    table.update_cell(key, col, cells[col], update_width=True)
        return
    selected = current[table.cursor_row] if current and 0 <= table.cursor_row < len(current) \
        else None
    table.clear()
    for key, cells in rows:
        table.add_row(*(cells[col] for col in columns), key=key)
    keys = [key for key, _ in rows]
    if selected in keys:
        table.move_cursor(row=keys.index(selected), animate=False)


def age(table: DataTable, column: str, values: dict[str, str]) -> None:
    """Set one clock column of the rows in `values`, where it changed."""
    for key, value in values.items():
        try:
            if table.get_cell(key, column) != value:
                table.update_cell(key, column, value)
        except Exception:  # the row went between the snapshot and this tick
            continue


def headline(snap: Snapshot) -> Text:
    sups = [s for s in snap["supervisors"] if not s["stale"]]
    stale = len(snap["supervisors"]) - len(sups)
    stats = snap["pool"]
    parts = [f"{len(sups)} supervisor{'s' if len(sups) != 1 else ''}"]
    if stale:
        parts.append(f"{stale} stale")
    if stats is not None:
        parts.append(f"agents: {stats['running']} running, {stats['queued']} queued, "
                     f"{stats['completed']} completed, {stats['failed'] + stats['lost']} "
                     f"failed, {stats['stopped']} stopped (max {stats['max_agents']} at once)")
    nets = [s["network"] for s in sups if s["network"] is not None]
    if nets:
        parts.append(f"network: {sum(n['open'] for n in nets)} open, "
                     f"{sum(n['failed'] for n in nets)} failed")
    denied = sum(n["denied"] for n in nets)
    line = text("  ·  ".join(parts))
    if denied:
        line.append_text(text(f", {denied} denied by policy", style="bold red"))
    if snap["pool_error"]:
        line.append_text(text(f"  pool: {snap['pool_error']}", style="red"))
    return line


def supervisor_detail(s: SupervisorView, now: float, taken_at: float) -> Any:
    if s["stale"]:
        lines = [text(f"supervisor {s['pid']} died without cleaning up "
                      f"({s['control_socket']})", style="red")]
        lines += [text(f"  left running: {p['pid']} {short(p['command'], 100)}")
                  for p in s["leftovers"]]
        lines.append(text("`aegis-mcp ps` lists them; end them with kill"))
        return Group(*lines)
    up = None if s["uptime_s"] is None else s["uptime_s"] + now - taken_at
    out = [text(f"supervisor {s['pid']}: {s['agent']} pid {s['agent_pid'] or '-'}, "
                f"{s['phase']}, up {seconds(up)}, in {s['cwd']}"),
           text(f"session {s['session_id'] or '-'}, {s['restarts']} restarts, last: "
                f"{s['last_restart_reason'] or '-'}"),
           text(f"aegis-mcp MCP servers up for this start: {s['mcp_servers_up']}")]
    net = s["network"]
    if net is None:
        out.append(text("network: not monitored (start it with --netmon)", style="dim"))
    elif net["error"]:
        out.append(text(f"network ({s['netmon_mode']}): {net['error']}", style="red"))
    else:
        out.append(text(f"network ({s['netmon_mode']}): {net['connections']} connections, "
                        f"{net['open']} open, {net['failed']} failed, sent "
                        f"{size(net['sent'])}, received {size(net['recv'])}; top hosts: "
                        f"{', '.join(net['top_hosts']) or '-'}"))
        if net["denied"]:
            out.append(text(f"denied by the network policy: {net['denied']} ("
                            f"{', '.join(net['denied_targets'])}; `aegis-mcp netmon policy "
                            f"{s['pid']}` says why)", style="bold red"))
    out.append(Text("r restart its agent · enter follow its network log", style="dim"))
    return Group(*out)


def agent_detail(a: AgentView, now: float, taken_at: float) -> Any:
    s = a["status"]
    elapsed = s["elapsed_secs"]
    if elapsed is not None and s["state"] in CLOCKED:
        elapsed += now - taken_at
    clock = f", {seconds(elapsed)}" if elapsed is not None else ""
    out = [text(f"{s['agent_id']} ({s['agent_type']}, {s['state']}{clock}): "
                f"{short(s['description'], 200)}"),
           text(f"in {s['cwd']}" + (f", worktree {s['worktree_path']} branch {s['branch']}"
                                    if s["worktree_path"] else "")
                + (f", locks {a['lock']}" if a["lock"] else "")
                + (f", pid {s['pid']}" if s["pid"] else ""))]
    if s["session_id"] or s["total_cost_usd"] is not None:
        out.append(text(f"session {s['session_id'] or '-'}"
                        + (f", cost ${s['total_cost_usd']:.4f}"
                           if s["total_cost_usd"] is not None else "")))
    if s["network"] is not None:
        out.append(text(f"network: {describe(s['network'])}"))
    if s["reason"]:
        out.append(text(f"reason: {short(s['reason'], 200)}"))
    if s["result"]:
        out.append(text(f"result: {short(s['result'], 300)}"))
    elif s["last_event"]:
        out.append(text(f"last: {short(s['last_event'], 300)}"))
    keys = "enter follow its log" + (" · s stop it" if s["state"] in ACTIVE else "")
    out.append(Text(keys, style="dim"))
    return Group(*out)


def empty_hint(snap: Snapshot | None) -> Text:
    if snap is None:
        return Text("")
    if not snap["supervisors"] and not snap["agents"]:
        return Text("nothing runs yet: start an agent with `aegis-mcp claude`, or a background "
                    "agent with `aegis-mcp agents spawn TASK`", style="dim")
    return Text("tab switches between supervisors and agents · q quits", style="dim")
