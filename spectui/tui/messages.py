"""Typed messages between the engine's worker, the app and the widgets."""

from __future__ import annotations

from textual.message import Message


class ResultsChanged(Message):
    """New results landed (batched: at most a few per second while a scan runs)."""


class ThresholdsChanged(Message):
    """k, ε or the tuned model shown changed: everything re-reads stored results, no new SVD."""


class MatrixFailed(Message):
    def __init__(self, name: str, text: str) -> None:
        super().__init__()
        self.name = name
        self.text = text


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
