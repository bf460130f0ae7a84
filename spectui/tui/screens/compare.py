"""Several fine-tunes of one base side by side (the paper's central comparison): totals, ΔW summaries,
how alike their updates are, and the intruders-vs-ε (Fig. 4) and intruders-vs-k (Fig. 15) curves of
every model on shared axes."""

from __future__ import annotations

from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Header, Static
from textual.worker import get_current_worker

from spectui.defaults import EPSILON_SWEEP
from spectui.report.records import cosine_text
from spectui.tui.keys import footer
from spectui.tui.screens.base import ResultsScreen
from spectui.tui.widgets.formats import rank, ratio
from spectui.tui.widgets.plots import CurvePlot

if TYPE_CHECKING:
    from spectui.results import ScanResults, UpdateSimilarity
    from spectui.tui.inspector import Inspector

# The update cosines per inspector, with the number of tuned models they cover: computing them reads
# every tensor again, so they are kept for as long as the inspector lives and its models stay the same.
_SIMILARITY: WeakKeyDictionary[Inspector, tuple[int, UpdateSimilarity]] = WeakKeyDictionary()


class CompareScreen(ResultsScreen):
    HELP_TITLE = "Compare"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", tooltip="back"),
        Binding("enter", "show_model", "Show model", show=False,
                tooltip="show the highlighted model everywhere (the overview, the matrix views)"),
        *footer("mitigate", "studies", "help"),
    ]

    def __init__(self, inspector) -> None:
        super().__init__()
        self.inspector = inspector
        self._computing: int | None = None  # the models' count a worker computes the cosines for

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="compare-table", cursor_type="row")
        yield Static("", id="compare-similarity")
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
        self.show_similarity()

    def show_similarity(self) -> None:
        """With two tuned models or more, the cosines of their updates: kept ones at once, else
        computed by a worker (it reads the checkpoints) while the view goes on."""
        box = self.query_one("#compare-similarity", Static)
        count = len(self.inspector.labels)
        box.display = count >= 2
        if count < 2:
            return
        known = _SIMILARITY.get(self.inspector)
        if known is not None and known[0] == count:
            box.update(similarity_table(known[1]))
        elif self._computing != count:
            self._computing = count
            box.update("update similarity (cosine of ΔW between tuned models): reading their matrices…")
            self.compute_similarity(self.inspector.scan_results, count)

    @work(thread=True, group="similarity", exclusive=True, exit_on_error=False)
    def compute_similarity(self, scan: ScanResults, count: int) -> None:
        similarity = scan.update_similarity()
        _SIMILARITY[self.inspector] = (count, similarity)
        if not get_current_worker().is_cancelled:  # the user may have left the screen meanwhile
            self.app.call_from_thread(self.show_similarity)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter shows that model everywhere (the overview, the matrix views)."""
        self.app.model = int(event.row_key.value)
        self.app.pop_screen()

    def action_show_model(self) -> None:
        table = self.query_one(DataTable)
        if table.row_count:
            self.app.model = table.cursor_row
            self.app.pop_screen()


def similarity_table(similarity: UpdateSimilarity) -> Group:
    """The whole-model cosines, ⟨ΔW_a, ΔW_b⟩_F / (‖ΔW_a‖ ‖ΔW_b‖), one row and column per tuned model."""
    left_out = f"; {len(similarity.left_out)} matrices could not be read" if similarity.left_out else ""
    title = Text.assemble(("update similarity", "bold"), f": cosine of ΔW over every matrix (1: the same "
                                                         f"directions, 0: unrelated{left_out})")
    table = Table(box=None, padding=(0, 1))
    table.add_column("")
    for label in similarity.labels:
        table.add_column(label, justify="right")
    for label, row in zip(similarity.labels, similarity.cosine):
        table.add_row(label, *map(cosine_text, row))
    return Group(title, table)
