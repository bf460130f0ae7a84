"""A run's live view: status, progress with ETA, loss and intruder curves, and the log's tail.

Everything is read from the run directory, so the view works the same for a run launched here,
one re-attached after the TUI closed, and one that ended long ago. A thread worker polls only
what was appended (metrics lines after the last one read, log bytes after the last offset).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.widgets import Label, Log, ProgressBar, Static
from textual.worker import get_current_worker

from spectui.finetune.runs import LIVE, Run, RunStatus, State
from spectui.run_intruders import CheckpointIntruders, intruders_path, read_intruders, scan_targets
from spectui.tui.messages import RunStateChanged
from spectui.tui.widgets.run_plots import IntruderCurve, LossCurve
from spectui.tui.widgets.scan_status import duration

POLL_S = 0.5
LOG_LINES = 300
LOG_START_BYTES = 32_000  # a long finished log opens at its tail
STATE_STYLES = {State.QUEUED: "dim", State.RUNNING: "green", State.DONE: "bold green",
                State.FAILED: "bold red", State.INTERRUPTED: "yellow", State.CANCELLED: "yellow",
                State.UNKNOWN: "bold magenta"}


@dataclass(frozen=True)
class RunUpdate:
    """What the run's files hold now; `log` is only the text appended since the last update."""

    status: RunStatus
    rows: list[dict[str, Any]]
    log: str
    points: list[CheckpointIntruders]
    saved: int  # checkpoints (and final output) there are to scan
    problem: str = ""  # a damaged metrics line, told in one sentence


class RunFeed:
    """Reads a run incrementally: metrics from the last line read (all again after a resume
    rewrote the file), the log from the last offset, the intruders file only when it changed.
    A damaged metrics line is left out and told in the update's `problem`."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.rows: list[dict[str, Any]] = []
        self.points: list[CheckpointIntruders] = []
        self.problem = ""
        self._lines = 0  # metrics lines read
        self._metrics_file: tuple[int, int] | None = None
        self._intruders_file: tuple[int, int] | None = None
        self._log_offset: int | None = None
        self._last: tuple | None = None

    def poll(self) -> RunUpdate | None:
        """The run as it is now, or None when nothing changed since the last poll."""
        status = self.run.status()
        self._read_metrics()
        log = self._read_log()
        identity = _identity(intruders_path(self.run))
        if identity != self._intruders_file:
            self._intruders_file, self.points = identity, read_intruders(self.run)
        saved = len(scan_targets(self.run))
        summary = (status, len(self.rows), self.problem, self._metrics_file, self._intruders_file,
                   saved)
        if not log and summary == self._last:
            return None
        self._last = summary
        return RunUpdate(status, list(self.rows), log, list(self.points), saved, self.problem)

    def _read_metrics(self) -> None:
        identity = _identity(self.run.metrics_path)
        if identity == self._metrics_file:
            return
        same_file = identity and self._metrics_file and identity[0] == self._metrics_file[0]
        if not same_file:
            self.rows, self._lines, self.problem = [], 0, ""
        metrics = self.run.read_metrics(self._lines)
        self.rows = self.rows + metrics.rows
        self._lines, self.problem = metrics.lines, self.problem or metrics.problem
        self._metrics_file = identity

    def _read_log(self) -> str:
        if self._log_offset is not None:
            text, self._log_offset = self.run.log_since(self._log_offset)
            return text
        size = (_identity(self.run.log_path) or (0, 0))[1]
        start = max(0, size - LOG_START_BYTES)
        text, self._log_offset = self.run.log_since(start)
        return text.split("\n", 1)[-1] if start else text  # drop the cut first line


def _identity(path: Path) -> tuple[int, int] | None:
    """(inode, size): an append grows the size, an atomic rewrite changes the inode."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size


class RunView(Vertical):
    """Follows one run until it is closed; posts RunStateChanged when the run's state changes."""

    def __init__(self, run: Run, **kwargs) -> None:
        super().__init__(**kwargs)
        self.run = run
        self.spec = run.spec()
        self.latest: RunUpdate | None = None

    def compose(self) -> ComposeResult:
        yield Static(f"[b]{escape(self.run.name)}[/]", id="run-status")
        with Horizontal(id="run-progress"):
            yield ProgressBar(show_eta=False, id="run-bar")
            yield Label("", id="run-progress-label")
        with Horizontal(id="run-plots"):
            yield LossCurve(id="loss-curve")
            yield IntruderCurve(id="intruder-curve")
        yield Log(max_lines=LOG_LINES, id="run-log")

    def on_mount(self) -> None:
        self.follow()

    @work(thread=True, group="run-poll", exclusive=True, exit_on_error=False)
    def follow(self) -> None:
        """Polls the run's files off the UI thread until the view goes away."""
        worker, feed = get_current_worker(), RunFeed(self.run)
        while not worker.is_cancelled:
            update = feed.poll()
            if update is not None:
                self.app.call_from_thread(self.show, update)
            worker.cancelled_event.wait(POLL_S)

    def show(self, update: RunUpdate) -> None:
        previous, self.latest = self.latest, update
        if previous is None or (previous.status, previous.problem) != (update.status, update.problem):
            self._show_status(update.status, update.problem)
        if previous is None or previous.status != update.status:
            self.post_message(RunStateChanged(update.status))
        self._show_progress(update)
        if previous is None or previous.rows != update.rows:
            self.query_one(LossCurve).show(update.rows)
        self.show_intruders()
        if update.log:
            self.query_one(Log).write(update.log)

    def show_intruders(self) -> None:
        """Re-read at the app's (k, ε): called on each update and when the thresholds change."""
        if (latest := self.latest) is not None:
            self.query_one(IntruderCurve).show(latest.points, latest.saved, self.app.k, self.app.epsilon)

    def _show_status(self, status: RunStatus, problem: str = "") -> None:
        spec = self.spec
        method = spec.method if spec.method == "full" else (
            f"{spec.method} r={spec.rank} α={spec.lora_alpha:g}")
        text = (f"[b]{escape(self.run.name)}[/]  [{STATE_STYLES[status.state]}]{status.state.value}[/]  "
                f"{method} · lr {spec.learning_rate:g} · "
                f"{escape(Path(spec.base).name)} on {escape(Path(spec.data).name)}")
        if status.message:
            text += f"\n[red]{escape(status.message)}[/]"
        if problem:
            text += f"\n[magenta]{escape(problem)}[/]"
        self.query_one("#run-status", Static).update(text)

    def _show_progress(self, update: RunUpdate) -> None:
        last = update.rows[-1] if update.rows else {}
        step, total = last.get("step", 0), last.get("max_steps") or self.spec.max_steps
        self.query_one(ProgressBar).update(total=total, progress=step)
        parts = [f"step {step}/{total or '?'}"]
        if (elapsed := last.get("elapsed_s")) is not None:
            parts.append(f"{duration(elapsed)} elapsed")
            if update.status.state in LIVE and step and total:
                parts.append(f"ETA {duration(elapsed / step * (total - step))}")
        self.query_one("#run-progress-label", Label).update(" · ".join(parts))


