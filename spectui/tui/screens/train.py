"""The Train screen, two tabs. Run: a fine-tuning run as a form, previewed as its `spectui train`
command, launched detached (it outlives the TUI), then followed in its live view. Study: the paper's
experiment (LoRA at several ranks beside full fine-tuning, or a sequence of tasks) as a form,
previewed as its `spectui study` command, started detached exactly as `spectui study --detach`
starts it, then followed in the study view; its members are runs, listed with the others (R).

Presets are named JSON specs in $XDG_CONFIG_HOME/spectui/presets (~/.config/spectui/presets), so
they serve every project; they leave out the run's name and output directory.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.markup import escape
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Header, Input, Label, OptionList, Static, TabbedContent, TabPane
from textual.worker import get_current_worker

from spectui.errors import InputError
from spectui.finetune.data import DataError, load_splits
from spectui.finetune.runs import RunError, State, create_run
from spectui.finetune.spec import RunSpec, SpecError, load_spec, render_command, save_spec
from spectui.finetune.study import StudyError, StudySpec, start_study
from spectui.finetune.study import render_command as render_study_command
from spectui.locations import presets_dir, samples_dir
from spectui.tui.keys import footer
from spectui.tui.messages import SpecEdited
from spectui.tui.screens.base import SpectuiScreen
from spectui.tui.screens.runs import RunScreen
from spectui.tui.screens.study import StudyScreen
from spectui.tui.widgets.field import Field
from spectui.tui.widgets.spec_form import SpecForm
from spectui.tui.widgets.study_form import StudyForm

_PRESET_NAME = re.compile(r"\w[\w.-]*")


class TrainScreen(SpectuiScreen):
    AUTO_FOCUS = "#field-method"
    HELP_TITLE = "Train"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", tooltip="back (nothing is launched)"),
        Binding("ctrl+r", "launch", "Launch",
                tooltip="start the run, or the study, of the tab shown, detached: it outlives spectui"),
        Binding("ctrl+t", "switch_tab", "Run/Study", tooltip="switch between the Run and Study tabs"),
        Binding("ctrl+s", "save_preset", "Save preset", tooltip="save the run form as a named preset"),
        Binding("ctrl+o", "load_preset", "Load preset", tooltip="fill the run form from a saved preset"),
        *footer("help"),
    ]

    def __init__(self, base: Path) -> None:
        """A LoRA run, and a study, on `base`, with the bundled task data when it is there."""
        super().__init__()
        data = samples_dir() / "data" / "task.jsonl"
        data_text = str(data) if data.is_file() else ""
        self.initial = RunSpec(base=str(base), data=data_text)
        self.initial_study = StudySpec(base=str(base), data=data_text or None)
        self.launching = False  # one launch at a time: a second key press must not start twice

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="train-tabs"):
            with TabPane("Run", id="tab-run"):
                yield SpecForm(self.initial, id="spec-form")
                with Vertical(id="train-summary"):
                    yield Static("", id="train-notes")
                    yield Static("", id="train-command")
                    yield Button("Launch (ctrl+r)", id="launch", variant="primary", compact=True)
            with TabPane("Study", id="tab-study"):
                yield StudyForm(self.initial_study, id="study-form")
                with Vertical(id="study-summary"):
                    yield Static("", id="study-notes")
                    yield Static("", id="study-command")
                    yield Button("Launch study (ctrl+r)", id="launch-study", variant="primary", compact=True)
        yield Footer(compact=True)

    @property
    def on_study_tab(self) -> bool:
        return self.query_one(TabbedContent).active == "tab-study"

    def on_spec_edited(self, message: SpecEdited) -> None:
        """Preview the command, say what blocks the launch, and warn about what is valid but risky."""
        notes = [f"[yellow]warning: {escape(warning)}[/]" for warning in message.spec.warnings()]
        if message.errors:
            notes.append(f"[red]{len(message.errors)} field(s) to fix before launching: "
                         f"{escape('; '.join(message.errors.values()))}[/]")
        self.query_one("#train-notes", Static).update("\n".join(notes))
        self.query_one("#train-notes").display = bool(notes)
        self.query_one("#train-command", Static).update(f"$ {escape(render_command(message.spec))}")
        self.query_one("#launch", Button).disabled = bool(message.errors)

    def on_study_form_edited(self, message: StudyForm.Edited) -> None:
        """The study's command, and what blocks its launch (a problem of no field too: the base's)."""
        self.query_one("#study-command", Static).update(f"$ {escape(render_study_command(message.spec))}")
        notes = (f"[red]{len(message.errors)} thing(s) to fix before launching: "
                 f"{escape('; '.join(message.errors.values()))}[/]") if message.errors else ""
        self.query_one("#study-notes", Static).update(notes)
        self.query_one("#study-notes").display = bool(notes)
        self.query_one("#launch-study", Button).disabled = bool(message.errors)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        """The keys go to the first field of the tab shown; the run's preset keys only on its tab."""
        self.refresh_bindings()
        first = "#field-method" if event.pane.id == "tab-run" else "#study-data"
        self.call_after_refresh(self.query_one(first).focus)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("save_preset", "load_preset") and self.is_mounted and self.on_study_tab:
            return None
        return True

    def action_switch_tab(self) -> None:
        self.query_one(TabbedContent).active = "tab-run" if self.on_study_tab else "tab-study"

    def on_button_pressed(self, _: Button.Pressed) -> None:
        self.action_launch()

    def action_launch(self) -> None:
        form = self.query_one(StudyForm if self.on_study_tab else SpecForm)
        if form.errors:
            self.notify(next(iter(form.errors.values())), title="not launched", severity="error",
                        markup=False)
        elif not self.launching:
            self.launching = True
            if isinstance(form, StudyForm):
                self.launch_study(form.spec)
            else:
                self.launch(form.spec)

    @work(thread=True, group="launch", exclusive=True)
    def launch(self, spec: RunSpec) -> None:
        """Reads the data first, so a bad file is reported on the form and no run is created."""
        try:
            load_splits(spec)
            run = create_run(spec)
        except DataError as error:
            on_data = str(error).startswith(f"{Path(spec.data)}:")
            self.app.call_from_thread(self._refused, SpecForm, "data" if on_data else None, str(error))
            return
        except RunError as error:
            field = "start_from" if str(error).startswith("start_from") else "name"
            self.app.call_from_thread(self._refused, SpecForm, field, str(error))
            return
        try:
            run.start()
        except RunError as error:
            run.set_status(State.FAILED, str(error))
            self.app.call_from_thread(self._refused, SpecForm, None, str(error))
            return
        self._follow(RunScreen(run))

    @work(thread=True, group="launch", exclusive=True)
    def launch_study(self, spec: StudySpec) -> None:
        """The study started as `spectui study --detach` starts it: its spec resolved (a name, the runs
        directory) and checked, every task's data read, its directory made, its process detached."""
        spec = spec.resolved()
        try:
            spec.check()
            study, _ = start_study(spec)
        except DataError as error:
            self.app.call_from_thread(self._refused, StudyForm, "sequence" if spec.is_sequence else "data",
                                      str(error))
            return
        except (StudyError, RunError) as error:  # the study's directory, or its runs directory
            self.app.call_from_thread(self._refused, StudyForm, "name", str(error))
            return
        except InputError as error:
            self.app.call_from_thread(self._refused, StudyForm, None, str(error))
            return
        self._follow(StudyScreen(study))

    def _follow(self, view: SpectuiScreen) -> None:
        """From the launching worker: the live view of what was launched."""
        if not get_current_worker().is_cancelled:  # the user may have left the screen meanwhile
            self.app.call_from_thread(self.app.switch_screen, view)

    def _refused(self, form: type[SpecForm | StudyForm], field: str | None, message: str) -> None:
        self.launching = False
        if field is not None:
            self.query_one(form).show_error(field, message)
        self.notify(message, title="not launched", severity="error", timeout=10, markup=False)

    def action_save_preset(self) -> None:
        def save(name: str | None) -> None:
            if not name:
                return
            path = presets_dir() / f"{name}.json"
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                save_spec(replace(self.query_one(SpecForm).spec, name=None, out=None), path)
            except OSError as error:
                self.notify(f"{path}: cannot save the preset ({error.strerror})", severity="error",
                            markup=False)
                return
            self.notify(f"saved preset {name} in {path.parent}")

        self.app.push_screen(PresetNameScreen(), save)

    def action_load_preset(self) -> None:
        names = sorted(path.stem for path in presets_dir().glob("*.json"))
        if not names:
            self.notify(f"no presets in {presets_dir()} yet; ctrl+s saves one", severity="warning")
            return

        def load(name: str | None) -> None:
            if name:
                try:
                    self.query_one(SpecForm).load(load_spec(presets_dir() / f"{name}.json"))
                except SpecError as error:
                    self.notify(str(error), severity="error", markup=False)

        self.app.push_screen(PresetPickerScreen(names), load)


class PresetNameScreen(ModalScreen[str | None]):
    """The name to save the form under; Enter saves, Escape cancels."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Label("[b]Save preset[/] — a name (letters, digits, '.', '-', '_'); Enter saves")
            yield Field(id="preset-name")
            yield Static("", id="preset-error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if _PRESET_NAME.fullmatch(event.value):
            self.dismiss(event.value)
        else:
            self.query_one("#preset-error", Static).update(
                "[red]a preset name is letters, digits, '.', '-' and '_'[/]")


class PresetPickerScreen(ModalScreen[str | None]):
    """The saved presets; Enter loads one, Escape cancels."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = names

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Label(f"[b]Load preset[/] from {presets_dir()}")
            yield OptionList(*self.names)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.names[event.option_index])
