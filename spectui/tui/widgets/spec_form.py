"""The fine-tuning form: one row per RunSpec field, each re-checked as it is typed, its error beside it.

Editors are derived from the spec's field metadata (choices → Select, bool → Checkbox, else a
text Input parsed by `parse_field`), so the form can never drift from `spectui train`'s flags.
"""

from __future__ import annotations

import os
from dataclasses import fields, replace
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.suggester import Suggester, SuggestFromList
from textual.widget import Widget
from textual.widgets import Checkbox, Input, Label, Select, Static

from spectui.finetune.spec import TARGET_PRESETS, RunSpec, SpecError, field_kind, parse_field
from spectui.tui.messages import SpecEdited
from spectui.tui.widgets.data_check import DataCheck
from spectui.tui.widgets.field import Field
from spectui.tui.widgets.toggles import Check

FORM_FIELDS = (
    "method", "task", "base", "data", "start_from", "rank", "alpha", "alpha_2r", "dropout", "target_modules",
    "lr", "epochs", "max_steps", "batch_size", "grad_accum", "max_seq_len", "warmup_steps",
    "scheduler", "seed", "save_every", "device", "dtype", "name",
)
ADAPTER_FIELDS = ("rank", "alpha", "alpha_2r", "dropout", "target_modules")
LABELS = {"lr": "learning rate", "alpha_2r": "α = 2r", "save_every": "checkpoint every",
          "grad_accum": "grad accumulation", "warmup_steps": "warm-up steps", "start_from": "start from"}
PLACEHOLDERS = {"max_steps": "blank: train for the epochs above",
                "name": "blank: method, rank and time",
                "start_from": "blank: the base; or a run's name (its output), or a model directory"}
_METADATA = {spec_field.name: spec_field.metadata for spec_field in fields(RunSpec)}


class PathSuggester(Suggester):
    """Completes the last component of a path from the directory it is in (Tab or → accepts); with
    `separator`, of the last path in a list of them."""

    def __init__(self, separator: str | None = None) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.separator = separator

    async def get_suggestion(self, value: str) -> str | None:
        path = value.rpartition(self.separator)[2] if self.separator else value
        head, slash, stem = path.lstrip().rpartition("/")
        directory = Path(head + slash or ".").expanduser()
        try:
            with os.scandir(directory) as entries:
                names = sorted(entry.name + "/" * entry.is_dir() for entry in entries
                               if entry.name.startswith(stem)
                               and (stem.startswith(".") or not entry.name.startswith(".")))
        except OSError:
            return None
        return value + names[0][len(stem):] if names else None


class RunSuggester(PathSuggester):
    """Completes a run's name from the runs directory, else a path."""

    async def get_suggestion(self, value: str) -> str | None:
        from spectui.locations import runs_dir

        try:
            with os.scandir(runs_dir()) as entries:
                names = sorted(entry.name for entry in entries if entry.name.startswith(value)
                               and (Path(entry.path) / "spec.json").is_file())
        except OSError:
            names = []
        return names[0] if value and names else await super().get_suggestion(value)


SUGGESTERS = {"base": PathSuggester(), "data": PathSuggester(), "start_from": RunSuggester(),
              "target_modules": SuggestFromList(TARGET_PRESETS)}


class SpecForm(VerticalScroll):
    """Edits a RunSpec; after each change posts SpecEdited with the spec and the invalid fields
    that block a launch."""

    def __init__(self, spec: RunSpec, **kwargs) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.errors: dict[str, str] = {}
        self._launch_errors: dict[str, str] = {}  # found only at launch (e.g. the run's name taken)
        self.data_check = DataCheck(self, self.validate)

    def compose(self) -> ComposeResult:
        for name in FORM_FIELDS:
            with Horizontal(classes="field-row"):
                yield Label(LABELS.get(name, name.replace("_", " ")), classes="field-label")
                yield self._editor(name)
            yield Static("", id=f"error-{name}", classes="field-error", markup=False)

    def on_mount(self) -> None:
        self.validate()

    def load(self, spec: RunSpec) -> None:
        """Show another spec (a preset): every editor takes its value."""
        self.spec = spec
        self._launch_errors.clear()
        for name in FORM_FIELDS:
            editor = self.editor(name)
            editor.value = _text(getattr(spec, name)) if isinstance(editor, Input) else getattr(spec, name)
        self.validate()

    def show_error(self, name: str, message: str) -> None:
        """An error found at launch (not from the spec alone), shown on its field until that field
        is edited; it does not block the next launch, which checks again."""
        self._launch_errors[name] = message
        self.validate()
        self.editor(name).focus()

    def editor(self, name: str) -> Input | Select | Check:
        return self.query_one(f"#field-{name}")

    @on(Input.Changed)
    @on(Select.Changed)
    @on(Checkbox.Changed)
    def _edited(self, event: Input.Changed | Select.Changed | Checkbox.Changed) -> None:
        event.stop()
        self._launch_errors.pop(event.control.id.removeprefix("field-"), None)
        self.validate()

    def validate(self) -> None:
        """Parse every editor into the spec, show each field's error, and tell the screen."""
        values, parse_errors = {}, {}
        for name in FORM_FIELDS:
            editor = self.editor(name)
            if not isinstance(editor, Input):
                values[name] = editor.value
                continue
            try:
                values[name] = parse_field(name, editor.value)
            except SpecError as error:
                parse_errors[name] = str(error)
        self.spec = replace(self.spec, **values)
        self.errors = {**self.spec.errors(), **parse_errors}
        if "data" not in self.errors and (data_error := self.data_check.problem([self.spec])):
            self.errors["data"] = data_error
        if "start_from" not in self.errors and (start_error := _start_problem(self.spec)):
            self.errors["start_from"] = start_error
        shown = {**self.errors, **self._launch_errors}
        for name in FORM_FIELDS:
            message = shown.get(name, "")
            error = self.query_one(f"#error-{name}", Static)
            error.update(message)
            error.display = bool(message)
            self.editor(name).set_class(bool(message), "-invalid")
        self._adapt_to_method()
        self.post_message(SpecEdited(self.spec, self.errors))

    def on_worker_state_changed(self, event) -> None:
        self.app.worker_ended(event)

    def _adapt_to_method(self) -> None:
        """Adapter fields are off for full fine-tuning; α is off when it is 2r; the learning rate
        left blank shows the method's default, which follows the method until a value is typed."""
        spec = self.spec
        for name in ADAPTER_FIELDS:
            self.editor(name).disabled = not spec.uses_adapter
        self.editor("alpha").disabled = not spec.uses_adapter or spec.alpha_2r
        default_lr = replace(spec, lr=None).learning_rate
        self.editor("lr").placeholder = f"blank: {default_lr:g}, the {spec.method} default"

    def _editor(self, name: str) -> Widget:
        value, metadata = getattr(self.spec, name), _METADATA[name]
        common = {"id": f"field-{name}", "tooltip": metadata["help"], "compact": True}
        if "choices" in metadata:
            return Select([(choice, choice) for choice in metadata["choices"]], value=value,
                          allow_blank=False, **common)
        if field_kind(name) is bool:
            return Check(metadata["help"], value=value, **common)
        return Field(_text(value), placeholder=PLACEHOLDERS.get(name, ""),
                     suggester=SUGGESTERS.get(name), **common)


def _start_problem(spec: RunSpec) -> str:
    """Why the run named to start from cannot be, as creating the run would find it: no such run or
    directory, or a run of another base."""
    from spectui.finetune.runs import RunError, resolve_start

    try:
        resolve_start(spec)
    except RunError as error:
        return str(error)
    return ""


def _text(value: object) -> str:
    return "" if value is None else str(value)
