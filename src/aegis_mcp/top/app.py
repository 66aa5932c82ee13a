"""`aegis-mcp top`: the live view, a Textual application.

Textual rather than Rich's Live display: the view is interactive (a cursor on a row, keys
that act on it, a confirmation before a stop, a log screen to follow one agent) and Textual
gives those, with resizing and any terminal that ssh reaches, instead of a key reader and a
layout of our own. What it shows comes from `Collector` (a thread that wakes on change); the
only clock of the view itself is a one-second tick that ages the elapsed and uptime cells in
place, with no I/O.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Static

from aegis_mcp.display import text
from aegis_mcp.top import render
from aegis_mcp.top.collector import Collector
from aegis_mcp.top.follow import LogScreen
from aegis_mcp.top.snapshot import AgentView, Snapshot, SupervisorView


class Confirm(ModalScreen[bool]):
    """A yes/no question over the view: y or Enter says yes, n or Escape says no."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y,enter", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]
    DEFAULT_CSS = """
    Confirm { align: center middle; }
    Confirm > Static { width: auto; max-width: 90%; border: thick $warning; padding: 1 2;
                       background: $surface; }
    """

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        yield Static(Text.assemble(text(self.question), "\n\n", ("y", "bold"), " yes   ",
                                   ("n", "bold"), " no"))

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class TopApp(App[int]):
    """Supervisors on top, background agents below, the highlighted row's details at the
    bottom."""

    TITLE = "aegis-mcp top"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True),  # as in any top
        Binding("tab", "switch", "supervisors/agents", priority=True),
        Binding("l", "follow", "follow log"),
        Binding("s", "stop", "stop agent"),
        Binding("r", "restart", "restart supervisor"),
    ]
    DEFAULT_CSS = """
    #head { height: 1; padding: 0 1; background: $primary-background; }
    .title { height: 1; padding: 0 1; text-style: bold; }
    #supervisors { height: auto; max-height: 35%; }
    #agents { height: 1fr; }
    #detail { height: auto; max-height: 12; padding: 0 1; border-top: solid $secondary; }
    """

    def __init__(self, limit: int = 50) -> None:
        super().__init__()
        self.limit = limit
        self.snap: Snapshot | None = None
        self.collector: Collector | None = None
        self.clocked_detail = False

    def compose(self) -> ComposeResult:
        yield Static(id="head")
        with Vertical():
            yield Static("supervisors", classes="title")
            yield DataTable(id="supervisors", cursor_type="row", zebra_stripes=True)
            yield Static("background agents", classes="title")
            yield DataTable(id="agents", cursor_type="row", zebra_stripes=True)
        yield Static(id="detail")
        yield Footer()

    def on_mount(self) -> None:
        sups = self.query_one("#supervisors", DataTable)
        for key, label in render.SUPERVISOR_COLUMNS:
            sups.add_column(label, key=key)
        agents = self.query_one("#agents", DataTable)
        for key, label in render.AGENT_COLUMNS:
            agents.add_column(label, key=key)
        agents.focus()
        self.query_one("#head", Static).update("reading supervisors and the pool ...")
        self.collector = Collector(lambda s: self.call_from_thread(self.show, s),
                                   lambda e: self.call_from_thread(self.show_error, e),
                                   limit=self.limit)
        self.collector.start()
        self.set_interval(1.0, self.tick)

    def on_unmount(self) -> None:
        if self.collector is not None:
            self.collector.stop()

    # -- what is shown ------------------------------------------------------------------------

    def show(self, snap: Snapshot) -> None:
        self.snap = snap
        now, taken = time.time(), snap["taken_at"]
        render.fill(self.query_one("#supervisors", DataTable),
                    [(str(s["pid"]), render.supervisor_cells(s, now, taken))
                     for s in snap["supervisors"]])
        render.fill(self.query_one("#agents", DataTable),
                    [(a["status"]["agent_id"], render.agent_cells(a, now, taken))
                     for a in snap["agents"]])
        self.query_one("#head", Static).update(render.headline(snap))
        self.show_detail()

    def show_error(self, error: str) -> None:
        self.query_one("#head", Static).update(text(error, style="bold red"))

    def tick(self) -> None:
        """Age the clocks in place: the only thing that changes with no event."""
        if self.snap is None:
            return
        now, taken = time.time(), self.snap["taken_at"]
        render.age(self.query_one("#supervisors", DataTable), "up",
                   {str(s["pid"]): render.supervisor_cells(s, now, taken)["up"]
                    for s in self.snap["supervisors"] if not s["stale"]})
        render.age(self.query_one("#agents", DataTable), "elapsed",
                   {a["status"]["agent_id"]: render.agent_cells(a, now, taken)["elapsed"]
                    for a in self.snap["agents"] if a["status"]["state"] in render.CLOCKED})
        if self.clocked_detail:
            self.show_detail()

    def on_data_table_row_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self.show_detail()

    def on_data_table_row_selected(self, _event: DataTable.RowSelected) -> None:
        self.action_follow()  # Enter on a row: the table's own key

    def on_descendant_focus(self, _event: Any) -> None:
        self.show_detail()

    def show_detail(self) -> None:
        """The chosen row in full; its clock to the second (`tick` calls again while the row
        has one running)."""
        detail = self.query_one("#detail", Static)
        sup, agent = self.selected_supervisor(), self.selected_agent()
        now, taken = time.time(), self.snap["taken_at"] if self.snap else time.time()
        if self.focused is self.query_one("#supervisors", DataTable) and sup is not None:
            detail.update(render.supervisor_detail(sup, now, taken))
            self.clocked_detail = not sup["stale"]
        elif agent is not None:
            detail.update(render.agent_detail(agent, now, taken))
            self.clocked_detail = agent["status"]["state"] in render.CLOCKED
        else:
            detail.update(render.empty_hint(self.snap))
            self.clocked_detail = False

    # -- the selection -------------------------------------------------------------------------

    def _selected_key(self, table_id: str) -> str | None:
        table = self.query_one(table_id, DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def selected_supervisor(self) -> SupervisorView | None:
        key = self._selected_key("#supervisors")
        return next((s for s in (self.snap or {}).get("supervisors", [])
                     if str(s["pid"]) == key), None)

    def selected_agent(self) -> AgentView | None:
        key = self._selected_key("#agents")
        return next((a for a in (self.snap or {}).get("agents", [])
                     if a["status"]["agent_id"] == key), None)

    def _focused_kind(self) -> str:
        return "supervisor" if self.focused is self.query_one("#supervisors", DataTable) \
            else "agent"

    # -- keys ----------------------------------------------------------------------------------

    def action_switch(self) -> None:
        sups, agents = (self.query_one(t, DataTable) for t in ("#supervisors", "#agents"))
        (agents if self.focused is sups else sups).focus()

    def action_follow(self) -> None:
        if self._focused_kind() == "supervisor":
            sup = self.selected_supervisor()
            if sup is None or sup["stale"]:
                self.notify("no running supervisor selected", severity="warning")
                return
            if sup["netmon_log"] is None:
                self.notify(f"supervisor {sup['pid']} runs without --netmon: it has no log to "
                            "follow (its agent's output is in its own terminal)",
                            severity="warning")
                return
            self.push_screen(LogScreen.for_supervisor(sup))
            return
        agent = self.selected_agent()
        if agent is None:
            self.notify("no background agent selected", severity="warning")
            return
        self.push_screen(LogScreen.for_agent(agent["status"]))

    def action_stop(self) -> None:
        agent = self.selected_agent() if self._focused_kind() == "agent" else None
        if agent is None:
            self.notify("select a background agent to stop (Tab switches tables)",
                        severity="warning")
            return
        s = agent["status"]
        if s["state"] not in render.ACTIVE:
            self.notify(f"{s['agent_id']} has already ended ({s['state']})", severity="warning")
            return
        question = f"Stop agent {s['agent_id']} ({s['state']}, {render.short(s['description'])})?"
        self.push_screen(Confirm(question),
                         lambda yes: self._stop(s["agent_id"]) if yes else None)

    @work(thread=True, group="actions")
    def _stop(self, agent_id: str) -> None:
        from aegis_mcp.errors import AegisError
        from aegis_mcp.pool.pool import Pool

        self.call_from_thread(self.notify, f"stopping {agent_id} ...")
        pool = Pool()
        try:
            result = pool.stop(agent_id)
        except AegisError as exc:
            self.call_from_thread(self.notify, str(exc), severity="error")
            return
        finally:
            pool.close()
        said = f"{agent_id} stopped" if result["stopped_now"] else \
            f"{agent_id} had already ended ({result['state']})"
        self.call_from_thread(self.notify, said)
        self._refresh()

    def action_restart(self) -> None:
        sup = self.selected_supervisor() if self._focused_kind() == "supervisor" else None
        if sup is None or sup["stale"] or not sup["control_socket"]:
            self.notify("select a running supervisor to restart its agent (Tab switches "
                        "tables)", severity="warning")
            return
        question = (f"Restart {sup['agent']} of supervisor {sup['pid']}? It is stopped and "
                    "started again in the same conversation.")
        self.push_screen(Confirm(question),
                         lambda yes: self._restart(sup["control_socket"]) if yes else None)

    @work(thread=True, group="actions")
    def _restart(self, socket: str) -> None:
        from aegis_mcp.errors import AegisError
        from aegis_mcp.supervise import control

        try:
            answer = control.request(socket, {"op": "restart",
                                              "reason": "requested from aegis-mcp top"})
        except AegisError as exc:
            self.call_from_thread(self.notify, str(exc), severity="error")
            return
        if answer.get("ok"):
            self.call_from_thread(self.notify, str(answer.get("message")))
        else:
            self.call_from_thread(self.notify, str(answer.get("error")), severity="error")
        self._refresh()

    def _refresh(self) -> None:
        if self.collector is not None:
            self.collector.refresh_now()
