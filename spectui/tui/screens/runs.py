"""Fine-tuning runs: the list of all runs, and one run's live view with the keys that act on it."""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Header, Label, Static

from spectui.finetune.runs import LIVE, Run, RunError, State, list_runs, runs_root
from spectui.finetune.spec import SpecError
from spectui.tui.messages import RunStateChanged, ThresholdsChanged
from spectui.tui.widgets.run_table import RunRow, RunTable
from spectui.tui.widgets.run_view import RunView

LIST_REFRESH_S = 1.0


def inspected_base(app: App) -> Path:
    """The directory of the base model the inspector compares against."""
    path = app.inspector.comparison.base.path
    return path if path.is_dir() else path.parent


def open_output(app: App, run: Run) -> None:
    """The run's output becomes the inspected tuned model; back to the overview."""
    if _put_in_comparison(app, run):
        while len(app.screen_stack) > 1:
            app.pop_screen()


def add_output(app: App, run: Run) -> None:
    if _put_in_comparison(app, run):
        app.notify(f"{run.name} is in the comparison; m switches models on the overview")


def _put_in_comparison(app: App, run: Run) -> bool:
    """Put a finished run's output in the inspector's comparison (once) and make it the model shown."""
    if (state := run.status().state) is not State.DONE:
        app.notify(f"{run.name} has no output: it is {state.value}", severity="warning")
        return False
    output = run.output_dir.resolve()
    base, ours = Path(run.spec().base).resolve(), inspected_base(app).resolve()
    if base != ours:
        app.notify(f"{run.name} fine-tuned {base}, not the inspected base {ours}; open it "
                   f"with: spectui {base} {output}", severity="error", timeout=15, markup=False)
        return False
    paths = [model.path.resolve() for model in app.inspector.comparison.tuned]
    if output in paths:
        app.model = paths.index(output)
        return True
    app.add_tuned_model(output)
    return len(app.inspector.comparison.tuned) > len(paths)


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; y confirms, n or Escape declines."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Static(self.question)
            yield Label("[b]y[/] yes   [b]n[/] no")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class RunScreen(Screen):
    """One run, live. Its checkpoints are scanned for intruders while it is followed."""

    BINDINGS = [
        Binding("c", "cancel_run", "Cancel run"),
        Binding("u", "resume_run", "Resume"),
        Binding("o", "open_output", "Open result"),
        Binding("a", "add_output", "Add to comparison"),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, run: Run) -> None:
        super().__init__()
        self.run = run
        self.state: State | None = None
        self.resumable = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield RunView(self.run, id="run-view")
        yield Footer()

    def on_mount(self) -> None:
        self.app.follow_runs([self.run])

    def on_run_state_changed(self, message: RunStateChanged) -> None:
        self.state = message.status.state
        self.resumable = self.state in (State.INTERRUPTED, State.CANCELLED) or (
            self.state is State.FAILED and bool(self.run.checkpoints()))
        self.refresh_bindings()

    def on_thresholds_changed(self, _: ThresholdsChanged) -> None:
        self.query_one(RunView).show_intruders()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Keys that do not apply to the run's state are shown disabled."""
        allowed = {
            "cancel_run": self.state in LIVE,
            "resume_run": self.resumable,
            "open_output": self.state is State.DONE,
            "add_output": self.state is State.DONE,
        }
        return allowed.get(action, True) or None

    def action_cancel_run(self) -> None:
        def cancel(yes: bool) -> None:
            if yes:
                try:
                    self.run.cancel()
                except RunError as error:
                    self.notify(str(error), severity="error", markup=False)

        self.app.push_screen(ConfirmScreen(f"Cancel {self.run.name}? Its checkpoints are kept, "
                                           "so it can be resumed."), cancel)

    def action_resume_run(self) -> None:
        self.resume_run()

    @work(thread=True, group="run-control", exclusive=True)
    def resume_run(self) -> None:
        """Off the UI thread: launching may first count GPUs, which imports torch."""
        try:
            self.run.resume()
        except RunError as error:
            self.app.call_from_thread(self.notify, str(error), severity="error", markup=False)
            return
        self.app.call_from_thread(self.app.follow_runs, [self.run])

    def action_open_output(self) -> None:
        open_output(self.app, self.run)

    def action_add_output(self) -> None:
        add_output(self.app, self.run)


class RunsScreen(Screen):
    """Every run under the runs folder with its state and latest figures, kept current."""

    BINDINGS = [
        Binding("o", "open_output", "Open result"),
        Binding("a", "add_output", "Add to comparison"),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"Runs in {runs_root().resolve()} · Enter opens a run · o opens its result · "
                     "a adds it to the comparison · r starts a new one",
                     id="runs-title")
        yield RunTable(id="runs-table")
        yield Footer()

    def on_mount(self) -> None:
        self._refresh()
        self.set_interval(LIST_REFRESH_S, self._refresh)
        self.query_one(RunTable).focus()

    def on_thresholds_changed(self, _: ThresholdsChanged) -> None:
        self._refresh()

    def _refresh(self) -> None:
        self.load_rows(self.app.k, self.app.epsilon)

    @work(thread=True, group="runs-list", exclusive=True)
    def load_rows(self, k: int, epsilon: float) -> None:
        rows = [RunRow.of(run, k, epsilon) for run in list_runs()]
        self.app.call_from_thread(self._show, rows)

    def _show(self, rows: list[RunRow]) -> None:
        self.query_one(RunTable).show(rows)

    def _highlighted(self) -> Run | None:
        path = self.query_one(RunTable).highlighted()
        return Run(path) if path else None

    def action_open_output(self) -> None:
        if run := self._highlighted():
            open_output(self.app, run)

    def action_add_output(self) -> None:
        if run := self._highlighted():
            add_output(self.app, run)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        run = Run(event.row_key.value)
        try:
            run.spec()
        except SpecError as error:
            self.notify(str(error), severity="error", markup=False)
            return
        self.app.push_screen(RunScreen(run))
