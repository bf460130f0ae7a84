"""Scale intruders down (W' = W + (λ − 1)σuvᵀ): preview one matrix, sweep λ with the forgetting
probe, export the repaired model. Heavy work (probe, export) runs in grouped thread workers."""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Footer, Header, Input, ProgressBar, RadioSet, Static

from spectui.checkpoint.names import short_name
from spectui.defaults import DEFAULT_LAMBDAS, LAMBDA_RANGE, SCOPES
from spectui.locations import samples_dir
from spectui.tui.screens.base import ResultsScreen
from spectui.tui.widgets.plots import SpectrumPlot, TradeoffPlot
from spectui.tui.widgets.toggles import Choice

DEFAULT_LAMBDA = 0.75  # the paper: 0.7–0.9 costs little task accuracy and cuts forgetting


class MitigateScreen(ResultsScreen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("l", "focus_lambda", "Set λ"),
        Binding("w", "sweep", "λ sweep"),
        Binding("e", "export", "Export at λ"),
        Binding("o", "open_export", "Open export"),
    ]

    def __init__(self, inspector, matrix: str | None) -> None:
        super().__init__()
        self.inspector = inspector
        self.matrix = matrix
        self.lam = DEFAULT_LAMBDA
        self.scope = SCOPES[0]
        self.exported: Path | None = None
        self.tradeoff: list[tuple] = []  # (λ, reference score, task score) rows of the last sweep

    def compose(self) -> ComposeResult:
        data = samples_dir() / "data"
        yield Header()
        with Horizontal(id="mitigate-controls"):
            yield Input(f"{self.lam:g}", id="lambda", type="number")
            with RadioSet(id="scope"):
                yield Choice("top (paper)", value=True)
                yield Choice("all (PEFT)")
            yield Input(str(data / "reference.txt"), id="text")
            yield Input(str(data / "task_eval.jsonl"), id="task")
        yield Static("", id="mitigate-summary")
        with Horizontal(id="mitigate-body"):
            yield SpectrumPlot(id="mitigate-preview")
            with Vertical(id="sweep-pane"):
                yield ProgressBar(id="sweep-progress", show_eta=False)
                yield DataTable(id="sweep-table", cursor_type="row")
                yield TradeoffPlot(id="sweep-plot")
        yield Footer()

    def on_mount(self) -> None:
        titles = {"lambda": f"λ {LAMBDA_RANGE[0]:g}…{LAMBDA_RANGE[1]:g}", "scope": "scope",
                  "text": "reference text", "task": "task file"}
        for widget_id, title in titles.items():
            self.query_one(f"#{widget_id}").border_title = title
        table = self.query_one("#sweep-table", DataTable)
        table.add_columns("model", "λ", "ref loss", "ref ppl", "task loss", "task acc")
        table.focus()  # not an input: the screen's keys (w, e, o) must reach the screen
        self.update_view()

    def on_input_submitted(self, _: Input.Submitted) -> None:
        self.query_one("#sweep-table", DataTable).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id != "lambda":
            return
        try:
            lam = float(event.value)
        except ValueError:
            lam = None
        if lam is None or not LAMBDA_RANGE[0] <= lam <= LAMBDA_RANGE[1]:
            self.query_one("#mitigate-summary", Static).update(
                f"[red]λ must be a number from {LAMBDA_RANGE[0]:g} to {LAMBDA_RANGE[1]:g}[/]")
            return
        self.lam = lam
        self.update_view()

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        self.scope = SCOPES[event.index]
        self.update_view()

    # -- the plan and the preview -------------------------------------------------------------
    def _plan(self):
        """The intruders to scale at the app's (k, ε) and this scope; None until the scan is done."""
        app = self.app
        return self.inspector.plan(app.model, app.k, app.epsilon, self.scope)

    def update_view(self) -> None:
        summary = self.query_one("#mitigate-summary", Static)
        ins, app = self.inspector, self.app
        chosen = self._plan()
        if chosen is None:
            summary.update("waiting for the scan to finish…")
            return
        label = ins.labels[app.model]
        summary.update(
            f"[b]{label}[/]: λ={self.lam:g}, scope {self.scope} → {chosen.intruders} intruders in "
            f"{len(chosen.matrices)} matrices scaled (k={app.k}, ε={app.epsilon:.2f}) · "
            "l sets λ · w sweeps λ with the forgetting probe · e exports"
        )
        self._preview(chosen)

    def _preview(self, chosen) -> None:
        from spectui.mitigate import chosen_ranks, preview

        ins, app = self.inspector, self.app
        names = [m.spec.name for m in chosen.matrices]
        name = self.matrix if self.matrix in names or not names else names[0]
        result = ins.result(app.model, name) if name else None
        if result is None:
            return
        ranks = chosen_ranks(result, app.k, app.epsilon, self.scope)
        _, after = preview(result, ranks, self.lam)
        self.query_one(SpectrumPlot).show(result.sigma_base, result.sigma_tuned, ranks,
                                          f"{short_name(name)} · λ={self.lam:g}",
                                          extra=[("mitigated σ", after)])

    # -- the λ sweep --------------------------------------------------------------------------
    def action_focus_lambda(self) -> None:
        """Enter (handled above) hands the keys back to the screen."""
        lam = self.query_one("#lambda", Input)
        lam.focus()
        lam.select_all()

    def action_sweep(self) -> None:
        chosen = self._plan()
        if chosen is None:
            self.notify("wait for the scan to finish first", severity="warning")
            return
        text, task = (Path(self.query_one(f"#{i}", Input).value.strip()) for i in ("text", "task"))
        self.query_one("#sweep-table", DataTable).clear()
        self.tradeoff = []
        self.query_one("#sweep-progress", ProgressBar).update(total=2 + len(DEFAULT_LAMBDAS), progress=0)
        self.run_sweep(chosen, text, task)

    @work(thread=True, group="probe", exclusive=True, exit_on_error=False)
    def run_sweep(self, chosen, text: Path, task: Path | None) -> None:
        for row in self.inspector.probe_sweep(chosen, text, task if str(task) else None, DEFAULT_LAMBDAS):
            self.app.call_from_thread(self._add_row, row.model, row.lam, row.reference, row.task)

    def _add_row(self, model: str, lam: float | None, reference, task) -> None:
        table = self.query_one("#sweep-table", DataTable)
        table.add_row(model, "—" if lam is None else f"{lam:g}", f"{reference.loss:.4f}",
                      f"{reference.perplexity:.2f}", "—" if task is None else f"{task.loss:.4f}",
                      "—" if task is None or task.accuracy is None else f"{task.accuracy:.1%}")
        self.query_one("#sweep-progress", ProgressBar).advance(1)
        if lam is None:
            return
        self.tradeoff.append((lam, reference, task))
        rows = self.tradeoff
        self.query_one(TradeoffPlot).show([lam for lam, _, _ in rows], [r.loss for _, r, _ in rows],
                                          [t.loss for _, _, t in rows] if rows[0][2] else None)

    # -- export -------------------------------------------------------------------------------
    def action_export(self) -> None:
        chosen = self._plan()
        if chosen is None:
            self.notify("wait for the scan to finish first", severity="warning")
            return
        model = self.inspector.comparison.tuned[chosen.model_index]
        out = self.app.export_dir / f"{model.label.replace('/', '-')}-lambda{self.lam:g}-{self.scope}"
        self.write_export(chosen, out)

    @work(thread=True, group="export", exclusive=True, exit_on_error=False)
    def write_export(self, chosen, out: Path) -> None:
        refits = self.inspector.export(chosen, self.lam, out)
        worst = max((r.relative_error for r in refits), default=0.0)
        note = f"; rank-r refit error up to {worst:.1%}" if refits else ""
        self.exported = out
        self.app.call_from_thread(self.notify, f"wrote {out}{note} · o opens it", title="exported")

    def action_open_export(self) -> None:
        if self.exported is None:
            self.notify("export first (e)", severity="warning")
            return
        self.app.pop_screen()
        self.app.add_tuned_model(self.exported)
