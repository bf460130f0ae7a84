"""Progress of the background scan: bar, what it is doing, matrices done per model, ETA.

Before the first result lands (torch loading, headers read, the first decompositions: several
seconds on a laptop) the line says which of those is under way and for how long, so a count stuck
at 0 never reads as a hang. It polls the inspector itself, twice a second."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, ProgressBar

from spectui.tui.inspector import Inspector

POLL_S = 0.5


class ScanStatus(Horizontal):
    def __init__(self, inspector: Inspector, **kwargs) -> None:
        super().__init__(**kwargs)
        self.inspector = inspector
        self._text = ""

    def compose(self) -> ComposeResult:
        yield ProgressBar(show_eta=False, show_percentage=False, id="scan-bar")
        yield Label("starting…", id="scan-label")

    def on_mount(self) -> None:
        self.update_status()
        self.set_interval(POLL_S, self.update_status)

    def update_status(self) -> None:
        ins = self.inspector
        done, total, eta = ins.progress
        self.query_one(ProgressBar).update(total=max(total, 1), progress=done)
        text = status_text(done, total, eta, ins.finished, len(ins.errors), ins.matrices_per_model(),
                           ins.phase, ins.phase_seconds, ins.paused, ins.from_cache, ins.phases)
        if text != self._text:
            self._text = text
            self.query_one("#scan-label", Label).update(text)


def status_text(done: int, total: int, eta: float | None, finished: bool, failed: int,
                per_model: list[int], phase: str, phase_seconds: float, paused: bool = False,
                from_cache: int = 0, phases: list[tuple[str, int, int]] | None = None) -> str:
    """The status line: the phase until results come, then matrices done in each of the scan's
    phases (counts, then spectra) and the ETA; a scan taken up again says how much it found done."""
    steps = [f"{name} {through}/{of}" for name, through, of in phases or []]
    progress = " · ".join(steps) if len(steps) > 1 else f"{done}/{total} matrices"
    if finished:
        text = f"scan complete · {_matrices(per_model)}" + (f" · {from_cache} cached" if from_cache else "")
    elif paused:
        text = f"paused · {progress} · P goes on"
    elif done == 0:
        text = f"{phase}… {duration(phase_seconds)} · the list is browsable meanwhile"
    else:
        text = progress + ("" if eta is None else f" · ETA {duration(eta)}")
    if failed:
        text += f" · [red]{failed} failed[/]"
    return text


def _matrices(per_model: list[int]) -> str:
    """28 matrices; 2 models × 28 matrices; 56 matrices in 2 models."""
    if len(per_model) == 1:
        return f"{per_model[0]} matrices"
    if len(set(per_model)) == 1:
        return f"{len(per_model)} models × {per_model[0]} matrices"
    return f"{sum(per_model)} matrices in {len(per_model)} models"


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
