"""What the run and the study forms share: one row per field of a spec (its label, its editor, its
error), editors made from the field's metadata (choices → Select, a flag → Checkbox, else a text
field read as the command's flag is), every field re-checked as it is typed, and an error found only
at launch kept on its field until that field is edited."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.suggester import Suggester
from textual.widget import Widget
from textual.widgets import Checkbox, Input, Label, Select, Static

from spectui.finetune.spec import SpecError
from spectui.tui.widgets.data_check import DataCheck
from spectui.tui.widgets.field import Field
from spectui.tui.widgets.toggles import Check


class SpecFields(VerticalScroll):
    """Edits one spec dataclass, field by field. A subclass names its fields, says how a typed text
    is read and what the screen is told after each change, and may add errors of the whole spec
    (`problems`)."""

    FIELDS: tuple[str, ...] = ()
    LABELS: dict[str, str] = {}
    PLACEHOLDERS: dict[str, str] = {}
    SUGGESTERS: dict[str, Suggester] = {}
    EDITOR_ID, ERROR_ID = "field-", "error-"  # widget ids: the prefix, then the field's name
    read: Callable[[str, str], Any]  # (field, typed text) → its value; SpecError in one sentence if none
    edited: Callable[[Any, dict[str, str]], Message]  # (spec, errors) → what the screen is told

    def __init__(self, spec, **kwargs) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.errors: dict[str, str] = {}
        self._launch_errors: dict[str, str] = {}  # found only at launch, shown until the field is edited
        self.data_check = DataCheck(self, self.validate)
        self._metadata = {spec_field.name: spec_field.metadata for spec_field in fields(spec)}

    # -- what a form says about its spec -------------------------------------------------------
    def problems(self, errors: dict[str, str]) -> dict[str, str]:
        """Errors found beyond the spec's own (`errors`, so far), by field: its data file as a run
        will read it, say, looked at only where the field has no error yet."""
        return {}

    def text(self, value: object) -> str:
        return "" if value is None else str(value)

    def placeholder(self, name: str) -> str:
        return self.PLACEHOLDERS.get(name, "")

    def header(self) -> ComposeResult:
        yield from ()

    def adapt(self) -> None:
        """Editors enabled or not, placeholders, as the values just read call for."""

    # -- the form ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield from self.header()
        for name in self.FIELDS:
            with Horizontal(classes="field-row"):
                yield Label(self.LABELS.get(name, name.replace("_", " ")), classes="field-label")
                yield self._editor(name)
            yield Static("", id=f"{self.ERROR_ID}{name}", classes="field-error", markup=False)

    def on_mount(self) -> None:
        self.validate()

    def editor(self, name: str) -> Input | Select | Check:
        return self.query_one(f"#{self.EDITOR_ID}{name}")

    def show_error(self, name: str, message: str) -> None:
        """An error found at launch (not from the spec alone), on its field until that field is
        edited; it does not block the next launch, which checks again."""
        self._launch_errors[name] = message
        self.validate()
        self.editor(name).focus()

    @on(Input.Changed)
    @on(Select.Changed)
    @on(Checkbox.Changed)
    def _edited(self, event: Input.Changed | Select.Changed | Checkbox.Changed) -> None:
        event.stop()
        self._launch_errors.pop(event.control.id.removeprefix(self.EDITOR_ID), None)
        self.validate()

    def validate(self) -> None:
        """Read every editor into the spec, show each field's error, and tell the screen."""
        values, field_errors = {}, {}
        for name in self.FIELDS:
            editor = self.editor(name)
            try:
                values[name] = self.read(name, editor.value) if isinstance(editor, Input) else editor.value
            except SpecError as error:
                field_errors[name] = str(error)
        self.spec = replace(self.spec, **values)
        self.errors = {**self.spec.errors(), **field_errors}
        self.errors |= self.problems(self.errors)
        shown = {**self.errors, **self._launch_errors}
        for name in self.FIELDS:
            message = shown.get(name, "")
            error = self.query_one(f"#{self.ERROR_ID}{name}", Static)
            error.update(message)
            error.display = bool(message)
            self.editor(name).set_class(bool(message), "-invalid")
        self.adapt()
        self.post_message(self.edited(self.spec, self.errors))

    def on_worker_state_changed(self, event) -> None:
        self.app.worker_ended(event)

    def _editor(self, name: str) -> Widget:
        value, metadata = getattr(self.spec, name), self._metadata[name]
        common = {"id": f"{self.EDITOR_ID}{name}", "tooltip": metadata["help"], "compact": True}
        if "choices" in metadata:
            return Select([(choice, choice) for choice in metadata["choices"]], value=value,
                          allow_blank=False, **common)
        if isinstance(value, bool):
            return Check(metadata["help"], value=value, **common)
        return Field(self.text(value), placeholder=self.placeholder(name), suggester=self.SUGGESTERS.get(name),
                     **common)
