"""Several fine-tunes of one base side by side (the paper's central comparison): totals, ΔW summaries,
and the intruders-vs-ε (Fig. 4) and intruders-vs-k (Fig. 15) curves of every model on shared axes."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Header

from spectui.defaults import EPSILON_SWEEP
from spectui.tui.screens.base import ResultsScreen
from spectui.tui.widgets.plots import CurvePlot


class CompareScreen(ResultsScreen):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, inspector) -> None:
        super().__init__()
        self.inspector = inspector

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="compare-table", cursor_type="row")
        with Horizontal(id="compare-plots"):
            yield CurvePlot(id="compare-eps")
            yield CurvePlot(id="compare-k")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("tuned model", "kind", "intruders", "matrices with", "median ‖ΔW‖/‖W0‖",
                          "median eff. rank ΔW")
        table.focus()
        self.update_view()

    def update_view(self) -> None:
        ins, app = self.inspector, self.app
        k, eps = app.k, app.epsilon
        table = self.query_one(DataTable)
        row = table.cursor_row
        table.clear()
        scan = ins.scan_results
        for model, s in enumerate(scan.summaries(k, eps)):
            table.add_row(
                s.label, s.description, str(s.total), f"{s.with_intruders}/{s.matrices}",
                "…" if s.median_rel_norm is None else f"{s.median_rel_norm:#.3g}",
                "…" if s.median_effective_rank is None else f"{s.median_effective_rank:.1f}",
                key=str(model),
            )
        table.move_cursor(row=min(row, table.row_count - 1))
        ks = list(range(1, app.k_max + 1))
        self.query_one("#compare-eps", CurvePlot).show(
            list(EPSILON_SWEEP), ins.epsilon_curves(k),
            f"intruders vs ε (k={k})", "ε", mark=eps)
        self.query_one("#compare-k", CurvePlot).show(
            ks, [(label, scan.k_curve(i, eps, ks)) for i, label in enumerate(ins.labels)],
            f"intruders vs k (ε={eps:.2f})", "k", mark=k)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter shows that model everywhere (the overview, the matrix views)."""
        self.app.model = int(event.row_key.value)
        self.app.pop_screen()
