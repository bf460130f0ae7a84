"""The study form (the Train screen's Study tab): one row per StudySpec field a study is made of, each
re-checked as it is typed, its error beside it, as the run form does.

Editors come from the spec's field metadata (choices → Select, bool → Checkbox, else a text field
read by `spectui study`'s own parser), so the form reads every value as the command's flags do.
The base is the inspector's; the run settings shared by the members keep their defaults here
(`spectui study` takes them as flags).
"""

from __future__ import annotations

from dataclasses import fields, replace

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Checkbox, Input, Label, Select, Static

from spectui.finetune.spec import ADAPTER_LR, FULL_LR, RunSpec
from spectui.finetune.study import StudyError, StudySpec, flag_text, parse_text
from spectui.tui.widgets.data_check import DataCheck
from spectui.tui.widgets.field import Field
from spectui.tui.widgets.spec_form import PathSuggester
from spectui.tui.widgets.toggles import Check

STUDY_FIELDS = ("data", "sequence", "ranks", "full", "method", "alpha", "lr_grid", "full_lr_grid", "steps",
                "reference", "name")
LABELS = {"sequence": "or a sequence", "full": "full fine-tuning", "alpha": "α", "lr_grid": "learning rates",
          "full_lr_grid": "full's rates"}
PLACEHOLDERS = {
    "data": "one task's data file (a rank study)",
    "sequence": "or data files in order, comma-separated (a sequence)",
    "ranks": "LoRA ranks, comma-separated",
    "alpha": "2r (the paper's), or a number",
    "lr_grid": f"blank: {ADAPTER_LR:g}; several, comma-separated, are matched on task loss",
    "full_lr_grid": f"blank: {FULL_LR:g}",
    "steps": "blank: each member trains for the run's epochs",
    "name": "blank: study and the time",
}
SUGGESTERS = {"data": PathSuggester(), "sequence": PathSuggester(separator=","), "reference": PathSuggester()}
_METADATA = {spec_field.name: spec_field.metadata for spec_field in fields(StudySpec)}


class StudyForm(VerticalScroll):
    """Edits a StudySpec; after each change posts `StudyForm.Edited` with the spec and the errors
    that block a launch, keyed by field (the base's, or a member's run setting's, `run.…`, are
    errors of no field here: the screen says them)."""

    class Edited(Message):
        def __init__(self, spec: StudySpec, errors: dict[str, str]) -> None:
            super().__init__()
            self.spec = spec
            self.errors = errors

    def __init__(self, spec: StudySpec, **kwargs) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.errors: dict[str, str] = {}
        self._launch_errors: dict[str, str] = {}  # found only at launch, shown until edited
        self.data_check = DataCheck(self, self.validate)

    def compose(self) -> ComposeResult:
        yield Label(f"base: {self.spec.base} (the inspector's)", classes="field-row")
        for name in STUDY_FIELDS:
            with Horizontal(classes="field-row"):
                yield Label(LABELS.get(name, name.replace("_", " ")), classes="field-label")
                yield self._editor(name)
            yield Static("", id=f"study-error-{name}", classes="field-error", markup=False)

    def on_mount(self) -> None:
        self.validate()

    def editor(self, name: str) -> Input | Select | Check:
        return self.query_one(f"#study-{name}")

    def show_error(self, name: str, message: str) -> None:
        """An error found at launch, on its field until that field is edited."""
        self._launch_errors[name] = message
        self.validate()
        self.editor(name).focus()

    @on(Input.Changed)
    @on(Select.Changed)
    @on(Checkbox.Changed)
    def _edited(self, event: Input.Changed | Select.Changed | Checkbox.Changed) -> None:
        event.stop()
        self._launch_errors.pop(event.control.id.removeprefix("study-"), None)
        self.validate()

    def validate(self) -> None:
        """Read every editor into the spec, show each field's error, and tell the screen."""
        values, field_errors = {}, {}
        for name in STUDY_FIELDS:
            editor = self.editor(name)
            try:
                values[name] = _value(name, editor)
            except StudyError as error:
                field_errors[name] = str(error)
        self.spec = replace(self.spec, **values)
        self.errors = {**self.spec.errors(), **field_errors}
        tasks = "sequence" if self.spec.is_sequence else "data"
        if tasks not in self.errors and "data" not in self.errors and (problem := self._data_problem()):
            self.errors[tasks] = problem
        shown = {**self.errors, **self._launch_errors}
        for name in STUDY_FIELDS:
            message = shown.get(name, "")
            error = self.query_one(f"#study-error-{name}", Static)
            error.update(message)
            error.display = bool(message)
            self.editor(name).set_class(bool(message), "-invalid")
        self.editor("alpha").disabled = not self.spec.ranks
        self.post_message(self.Edited(self.spec, self.errors))

    def _data_problem(self) -> str:
        """Each task's file as its members' runs will read it (their held-out share and seed)."""
        return self.data_check.problem([RunSpec(**{**self.spec.run, "base": self.spec.base, "data": data})
                                        for data in self.spec.tasks])

    def on_worker_state_changed(self, event) -> None:
        self.app.worker_ended(event)

    def _editor(self, name: str) -> Widget:
        value, metadata = getattr(self.spec, name), _METADATA[name]
        common = {"id": f"study-{name}", "tooltip": metadata["help"], "compact": True}
        if "choices" in metadata:
            return Select([(choice, choice) for choice in metadata["choices"]], value=value,
                          allow_blank=False, **common)
        if isinstance(value, bool):
            return Check(metadata["help"], value=value, **common)
        placeholder = PLACEHOLDERS.get(name, "")
        if name == "reference":
            default = self.spec.default_reference()
            placeholder = f"blank: {default}" if default else "pre-training-like text (its loss is forgetting)"
        return Field(_text(value), placeholder=placeholder, suggester=SUGGESTERS.get(name), **common)


def _value(name: str, editor: Input | Select | Check):
    """An editor's value as the spec holds it; StudyError naming what is wrong with the text."""
    if not isinstance(editor, Input):
        return editor.value
    value = parse_text(name, editor.value)
    StudySpec.from_dict({name: value})  # the field's own checks (ranks of at least 1, …)
    return value


def _text(value: object) -> str:
    return "" if value is None else flag_text(value)
