"""Fine-tuning runs: the list of all runs, and one run's live view with the keys that act on it."""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Header, Label, Static

from spectui.errors import InputError
from spectui.finetune.runs import LIVE, Run, RunError, State, list_runs
from spectui.locations import runs_dir
from spectui.tui.keys import footer
from spectui.tui.messages import RunStateChanged, ThresholdsChanged
from spectui.tui.screens.base import SpectuiScreen
from spectui.tui.widgets.run_table import RunRow, RunTable
from spectui.tui.widgets.run_view import RunView, resume_step

LIST_REFRESH_S = 1.0


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


class RunScreen(SpectuiScreen):
    """One run, live. Its checkpoints are scanned for intruders while it is followed."""

    HELP_TITLE = "Run"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", tooltip="back (the run goes on)"),
        Binding("c", "cancel_run", "Cancel run", tooltip="stop the run (asks first, says what a resume would do)"),
        Binding("u", "resume_run", "Resume", tooltip="start a stopped run again, from its last checkpoint"),
        Binding("o", "open_output", "Open result", tooltip="show the finished run's output on the overview"),
        Binding("a", "add_output", "Add to comparison", tooltip="add the finished run's output to the comparison"),
        *footer("help"),
    ]

    def __init__(self, run: Run) -> None:
        super().__init__()
        self.run = run
        self.state: State | None = None
        self.resumable = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield RunView(self.run, id="run-view")
        yield Footer(compact=True)

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
        if action not in allowed:
            return True
        return allowed[action] or None

    def _steps_done(self) -> int:
        latest = self.query_one(RunView).latest
        return latest.rows[-1]["step"] if latest and latest.rows else 0

    def action_cancel_run(self) -> None:
        def cancel(yes: bool) -> None:
            if yes:
                try:
                    self.run.cancel()
                except InputError as error:
                    self.app.tell(error)

        self.app.push_screen(ConfirmScreen(cancel_question(self.run, self._steps_done())), cancel)

    def action_resume_run(self) -> None:
        start = resume_step(self.run)
        if start == 0 and self._steps_done() > 0:
            def restart(yes: bool) -> None:
                if yes:
                    self.resume_run(0)

            self.app.push_screen(ConfirmScreen(
                f"{self.run.name} has no checkpoint to resume from: it would start again from step 0, "
                f"redoing its {self._steps_done()} steps. Start it again?"), restart)
        else:
            self.resume_run(start)

    @work(thread=True, group="run-control", exclusive=True, exit_on_error=False)
    def resume_run(self, start: int) -> None:
        """Off the UI thread: launching may first count GPUs, which imports torch."""
        self.run.resume()
        self.app.call_from_thread(self._resumed, start)

    def _resumed(self, start: int) -> None:
        self.query_one(RunView).resumed_from(start)
        self.notify(f"{self.run.name}: {'started again from step 0' if start == 0 else f'resuming from step {start}'}",
                    title="resumed")
        self.app.follow_runs([self.run])

    def action_open_output(self) -> None:
        self.app.show_run_output(self.run)

    def action_add_output(self) -> None:
        self.app.add_run_output(self.run)


def cancel_question(run: Run, steps_done: int) -> str:
    """What cancelling keeps, in words that are true for this run now."""
    start = resume_step(run)
    if start:
        redo = f"; the {steps_done - start} steps after it are redone" if steps_done > start else ""
        keep = f"Its checkpoint at step {start} is kept: resume (u) continues from there{redo}."
    else:
        every = run.spec().save_every if _readable_spec(run) else None
        when = (" (it saves none: checkpoint every 0)" if every == 0 else
                f" (the first is written at step {every})" if every else "")
        keep = f"It has no checkpoint yet{when}, so resume (u) would start again from step 0."
    return f"Cancel {run.name} at step {steps_done}? {keep}"


def _readable_spec(run: Run) -> bool:
    try:
        run.spec()
    except InputError:
        return False
    return True


class RunsScreen(SpectuiScreen):
    """Every run under the runs folder with its state and latest figures, kept current."""

    HELP_TITLE = "Runs"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", tooltip="back"),
        Binding("enter", "open_run", "Open run", show=False, tooltip="the highlighted run's live view"),
        Binding("o", "open_output", "Open result", tooltip="show the finished run's output on the overview"),
        Binding("a", "add_output", "Add to comparison", tooltip="add the finished run's output to the comparison"),
        *footer("train", "studies", "help"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.problem = ""  # why the runs directory cannot be listed, told once

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(self._title(), id="runs-title")
        yield RunTable(id="runs-table")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self._refresh()
        self.set_interval(LIST_REFRESH_S, self._refresh)
        self.set_focus(self.query_one(RunTable))

    def on_thresholds_changed(self, _: ThresholdsChanged) -> None:
        self._refresh()

    def _refresh(self) -> None:
        self.load_rows(self.app.k, self.app.epsilon)

    @work(thread=True, group="runs-list", exclusive=True, exit_on_error=False)
    def load_rows(self, k: int, epsilon: float) -> None:
        """Every run's row; a run with damaged files has a row too, its note says what is wrong."""
        try:
            runs, problem = list_runs(strict=True), ""
        except RunError as error:
            runs, problem = [], str(error)
        rows = [RunRow.of(run, k, epsilon) for run in runs]
        self.app.call_from_thread(self._show, rows, problem)

    def _show(self, rows: list[RunRow], problem: str = "") -> None:
        self.query_one(RunTable).show(rows)
        if problem != self.problem:
            self.problem = problem
            self.query_one("#runs-title", Static).update(self._title())
            if problem:
                self.app.tell(RunError(problem))

    def _title(self) -> Text:
        if self.problem:
            return Text(self.problem, style="bold red")
        return Text(f"Runs in {runs_dir().resolve()} · Enter opens a run · o opens its result · "
                    "a adds it to the comparison · r starts a new one")

    def _highlighted(self) -> Run | None:
        path = self.query_one(RunTable).highlighted()
        return Run(path) if path else None

    def action_open_output(self) -> None:
        if run := self._highlighted():
            self.app.show_run_output(run)

    def action_add_output(self) -> None:
        if run := self._highlighted():
            self.app.add_run_output(run)

    def action_open_run(self) -> None:
        if path := self.query_one(RunTable).highlighted():
            self._open(Run(path))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self._open(Run(event.row_key.value))

    def _open(self, run: Run) -> None:
        try:
            run.spec()  # the run's view shows its spec: one it cannot read is told instead
        except InputError as error:
            self.app.tell(error)
            return
        self.app.push_screen(RunScreen(run))
