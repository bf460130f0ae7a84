"""Typed messages between the engine's worker, the app and the widgets."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from spectui.finetune.runs import RunStatus
    from spectui.finetune.spec import RunSpec


class ResultsChanged(Message):
    """New results landed (batched: at most a few per second while a scan runs)."""


class ThresholdsChanged(Message):
    """k, ε or the tuned model shown changed: everything re-reads stored results, no new SVD."""


class OpenMatrix(Message):
    """Ask the app to show one matrix in detail."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


class MatrixHighlighted(Message):
    """The user is looking at a matrix: it jumps the scan queue."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


class SpecEdited(Message):
    """The fine-tuning form changed: the spec as typed, and each invalid field with its reason."""

    def __init__(self, spec: RunSpec, errors: dict[str, str]) -> None:
        super().__init__()
        self.spec = spec
        self.errors = errors


class RunStateChanged(Message):
    """A watched run changed state (e.g. running → done): its keys may change."""

    def __init__(self, status: RunStatus) -> None:
        super().__init__()
        self.status = status
