"""The model at a glance: the matrix list, the layer × module grid, totals, where the intruders
are, and the ε curve."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Header, Input, Static

from spectui.defaults import EPSILON_SWEEP
from spectui.tui.inspector import next_with_intruders
from spectui.tui.keys import footer
from spectui.tui.messages import MatrixHighlighted
from spectui.tui.screens.base import ResultsScreen
from spectui.tui.widgets.matrix_list import MatrixList
from spectui.tui.widgets.overview_grid import OverviewGrid
from spectui.tui.widgets.plots import CurvePlot
from spectui.tui.widgets.scan_status import ScanStatus


class OverviewScreen(ResultsScreen):
    HELP_TITLE = "Overview"
    BINDINGS = [
        # priority: taken before the keys queued after it are handed out, so they go to the filter
        Binding("slash", "filter", "Filter", show=False, priority=True,
                tooltip="filter the list by name; Enter or Esc goes back to the list"),
        Binding("n", "jump(1)", "Next intr.", tooltip="next matrix with intruders"),
        Binding("p", "jump(-1)", "Prev intr.", show=False, tooltip="previous matrix with intruders"),
        Binding("o", "sort", "Sort", show=False,
                tooltip="sort the list: model order, most intruders, largest ΔW/W0, name"),
        Binding("e", "experts", "Experts", show=False,
                tooltip="a mixture-of-experts layer in the grid: a row per expert, or folded back"),
        Binding("escape", "leave_filter", "Leave filter", show=False, tooltip="from the filter box back to the list"),
        *footer("mitigate", "compare", "export", "train", "runs", "help"),
    ]

    def __init__(self, inspector) -> None:
        super().__init__()
        self.inspector = inspector
        self._curves = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield ScanStatus(self.inspector)
        with Horizontal(id="overview-body"):
            yield MatrixList(self.inspector, id="matrix-list")
            with Vertical(id="overview-right"):
                yield Static("", id="totals")
                yield OverviewGrid(self.inspector, id="grid")
                yield Static("", id="grid-note")
                yield CurvePlot(id="eps-curve")
        yield Footer(compact=True)

    @property
    def tearing_down(self) -> bool:
        """The app is closing (quit, or a --serve tab closed right after it opened): the widgets are
        going or were never composed, so none is queried."""
        return not (self.is_attached and self.app.is_running)

    def on_mount(self) -> None:
        if self.tearing_down:
            return
        self.update_view()
        self.set_focus(self.query_one("#matrices"))

    def update_view(self) -> None:
        if self.tearing_down:
            return
        app, ins = self.app, self.inspector
        model, k, eps = app.model, app.k, app.epsilon
        self.query_one(MatrixList).show(model, k, eps)
        self.query_one(OverviewGrid).show(model, k, eps)
        self.query_one("#totals", Static).update(self._totals(model, k, eps))
        self._grid_note()
        # every ε needs the spectra phase's max|cos|: during the counts phase the curve would read 0
        curves = ins.epsilon_curves(k) if ins.results else []
        title = f"intruders vs ε (k={k})" + ("" if curves else ": once the spectra land")
        if (curves, k, eps) != self._curves:  # plotext redraws are the costliest part of a refresh
            self._curves = (curves, k, eps)
            self.query_one(CurvePlot).show(list(EPSILON_SWEEP), curves, title, "ε", mark=eps)

    def _totals(self, model: int, k: int, eps: float) -> Text:
        """The model's totals and where its intruders are; in words when the fine-tune changed
        nothing (every matrix equal to the base's), and how many matrices it left as they were."""
        ins = self.inspector
        scan = ins.scan_results
        s = scan.summary(model, k, eps)
        text = Text.assemble((s.label, "bold"), ": ")  # its description is in the title bar
        if scan.identical_to_base(model):
            text.append("identical to the base", style="bold reverse")
            return text.append(f": the fine-tune changed nothing (all {s.matrices} matrices equal the base's)")
        # the counts phase's matrices count too (ScanResults holds full results only)
        text.append(str(ins.total(model, k, eps)), style="bold")
        text.append(f" intruders in {len(ins.with_intruders(model, k, eps))}/{s.matrices} matrices")
        if unchanged := len(scan.unchanged(model)):
            text.append(f" · {unchanged} unchanged")
        text.append(f" · k={k} ε={eps:.2f}\n")
        where = ins.where(model, k, eps) if ins.finished else "where the intruders are: once the scan is done"
        return text.append(where, style="dim")

    def _grid_note(self) -> None:
        """The cell highlighted (in the grid, or the list's matrix, which the grid follows) named in
        full under the grid, whose columns are abbreviated."""
        self.query_one("#grid-note", Static).update(self.query_one(OverviewGrid).note())

    def on_data_table_cell_highlighted(self, _: OverviewGrid.CellHighlighted) -> None:
        self._grid_note()

    def on_matrix_highlighted(self, message: MatrixHighlighted) -> None:
        """The list and the grid show the same matrix: the one not in focus follows. (The message
        goes on to the app, which moves the matrix up the scan queue.)"""
        grid, listing = self.query_one(OverviewGrid), self.query_one(MatrixList)
        if self.focused is grid:
            listing.select(message.name)
        else:
            grid.select(message.name)
        self._grid_note()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """`/` typed in the filter box is text, not the key that focuses it."""
        if action == "filter":
            return not isinstance(self.focused, Input)
        return True

    def action_filter(self) -> None:
        self.query_one(MatrixList).focus_filter()

    def action_leave_filter(self) -> None:
        listing = self.query_one(MatrixList)
        if isinstance(self.focused, Input):
            self.set_focus(listing.table)

    def action_experts(self) -> None:
        """Expand or fold the experts of the grid's layer (the list's matrix's, when the list has
        the keys); from the list, the grid's cursor then goes to that expert's own cell."""
        grid, listing = self.query_one(OverviewGrid), self.query_one(MatrixList)
        if not grid.toggle_experts():
            self.notify("no experts in this layer", severity="warning", timeout=2)
        elif self.focused is not grid and listing.highlighted is not None:
            grid.select(listing.highlighted)
        self._grid_note()

    def action_sort(self) -> None:
        order = self.query_one(MatrixList).cycle_sort()
        self.notify(f"matrices {order}", timeout=2)

    def action_jump(self, step: int) -> None:
        """Move the list cursor to the next (or previous) matrix with intruders, wrapping."""
        listing = self.query_one(MatrixList)
        flagged = set(self.inspector.with_intruders(self.app.model, self.app.k, self.app.epsilon))
        target = next_with_intruders(listing.names(), listing.highlighted, flagged, step)
        if target is None:
            self.notify("no matrix has intruders at these thresholds", severity="warning")
        else:
            listing.select(target)
            self.set_focus(listing.table)
