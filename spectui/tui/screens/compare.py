"""Several fine-tunes of one base side by side (the paper's central comparison): totals, ΔW summaries,
and the intruders-vs-ε (Fig. 4) and intruders-vs-k (Fig. 15) curves of every model on shared axes."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Header

from spectui.defaults import EPSILON_SWEEP
from spectui.tui.keys import footer
from spectui.tui.screens.base import ResultsScreen
from spectui.tui.widgets.formats import rank, ratio
from spectui.tui.widgets.plots import CurvePlot


class CompareScreen(ResultsScreen):
    HELP_TITLE = "Compare"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", tooltip="back"),
        Binding("enter", "show_model", "Show model", show=False,
                tooltip="show the highlighted model everywhere (the overview, the matrix views)"),
        *footer("mitigate", "help"),
    ]

    def __init__(self, inspector) -> None:
        super().__init__()
        self.inspector = inspector

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="compare-table", cursor_type="row")
        with Horizontal(id="compare-plots"):
            yield CurvePlot(id="compare-eps")
            yield CurvePlot(id="compare-k")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("tuned model", "kind", "intruders", "matrices with", "median ‖ΔW‖/‖W0‖",
                          "median eff. rank ΔW")
        self.set_focus(table)
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
                "…" if s.median_rel_norm is None else ratio(s.median_rel_norm),
                "…" if s.median_effective_rank is None else rank(s.median_effective_rank),
                key=str(model),
            )
        table.move_cursor(row=min(row, table.row_count - 1))
        ks = list(range(1, app.k_max + 1))
        self.query_one("#compare-eps", CurvePlot).show(
            list(EPSILON_SWEEP), ins.epsilon_curves(k),
            f"intruders vs ε (k={k})", "ε", mark=eps)
        self.query_one("#compare-k", CurvePlot).show(
            ks, [(label, scan.k_curve(i, eps, ks)) for i, label in enumerate(ins.labels)],
            f"intruders vs k (ε={eps:.2f})", "k", mark=k, integer_x=True)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter shows that model everywhere (the overview, the matrix views)."""
        self.app.model = int(event.row_key.value)
        self.app.pop_screen()

    def action_show_model(self) -> None:
        table = self.query_one(DataTable)
        if table.row_count:
            self.app.model = table.cursor_row
            self.app.pop_screen()
