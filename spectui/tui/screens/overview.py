"""The model at a glance: the matrix list, the layer × module grid, totals and the ε curve."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Header, Static

from spectui.defaults import EPSILON_SWEEP
from spectui.tui.inspector import next_with_intruders
from spectui.tui.screens.base import ResultsScreen
from spectui.tui.widgets.matrix_list import MatrixList
from spectui.tui.widgets.overview_grid import OverviewGrid
from spectui.tui.widgets.plots import CurvePlot
from spectui.tui.widgets.scan_status import ScanStatus


class OverviewScreen(ResultsScreen):
    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("n", "jump(1)", "Next intr."),
        Binding("p", "jump(-1)", "Prev intr."),
    ]

    def __init__(self, inspector) -> None:
        super().__init__()
        self.inspector = inspector
        self._curves = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield ScanStatus()
        with Horizontal(id="overview-body"):
            yield MatrixList(self.inspector, id="matrix-list")
            with Vertical(id="overview-right"):
                yield Static("", id="totals")
                yield OverviewGrid(self.inspector, id="grid")
                yield CurvePlot(id="eps-curve")
        yield Footer()

    def on_mount(self) -> None:
        self.update_view()
        self.query_one("#matrices").focus()

    def update_view(self) -> None:
        app, ins = self.app, self.inspector
        model, k, eps = app.model, app.k, app.epsilon
        self.query_one(ScanStatus).show(*ins.progress, ins.finished, len(ins.errors))
        self.query_one(MatrixList).show(model, k, eps)
        self.query_one(OverviewGrid).show(model, k, eps)
        scan = ins.scan_results
        s = scan.summary(model, k, eps)
        self.query_one("#totals", Static).update(
            f"[b]{s.label}[/] ({s.description}): "
            f"[b]{s.total}[/] intruders in {s.with_intruders}/{s.matrices} matrices · k={k} ε={eps:.2f}"
        )
        curves = ins.epsilon_curves(k)
        if (curves, k, eps) != self._curves:  # plotext redraws are the costliest part of a refresh
            self._curves = (curves, k, eps)
            self.query_one(CurvePlot).show(list(EPSILON_SWEEP), curves, f"intruders vs ε  (k={k})", "ε", mark=eps)

    def action_filter(self) -> None:
        self.query_one(MatrixList).focus_filter()

    def action_jump(self, step: int) -> None:
        """Move the list cursor to the next (or previous) matrix with intruders, wrapping."""
        listing = self.query_one(MatrixList)
        flagged = set(self.inspector.with_intruders(self.app.model, self.app.k, self.app.epsilon))
        target = next_with_intruders(listing.names(), listing.highlighted, flagged, step)
        if target is None:
            self.notify("no matrix has intruders at these thresholds", severity="warning")
        else:
            listing.select(target)
            listing.table.focus()
