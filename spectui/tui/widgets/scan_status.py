"""Progress of the background scan: bar, matrices done / total, ETA."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, ProgressBar


class ScanStatus(Horizontal):
    def compose(self) -> ComposeResult:
        yield ProgressBar(show_eta=False, show_percentage=False, id="scan-bar")
        yield Label("starting scan…", id="scan-label")

    def show(self, done: int, total: int, eta: float | None, finished: bool, failed: int) -> None:
        bar = self.query_one(ProgressBar)
        bar.update(total=max(total, 1), progress=done)
        if finished:
            text = f"scan complete · {total} matrices"
        elif eta is None:
            text = f"{done}/{total} matrices"
        else:
            text = f"{done}/{total} matrices · ETA {duration(eta)}"
        if failed:
            text += f" · [red]{failed} failed[/]"
        self.query_one("#scan-label", Label).update(text)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
