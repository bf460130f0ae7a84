"""The study form (the Train screen's Study tab): one row per StudySpec field a study is made of, each
re-checked as it is typed, its error beside it, as the run form does (`form.SpecFields`).

Texts are read by `spectui study`'s own parser, so the form reads every value as the command's
flags do. The base is the inspector's; the run settings shared by the members keep their defaults
here (`spectui study` takes them as flags).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.message import Message
from textual.widgets import Label

from spectui.finetune.spec import ADAPTER_LR, FULL_LR, RunSpec
from spectui.finetune.study import StudySpec, flag_text, parse_text
from spectui.tui.widgets.form import SpecFields
from spectui.tui.widgets.spec_form import PathSuggester


class StudyForm(SpecFields):
    """Edits a StudySpec; after each change posts `StudyForm.Edited` with the spec and the errors
    that block a launch, keyed by field (the base's, or a member's run setting's, `run.…`, are
    errors of no field here: the screen says them)."""

    FIELDS = ("data", "sequence", "ranks", "full", "method", "alpha", "lr_grid", "full_lr_grid", "steps",
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
    EDITOR_ID, ERROR_ID = "study-", "study-error-"

    class Edited(Message):
        def __init__(self, spec: StudySpec, errors: dict[str, str]) -> None:
            super().__init__()
            self.spec = spec
            self.errors = errors

    edited = Edited

    @staticmethod
    def read(name: str, text: str):
        value = parse_text(name, text)
        StudySpec.from_dict({name: value})  # the field's own checks (ranks of at least 1, …)
        return value

    def header(self) -> ComposeResult:
        yield Label(f"base: {self.spec.base} (the inspector's)", classes="field-row")

    def problems(self, errors: dict[str, str]) -> dict[str, str]:
        """Each task's file as its members' runs will read it (their held-out share and seed)."""
        tasks = "sequence" if self.spec.is_sequence else "data"
        if tasks in errors or "data" in errors:
            return {}
        problem = self.data_check.problem([RunSpec(**{**self.spec.run, "base": self.spec.base, "data": data})
                                           for data in self.spec.tasks])
        return {tasks: problem} if problem else {}

    def adapt(self) -> None:
        self.editor("alpha").disabled = not self.spec.ranks

    def text(self, value: object) -> str:
        return "" if value is None else flag_text(value)

    def placeholder(self, name: str) -> str:
        if name != "reference":
            return super().placeholder(name)
        default = self.spec.default_reference()
        return f"blank: {default}" if default else "pre-training-like text (its loss is forgetting)"
