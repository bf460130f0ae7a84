"""One matrix in detail: spectra, the top tuned vectors, the similarity heatmap, and the follow-up
literature's figures (principal angles, where ‖ΔW‖² lies, spectral drift)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Footer, Header, Static

from spectui.checkpoint.names import short_name
from spectui.tui.inspector import next_with_intruders
from spectui.tui.keys import footer
from spectui.tui.screens.base import ResultsScreen
from spectui.tui.widgets import formats
from spectui.tui.widgets.heatmap import Heatmap
from spectui.tui.widgets.plots import SpectrumPlot
from spectui.tui.widgets.vector_table import VectorTable

if TYPE_CHECKING:
    from spectui.spectral import MatrixResult

HEATMAP_MIN = 10  # the paper's Fig. 3 shows the top 10 × 10


class MatrixScreen(ResultsScreen):
    HELP_TITLE = "Matrix"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", tooltip="back to the overview"),
        Binding("n", "jump(1)", "Next intr.", tooltip="next matrix with intruders"),
        Binding("p", "jump(-1)", "Prev intr.", show=False, tooltip="previous matrix with intruders"),
        Binding("v", "overlay", "Overlay", tooltip="overlay the other tuned models' spectra"),
        *footer("mitigate", "compare", "help"),
    ]

    def __init__(self, inspector, name: str) -> None:
        super().__init__()
        self.inspector = inspector
        self.matrix = name
        self.overlay = False  # every tuned model's spectrum on the same plot
        self._shown = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="matrix-info")
        yield Static("", id="matrix-followup")
        yield Static("", id="matrix-followup-values")
        with Horizontal(id="matrix-plots"):
            yield SpectrumPlot(id="spectrum")
            yield Heatmap(id="heatmap")
        yield VectorTable(id="vectors")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.inspector.prioritize(self.matrix)
        self.update_view()
        self.set_focus(self.query_one(VectorTable))

    def update_view(self) -> None:
        app, ins = self.app, self.inspector
        model, k, eps = app.model, app.k, app.epsilon
        result = ins.result(model, self.matrix)
        state = (self.matrix, model, k, eps, self.overlay, ins.counted(model, self.matrix) is not None, frozenset(
            i for i in range(len(ins.labels)) if ins.result(i, self.matrix) is not None))
        if state == self._shown:
            return
        self._shown = state
        info = self.query_one("#matrix-info", Static)
        title = f"[b]{short_name(self.matrix)}[/]"
        summary, values = ("", "") if result is None else followup(result, k, eps)
        self.query_one("#matrix-followup", Static).update(summary)
        self.query_one("#matrix-followup-values", Static).update(values)
        if result is None:
            spec = ins.comparison.tuned[model].spec(self.matrix)
            if spec is None:
                reason = next((s.reason for s in ins.comparison.tuned[model].pairing.skipped
                               if s.name == self.matrix), "not scanned")
                info.update(f"{title} — not scanned for {ins.labels[model]}: {reason}")
            elif error := ins.error(self.matrix):
                info.update(f"{title} — [red]failed:[/] {error}")
            elif (view := ins.row(model, self.matrix, k, eps)).status == "done":
                ranks = ins.counted(model, self.matrix).intruder_ranks(k, eps)
                plural = "" if len(ranks) == 1 else "s"
                where = f" at rank{plural} {formats.ranks(ranks)} ({formats.RANKS_FROM})" if ranks else ""
                info.update(f"{title} {spec.shape[0]}×{spec.shape[1]} · [b]{view.count}[/] intruder{plural}{where} "
                            f"(k={k}, ε={eps:.2f}) — spectra computing (moved to the front of the queue)…")
            else:
                info.update(f"{title} {spec.shape[0]}×{spec.shape[1]} — computing (moved to the front of the queue)…")
            return
        ranks = result.intruder_ranks(k, eps)
        warning = ("\n[yellow]~ the base matrix looks random (Marchenko–Pastur): "
                   "its intruders mean little[/]") if result.base_random_like else ""
        plural = "" if len(ranks) == 1 else "s"
        where = f" at rank{plural} {formats.ranks(ranks)} ({formats.RANKS_FROM})" if ranks else ""
        info.update(
            f"{title} {result.shape[0]}×{result.shape[1]} · [b]{len(ranks)}[/] intruder{plural}{where} "
            f"(k={k}, ε={eps:.2f}) · "
            f"‖ΔW‖/‖W0‖ {formats.ratio(result.delta_rel_norm)} · "
            f"eff. rank ΔW {formats.rank(result.delta_effective_rank)} · "
            f"stable rank {formats.rank(result.stable_rank_base)} → {formats.rank(result.stable_rank_tuned)}{warning}"
        )
        others = [(f"{label} σ", other.sigma_tuned) for i, label in enumerate(ins.labels)
                  if self.overlay and i != model and (other := ins.result(i, self.matrix)) is not None]
        self.query_one(SpectrumPlot).show(result.sigma_base, result.sigma_tuned, ranks,
                                          f"singular values · {ins.labels[model]}", extra=others)
        size = min(max(k, HEATMAP_MIN), result.similarity.shape[0])
        self.query_one(Heatmap).show(result.similarity, size, ranks)
        self.query_one(VectorTable).show(result, k, eps)

    def action_overlay(self) -> None:
        if len(self.inspector.labels) < 2:
            self.notify("only one tuned model: add another (spectui BASE T1 T2, or from a run)")
            return
        self.overlay = not self.overlay
        self.update_view()

    def action_jump(self, step: int) -> None:
        ins, app = self.inspector, self.app
        order = [e.name for e in ins.entries(app.model) if e.spec is not None]
        target = next_with_intruders(order, self.matrix, set(ins.with_intruders(app.model, app.k, app.epsilon)), step)
        if target is None or target == self.matrix:
            self.notify("no other matrix has intruders at these thresholds", severity="warning")
            return
        self.matrix = target
        ins.prioritize(target)
        self.update_view()


def followup(result: MatrixResult, k: int, epsilon: float) -> tuple[str, str]:
    """The follow-up metrics at r = k, as `spectui scan --json` gives them per matrix: how far the top-k
    subspace turned, how much of ‖ΔW‖² lies in the base's top-k subspace and along the intruders, and
    the relative change of the top-k singular values; then the angles and each σ's drift."""
    angles, drift = result.principal_angles(k), result.spectral_drift(k)
    largest = formats.angle(result.max_principal_angle(k))
    summary = (f"top-{len(angles)} subspace: largest principal angle [b]{largest}[/] · "
               f"‖ΔW‖² in the base's top {k} [b]{formats.share(result.base_subspace_share(k))}[/], "
               f"along the intruders [b]{formats.share(result.intruder_share(k, epsilon))}[/] · "
               f"mean |drift| of σ [b]{formats.share(result.mean_abs_drift(k))}[/]")
    values = (f"angles {' '.join(formats.angle(a) for a in angles)} · drift of σ 0…{len(drift) - 1}: "
              f"{' '.join(formats.drift(d) for d in drift)}")
    return summary, values
