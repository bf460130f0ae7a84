"""A study's results (`spectui study`, or the Train screen's Study tab): its state, the results table,
and the paper's views. A rank study: intruders at ε 0.5–0.9, forgetting (reference loss) and the
effective rank of ΔW against rank, at matched task loss. A sequence: each line's forgetting matrix
(task × stage) side by side, and intruders and reference loss against stage for every line. The
results file is re-read while the study runs, so members appear as they are measured.
"""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.columns import Columns
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Header, Label, OptionList, Static

from spectui.errors import InputError
from spectui.finetune.runs import LIVE, Run, RunStatus, State
from spectui.finetune.study import Study, list_studies, start_study
from spectui.locations import runs_dir
from spectui.report.terminal import forgetting_table
from spectui.study_results import (
    StudyResults,
    StudyResultsError,
    effective_rank_vs_rank,
    forgetting_vs_rank,
    intruders_vs_rank,
    intruders_vs_stage,
    matched,
    rank_grid,
    read_results,
    reference_vs_stage,
    results_table,
    table_cells,
)
from spectui.tui.host import HostApp
from spectui.tui.keys import footer
from spectui.tui.screens.base import SpectuiScreen
from spectui.tui.screens.runs import ConfirmScreen, RunScreen
from spectui.tui.widgets.study_plots import CategoryPlot

POLL_S = 2.0
STOPPED = (State.INTERRUPTED, State.CANCELLED, State.FAILED)  # a rerun goes on where it stopped


class StudyScreen(SpectuiScreen):
    """One study, kept current while its process runs."""

    HELP_TITLE = "Study"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", tooltip="back (the study goes on)"),
        Binding("enter", "open_member", "Open run", show=False, tooltip="the highlighted member's run view"),
        Binding("a", "add_member", "Add to comparison",
                tooltip="add the highlighted member's model, as the study compared it with the base"),
        Binding("c", "cancel_study", "Cancel study",
                tooltip="stop the study and the member it trains (asks first; resuming goes on from there)"),
        Binding("u", "resume_study", "Resume study",
                tooltip="run a stopped study again: members done are kept, the others trained and measured"),
        *footer("runs", "help"),
    ]

    def __init__(self, study: Study) -> None:
        super().__init__()
        self.study = study
        self.state: State | None = None
        self.results: StudyResults | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="study-body"):
            yield Static(f"study {self.study.name}: reading…", id="study-status")
            yield DataTable(id="study-table", cursor_type="row")
            yield Static("", id="study-forgetting")
            with Horizontal(id="study-plots"):
                yield CategoryPlot(id="study-intruders")
                yield CategoryPlot(id="study-loss")
                yield CategoryPlot(id="study-rank")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.reload()
        self.set_interval(POLL_S, self.reload)
        self.set_focus(self.query_one(DataTable))

    @work(thread=True, group="study-read", exclusive=True, exit_on_error=False)
    def reload(self) -> None:
        """The study's status, the last line of its log and its results, read off the UI thread."""
        status, last = self.study.status(), self.study.log_tail(1)
        try:
            results, problem = read_results(self.study.results_path), ""
        except StudyResultsError as error:
            results, problem = None, "" if not self.study.results_path.exists() else str(error)
        self.app.call_from_thread(self._show, status, last, results, problem)

    def _show(self, status: RunStatus, last: list[str], results: StudyResults | None, problem: str) -> None:
        self.state = status.state
        self.refresh_bindings()
        self.query_one("#study-status", Static).update(status_text(self.study, status, last, results, problem))
        if results is not None and results != self.results:
            self.results = results
            self._show_results(results)

    def _show_results(self, results: StudyResults) -> None:
        self._fill_table(results)
        sequence = results.kind == "sequence"
        forgetting = self.query_one("#study-forgetting", Static)
        forgetting.display = sequence
        self.query_one("#study-rank").display = not sequence
        if sequence:
            forgetting.update(forgetting_tables(results))
            self.query_one("#study-intruders", CategoryPlot).show(
                intruders_vs_stage(results), "intruders vs stage (ε=0.5)", "stage", counts=True)
            self.query_one("#study-loss", CategoryPlot).show(reference_vs_stage(results), "reference loss vs stage",
                                                             "stage")
            return
        self.query_one("#study-intruders", CategoryPlot).show(
            intruders_vs_rank(results), f"intruders vs rank (k={results.k})", "rank", counts=True)
        self.query_one("#study-loss", CategoryPlot).show(forgetting_vs_rank(results), "loss vs rank", "rank")
        self.query_one("#study-rank", CategoryPlot).show(
            [effective_rank_vs_rank(results)], "effective rank of ΔW vs rank", "rank")

    def _fill_table(self, results: StudyResults) -> None:
        """The results table as the CLI prints it; the cursor stays on its member."""
        table = self.query_one(DataTable)
        selected = self._highlighted()
        data = results_table(results)
        table.clear(columns=True)
        table.add_columns(*(column.title for column in data.columns))
        for member, cells in zip(results.members, table_cells(data)):
            table.add_row(*cells, key=member.name)
        names = [member.name for member in results.members]
        if selected in names:
            table.move_cursor(row=names.index(selected))

    def _highlighted(self) -> str | None:
        table = self.query_one(DataTable)
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value if table.row_count else None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Cancel while the study runs, resume once it stopped; the others always."""
        allowed = {"cancel_study": self.state in LIVE, "resume_study": self.state in STOPPED}
        return allowed.get(action, True) or None

    def on_data_table_row_selected(self, _: DataTable.RowSelected) -> None:
        self.action_open_member()

    def action_open_member(self) -> None:
        if (name := self._highlighted()) is None:
            return
        try:
            run = Run(self.study.runs_root() / name)
        except InputError as error:
            self.app.tell(error)
            return
        if (run.path / "spec.json").is_file():
            self.app.push_screen(RunScreen(run))
        else:
            self.notify(f"{name} has not started yet: the study trains its members one after another")

    def action_add_member(self) -> None:
        name = self._highlighted()
        member = self.results.member(name) if self.results and name else None
        if member is None or member.model is None:
            self.notify(f"{name} is not measured yet: its model is added once the study has compared it",
                        severity="warning")
            return
        self.app.add_tuned_model(Path(member.model))
        self.notify(f"{name} is in the comparison; m switches models on the overview")

    def action_cancel_study(self) -> None:
        def cancel(yes: bool) -> None:
            if yes:
                try:
                    self.study.cancel()
                except InputError as error:
                    self.app.tell(error)

        self.app.push_screen(ConfirmScreen(
            f"Cancel study {self.study.name}? The member it trains stops; members done are kept, and "
            "resuming (u) or `spectui study` on its study.json goes on from there."), cancel)

    def action_resume_study(self) -> None:
        self.resume_study()

    @work(thread=True, group="study-control", exclusive=True, exit_on_error=False)
    def resume_study(self) -> None:
        """The study's saved spec started again, as `spectui study DIR/study.json` does (off the UI
        thread: it reads the data first)."""
        start_study(self.study.spec())
        self.app.call_from_thread(self.notify, f"study {self.study.name} goes on", title="resumed")
        self.app.call_from_thread(self.reload)


def status_text(study: Study, status: RunStatus, last: list[str], results: StudyResults | None,
                problem: str) -> Text:
    """Which study, how it stands, how many members are measured, and what its log said last."""
    kind = "" if results is None else ("sequence " if results.kind == "sequence" else "rank study ")
    text = Text.assemble((f"{kind}{study.name}", "bold"), f" · {status.state.value}")
    if status.message:
        text.append(f": {status.message}")
    if results is not None:
        measured = sum(member.evaluated for member in results.members)
        text.append(f" · {measured}/{len(results.members)} members measured")
        if rank_grid(results) and (target := matched(results).target) is not None:
            text.append(f" · ranks compared at matched task loss ≈ {target:.4f}")
    text.append(f" · {study.path}", style="dim")
    if problem:
        text.append(f"\n{problem}", style="red")
    elif results is None:
        text.append("\nno results yet: the study writes them as each member is measured", style="dim")
    if last and status.state in LIVE:
        text.append(f"\nlog: {last[-1]}", style="dim")
    text.append("\nEnter opens a member's run · a adds its model to the comparison", style="dim")
    return text


def forgetting_tables(results: StudyResults) -> Columns:
    """Each line's forgetting matrix, as `spectui study` prints it: side by side where they fit, else
    one under the other."""
    tables = []
    for line in results.lines:
        table = forgetting_table(results, line)
        table.box, table.title = box.SIMPLE_HEAD, f"{line}: task loss after each stage"
        tables.append(table)
    return Columns(tables, padding=(0, 4))


class StudyPickerScreen(ModalScreen[Study | None]):
    """The studies of the runs directory, newest first; Enter opens one, Escape cancels."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, studies: list[Study]) -> None:
        super().__init__()
        self.studies = studies

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Label(f"[b]Studies[/] in {runs_dir().resolve()}")
            yield OptionList(*(f"{study.name} · {study.status().state.value}" for study in self.studies))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.studies[event.option_index])


def open_studies(app: HostApp) -> None:
    """The study view: of the only study at once, else of the one chosen (newest first)."""
    if isinstance(app.screen, (StudyScreen, StudyPickerScreen)):
        return
    studies = list_studies()
    if not studies:
        app.notify(f"no study in {runs_dir().resolve()} yet: the Train screen's Study tab (r) starts one, "
                   "or `spectui study`")
    elif len(studies) == 1:
        app.push_screen(StudyScreen(studies[0]))
    else:
        def open_chosen(chosen: Study | None) -> None:
            if chosen is not None:
                app.push_screen(StudyScreen(chosen))

        app.push_screen(StudyPickerScreen(studies), open_chosen)
