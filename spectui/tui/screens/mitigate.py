"""Scale intruders down (W' = W + (λ − 1)σuvᵀ): preview one matrix, sweep λ with the forgetting
probe, export the repaired model. Heavy work (probe, refit preview, export) runs in grouped thread
workers.

λ is applied when it is committed (Enter, or leaving the field) and valid; the λ being previewed is
shown beside the field, and nothing is exported while the field holds something else. Before an
export the view says what it will write: a full checkpoint, a merged one, or a LoRA adapter re-fitted
to rank r (or r + its intruders) with the re-fit's error."""

from __future__ import annotations

import re
from pathlib import Path

from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Footer, Header, Input, Label, ProgressBar, RadioSet, Static

from spectui.checkpoint.names import short_name
from spectui.defaults import DEFAULT_LAMBDAS, LAMBDA_RANGE, SCOPES
from spectui.errors import UsageError
from spectui.locations import samples_dir, shown
from spectui.tui.keys import footer
from spectui.tui.screens.base import ResultsScreen
from spectui.tui.widgets.field import Field
from spectui.tui.widgets.formats import loss, perplexity, share
from spectui.tui.widgets.plots import SpectrumPlot, TradeoffPlot
from spectui.tui.widgets.toggles import Check, Choice

DEFAULT_LAMBDA = 0.75  # the paper: 0.7–0.9 costs little task accuracy and cuts forgetting
MAX_SWEEP = 21
_RANGE = f"from {LAMBDA_RANGE[0]:g} to {LAMBDA_RANGE[1]:g}"


def parse_lambda(text: str) -> float:
    """λ as typed; UsageError saying what is wrong."""
    try:
        lam = float(text)
    except ValueError:
        raise UsageError(f"λ must be a number {_RANGE}") from None
    if not LAMBDA_RANGE[0] <= lam <= LAMBDA_RANGE[1]:
        raise UsageError(f"λ must be a number {_RANGE}")
    return lam


def parse_sweep(text: str) -> list[float]:
    """The λ grid as typed: numbers separated by spaces or commas, each in range; sorted, once each."""
    words = [w for w in re.split(r"[\s,;]+", text.strip()) if w]
    if not words:
        raise UsageError("the λ sweep needs at least one value")
    try:
        values = sorted({float(w) for w in words})
    except ValueError:
        raise UsageError(f"the λ sweep is numbers {_RANGE}, separated by spaces") from None
    if any(not LAMBDA_RANGE[0] <= v <= LAMBDA_RANGE[1] for v in values):
        raise UsageError(f"every λ of the sweep must be {_RANGE}")
    if len(values) > MAX_SWEEP:
        raise UsageError(f"the λ sweep takes at most {MAX_SWEEP} values")
    return values


class MitigateScreen(ResultsScreen):
    HELP_TITLE = "Mitigate"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", tooltip="back"),
        # priority: taken before the keys queued after it are handed out, so they go to the field
        Binding("l", "focus_lambda", "Set λ", priority=True, tooltip="type λ; Enter applies it (0 removes, 1 keeps)"),
        Binding("g", "focus_sweep", "Sweep grid", show=False, tooltip="type the λ values the sweep tries"),
        Binding("w", "sweep", "Sweep λ", tooltip="score base, tuned and each λ of the grid with the forgetting probe"),
        Binding("e", "export", "Export at λ", tooltip="write the mitigated model at the λ shown, as the options say"),
        Binding("o", "open_export", "Open export", tooltip="add the exported model to the comparison and show it"),
        *footer("help"),
    ]

    def __init__(self, inspector, matrix: str | None) -> None:
        super().__init__()
        self.inspector = inspector
        self.matrix = matrix
        self.lam = DEFAULT_LAMBDA  # the λ previewed and exported: the last one committed
        self.lam_problem = ""  # what is wrong with the λ field, if it holds something else
        self.sweep_lambdas = list(DEFAULT_LAMBDAS)
        self.sweep_problem = ""
        self.scope = SCOPES[0]
        self.exported: Path | None = None
        self.refit_text = ""
        self.tradeoff: list[tuple] = []  # (λ, reference score, task score) rows of the last sweep

    def compose(self) -> ComposeResult:
        data = samples_dir() / "data"
        yield Header()
        with Horizontal(id="lambda-row", classes="mitigate-row"):
            yield Label("λ ", classes="row-label")
            yield Field(f"{self.lam:g}", id="lambda", compact=True)
            yield Static("", id="lambda-state")
        with Horizontal(id="scope-row", classes="mitigate-row"):
            yield Label("scope ", classes="row-label")
            with RadioSet(id="scope", compact=True):
                yield Choice("top (paper)", value=True, compact=True)
                yield Choice("all (PEFT)", compact=True)
            yield Label("  sweep λ ", classes="row-label")
            yield Field(" ".join(f"{v:g}" for v in self.sweep_lambdas), id="sweep-grid", compact=True)
        with Horizontal(id="export-row", classes="mitigate-row"):
            yield Label("export ", classes="row-label")
            yield Check("r + intruders", id="rank-extra", compact=True,
                        tooltip="re-fit each module to rank r plus its intruders: nothing lost (--rank-extra)")
            yield Check("merged", id="merged", compact=True,
                        tooltip="write the base's checkpoint with ΔW' merged in (--merged)")
            yield Static("", id="refit")
        with Horizontal(id="probe-row", classes="mitigate-row"):
            yield Label("probe: text ", classes="row-label")
            yield Field(shown(data / "reference.txt"), id="text", compact=True)
            yield Label(" task ", classes="row-label")
            yield Field(shown(data / "task_eval.jsonl"), id="task", compact=True)
        yield Static("", id="mitigate-summary")
        with Horizontal(id="mitigate-body"):
            yield SpectrumPlot(id="mitigate-preview")
            with Vertical(id="sweep-pane"):
                yield ProgressBar(id="sweep-progress", show_eta=False)
                yield DataTable(id="sweep-table", cursor_type="row")
                yield TradeoffPlot(id="sweep-plot")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        tips = {"lambda": f"λ {_RANGE}: 0 removes each intruder, 1 keeps it; Enter applies",
                "sweep-grid": "λ values the sweep (w) scores", "text": "reference text: forgetting is loss on it",
                "task": "task file: loss (and accuracy) on the fine-tune's task"}
        for widget_id, tip in tips.items():
            self.query_one(f"#{widget_id}").tooltip = tip
        table = self.query_one("#sweep-table", DataTable)
        table.add_columns("model", "λ", "ref loss", "ref ppl", "task loss", "task acc")
        self.query_one("#sweep-progress").display = False  # until a sweep runs
        self.set_focus(table)  # not an input: the screen's keys (w, e, o) must reach the screen
        self._adapt_export_options()
        self._show_lambda_state()
        self.update_view()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """`l` typed in a text field (a path) is text, not the key that focuses λ."""
        if action == "focus_lambda":
            return not isinstance(self.focused, Input)
        return True

    # -- λ and the sweep grid: typed, committed, checked --------------------------------------
    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "lambda":
            try:
                parse_lambda(event.value)
                self.lam_problem = ""
            except UsageError as error:
                self.lam_problem = str(error)
            self._show_lambda_state()
        elif event.input.id == "sweep-grid":
            try:
                parse_sweep(event.value)
                self.sweep_problem = ""
            except UsageError as error:
                self.sweep_problem = str(error)
            self._show_lambda_state()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "lambda":
            if not self._commit_lambda():
                self.app.tell(UsageError(self.lam_problem))
                return
        elif event.input.id == "sweep-grid" and not self._commit_sweep():
            self.app.tell(UsageError(self.sweep_problem))
            return
        self.set_focus(self.query_one("#sweep-table", DataTable))

    def on_descendant_blur(self, event: events.DescendantBlur) -> None:
        """Leaving a field commits what it holds when it is valid (an invalid value stays
        uncommitted, said beside the field)."""
        if not self.is_attached or self.app.screen is not self:
            return
        widget_id = event.widget.id
        if widget_id == "lambda":
            self._commit_lambda()
        elif widget_id == "sweep-grid":
            self._commit_sweep()

    def _commit_lambda(self) -> bool:
        text = self.query_one("#lambda", Input).value
        try:
            lam = parse_lambda(text)
        except UsageError as error:
            self.lam_problem = str(error)
            self._show_lambda_state()
            return False
        self.lam_problem = ""
        if lam != self.lam:
            self.lam = lam
            self.update_view()
            self._show_tradeoff()
        self._show_lambda_state()
        return True

    def _commit_sweep(self) -> bool:
        try:
            self.sweep_lambdas = parse_sweep(self.query_one("#sweep-grid", Input).value)
        except UsageError as error:
            self.sweep_problem = str(error)
            self._show_lambda_state()
            return False
        self.sweep_problem = ""
        self._show_lambda_state()
        return True

    def _show_lambda_state(self) -> None:
        """Beside the field: the λ previewed, and what is wrong with the field when it is."""
        state = Text()
        if self.lam_problem:
            state.append(f"✗ {self.lam_problem.removeprefix('λ ')} · ", style="bold red")
            state.append(f"previewing λ={self.lam:g}", style="bold")
        else:
            typed = self.query_one("#lambda", Input).value
            try:
                pending = parse_lambda(typed) != self.lam
            except UsageError:
                pending = True
            state.append(f"previewing λ={self.lam:g}", style="bold")
            if pending:
                state.append(" · Enter applies", style="dim")
        if self.sweep_problem:
            state.append(f" · ✗ {self.sweep_problem}", style="bold red")
        self.query_one("#lambda-state", Static).update(state)

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        self.scope = SCOPES[event.index]
        self.update_view()

    def on_checkbox_changed(self, event: Check.Changed) -> None:
        self._adapt_export_options()
        self._update_refit()

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
            f"{len(chosen.matrices)} matrices scaled (k={app.k}, ε={app.epsilon:.2f})"
        )
        self._adapt_export_options()
        self._preview(chosen)
        self._update_refit(chosen)

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

    # -- what an export writes ----------------------------------------------------------------
    def _adapt_export_options(self) -> None:
        """Re-fit options only where there are LoRA factors to re-fit; merged is how other adapters
        are written anyway."""
        ins, model = self.inspector, self.app.model
        source = ins.comparison.tuned[model].source
        rank_extra, merged = self.query_one("#rank-extra", Check), self.query_one("#merged", Check)
        if not source.is_adapter:
            merged.value = rank_extra.value = False
            merged.disabled = rank_extra.disabled = True
        elif not ins.refittable(model):
            merged.value, merged.disabled = True, True
            rank_extra.value, rank_extra.disabled = False, True
        else:
            merged.disabled = False
            rank_extra.disabled = merged.value
            if merged.value:
                rank_extra.value = False

    @property
    def merged(self) -> bool:
        return self.query_one("#merged", Check).value

    @property
    def rank_extra(self) -> bool:
        return self.query_one("#rank-extra", Check).value

    def _update_refit(self, chosen=None) -> None:
        """Say what the export writes; for a re-fitted adapter, its error, computed off the UI thread."""
        chosen = chosen or self._plan()
        if chosen is None:
            return self._show_refit("after the scan")
        ins, model = self.inspector, chosen.model_index
        if not ins.comparison.tuned[model].source.is_adapter:
            return self._show_refit("a full checkpoint, in its own files")
        if self.merged or not ins.refittable(model):
            return self._show_refit("merged into the base's files: nothing lost")
        if self.lam == 1 or not chosen.matrices:
            return self._show_refit("the adapter as it is (nothing to scale)")
        self._show_refit("re-fit error: computing…")
        self.compute_refit(chosen, self.lam, self.rank_extra)

    @work(thread=True, group="refit", exclusive=True, exit_on_error=False)
    def compute_refit(self, chosen, lam: float, rank_extra: bool) -> None:
        refits = self.inspector.refit_errors(chosen, lam, rank_extra)
        self.app.call_from_thread(self._show_refit, refit_summary(refits, rank_extra), (chosen, lam, rank_extra))

    def _show_refit(self, text: str, computed_for: tuple | None = None) -> None:
        if computed_for is not None and computed_for[1:] != (self.lam, self.rank_extra):
            return  # an older λ's answer
        self.refit_text = text
        self.query_one("#refit", Static).update(text)

    # -- the λ sweep --------------------------------------------------------------------------
    def action_focus_lambda(self) -> None:
        """Now, not after the queued keys: what is typed right after `l` is λ's."""
        lam = self.query_one("#lambda", Input)
        self.set_focus(lam)
        lam.select_all()

    def action_focus_sweep(self) -> None:
        self.set_focus(self.query_one("#sweep-grid", Input))

    def action_sweep(self) -> None:
        chosen = self._plan()
        if chosen is None:
            self.notify("wait for the scan to finish first", severity="warning")
            return
        if not self._commit_sweep():
            self.app.tell(UsageError(f"{self.sweep_problem} (g edits the sweep)"))
            return
        text, task = (Path(self.query_one(f"#{i}", Input).value.strip()) for i in ("text", "task"))
        self.query_one("#sweep-table", DataTable).clear()
        self.tradeoff = []
        progress = self.query_one("#sweep-progress", ProgressBar)
        progress.display = True
        progress.update(total=2 + len(self.sweep_lambdas), progress=0)
        self.run_sweep(chosen, text, task, list(self.sweep_lambdas))

    @work(thread=True, group="probe", exclusive=True, exit_on_error=False)
    def run_sweep(self, chosen, text: Path, task: Path | None, lambdas: list[float]) -> None:
        for row in self.inspector.probe_sweep(chosen, text, task if str(task) else None, lambdas):
            self.app.call_from_thread(self._add_row, row.model, row.lam, row.reference, row.task)

    def _add_row(self, model: str, lam: float | None, reference, task) -> None:
        table = self.query_one("#sweep-table", DataTable)
        table.add_row(model, "—" if lam is None else f"{lam:g}", loss(reference.loss),
                      perplexity(reference.perplexity), "—" if task is None else loss(task.loss),
                      "—" if task is None or task.accuracy is None else share(task.accuracy))
        self.query_one("#sweep-progress", ProgressBar).advance(1)
        if lam is None:
            return
        self.tradeoff.append((lam, reference, task))
        self._show_tradeoff()

    def _show_tradeoff(self) -> None:
        rows = self.tradeoff
        if rows:
            self.query_one(TradeoffPlot).show([lam for lam, _, _ in rows], [r.loss for _, r, _ in rows],
                                              [t.loss for _, _, t in rows] if rows[0][2] else None,
                                              chosen=self.lam)

    # -- export -------------------------------------------------------------------------------
    def action_export(self) -> None:
        chosen = self._plan()
        if chosen is None:
            self.notify("wait for the scan to finish first", severity="warning")
            return
        if not self._commit_lambda():
            self.app.tell(UsageError(f"not exported: the λ field holds "
                                     f"{self.query_one('#lambda', Input).value!r}; {self.lam_problem} "
                                     f"(l to fix it; λ={self.lam:g} is what the preview shows)"))
            return
        model = self.inspector.comparison.tuned[chosen.model_index]
        form = "-merged" if self.merged and model.source.is_adapter else "-rank-extra" if self.rank_extra else ""
        out = self.app.export_dir / f"{model.label.replace('/', '-')}-lambda{self.lam:g}-{self.scope}{form}"
        self.write_export(chosen, self.lam, out, self.merged, self.rank_extra)

    @work(thread=True, group="export", exclusive=True, exit_on_error=False)
    def write_export(self, chosen, lam: float, out: Path, merged: bool, rank_extra: bool) -> None:
        from spectui.mitigate import export_note

        refits = self.inspector.export(chosen, lam, out, merged=merged, rank_extra=rank_extra)
        worst = max((r.relative_error for r in refits), default=0.0)
        form = export_note(self.inspector.comparison, chosen.model_index, merged=merged)  # e.g. an OFT adapter
        note = (f" ({form})" if form else "") + (f"; rank-r refit error up to {share(worst)}" if refits else "")
        self.exported = out
        self.app.call_from_thread(self.notify, f"wrote {out}{note} · o opens it", title="exported")

    def action_open_export(self) -> None:
        if self.exported is None:
            self.notify("export first (e)", severity="warning")
            return
        self.app.pop_screen()
        self.app.add_tuned_model(self.exported)


def refit_summary(refits, rank_extra: bool) -> str:
    """The re-fit's cost in one line: the worst and the mean relative error over the modules."""
    if not refits:
        return "the adapter as it is (nothing to scale)"
    errors = [r.relative_error for r in refits]
    rank = "r + intruders" if rank_extra else "rank r"
    return f"re-fit to {rank}: error up to {share(max(errors))} (mean {share(sum(errors) / len(errors))})"
