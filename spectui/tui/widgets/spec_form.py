"""The fine-tuning form: one row per RunSpec field, each re-checked as it is typed, its error beside it.

Editors are derived from the spec's field metadata (`form.SpecFields`), and texts are read by
`parse_field`, so the form can never drift from `spectui train`'s flags.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from textual.suggester import Suggester, SuggestFromList
from textual.widgets import Input

from spectui.finetune.spec import TARGET_PRESETS, RunSpec, parse_field
from spectui.tui.messages import SpecEdited
from spectui.tui.widgets.form import SpecFields


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


ADAPTER_FIELDS = ("rank", "alpha", "alpha_2r", "dropout", "target_modules")


class SpecForm(SpecFields):
    """Edits a RunSpec; after each change posts SpecEdited with the spec and the invalid fields
    that block a launch."""

    FIELDS = (
        "method", "task", "base", "data", "start_from", "rank", "alpha", "alpha_2r", "dropout", "target_modules",
        "lr", "epochs", "max_steps", "batch_size", "grad_accum", "max_seq_len", "warmup_steps",
        "scheduler", "seed", "save_every", "device", "dtype", "name",
    )
    LABELS = {"lr": "learning rate", "alpha_2r": "α = 2r", "save_every": "checkpoint every",
              "grad_accum": "grad accumulation", "warmup_steps": "warm-up steps", "start_from": "start from"}
    PLACEHOLDERS = {"max_steps": "blank: train for the epochs above",
                    "name": "blank: method, rank and time",
                    "start_from": "blank: the base; or a run's name (its output), or a model directory"}
    SUGGESTERS = {"base": PathSuggester(), "data": PathSuggester(), "start_from": RunSuggester(),
                  "target_modules": SuggestFromList(TARGET_PRESETS)}
    read = staticmethod(parse_field)
    edited = SpecEdited

    def load(self, spec: RunSpec) -> None:
        """Show another spec (a preset): every editor takes its value."""
        self.spec = spec
        self._launch_errors.clear()
        for name in self.FIELDS:
            editor = self.editor(name)
            editor.value = self.text(getattr(spec, name)) if isinstance(editor, Input) else getattr(spec, name)
        self.validate()

    def problems(self, errors: dict[str, str]) -> dict[str, str]:
        found = {}
        if "data" not in errors and (data_error := self.data_check.problem([self.spec])):
            found["data"] = data_error
        if "start_from" not in errors and (start_error := _start_problem(self.spec)):
            found["start_from"] = start_error
        return found

    def adapt(self) -> None:
        """Adapter fields are off for full fine-tuning; α is off when it is 2r; the learning rate
        left blank shows the method's default, which follows the method until a value is typed."""
        spec = self.spec
        for name in ADAPTER_FIELDS:
            self.editor(name).disabled = not spec.uses_adapter
        self.editor("alpha").disabled = not spec.uses_adapter or spec.alpha_2r
        default_lr = replace(spec, lr=None).learning_rate
        self.editor("lr").placeholder = f"blank: {default_lr:g}, the {spec.method} default"


def _start_problem(spec: RunSpec) -> str:
    """Why the run named to start from cannot be, as creating the run would find it: no such run or
    directory, or a run of another base."""
    from spectui.finetune.runs import RunError, resolve_start

    try:
        resolve_start(spec)
    except RunError as error:
        return str(error)
    return ""
