"""A run's live view: status, progress with ETA, loss and intruder curves, and the log's tail.

Everything is read from the run directory, so the view works the same for a run launched here,
one re-attached after the TUI closed, and one that ended long ago. A thread worker polls only
what was appended (metrics lines after the last one read, log bytes after the last offset).

It says what is true at each moment: "starting" while the model loads (no step yet), the steps of
the current attempt only (a run started again from step 0 drops the figures of the steps it
redoes), a finished run's eval loss, intruders and output folder. The log wraps, and the warnings
that libraries print (FutureWarning and the like, with their source line) are kept out of it:
counted, and left in log.txt.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.widgets import Label, ProgressBar, RichLog, Static
from textual.worker import get_current_worker

from spectui.defaults import TOP_VECTORS
from spectui.finetune.runs import LIVE, Run, RunStatus, State
from spectui.run_intruders import CheckpointIntruders, intruders_path, read_intruders, scan_targets
from spectui.tui.messages import RunStateChanged
from spectui.tui.widgets.formats import loss, share
from spectui.tui.widgets.run_plots import IntruderCurve, LossCurve
from spectui.tui.widgets.scan_status import duration

POLL_S = 0.5
LOG_LINES = 300
RESUME_FILE = "state.pt"  # what a checkpoint needs to be resumed from (spectui.finetune.checkpoints.STATE_FILE)
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
    launched: float | None = None  # when its process was last started (the pid file's time)


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
        self._restart: int | None = None  # a resume from this step: later rows are redone
        self._lock = threading.Lock()

    def resumed_from(self, step: int) -> None:
        """The run was started again from `step` (0: from the beginning): the steps after it are
        redone, so their figures are dropped now, before the new process writes any. Thread-safe."""
        with self._lock:
            self._restart = step

    def poll(self) -> RunUpdate | None:
        """The run as it is now, or None when nothing changed since the last poll."""
        status = self.run.status()
        self._read_metrics()
        log = self._read_log()
        identity = _identity(intruders_path(self.run))
        if identity != self._intruders_file:
            self._intruders_file, self.points = identity, read_intruders(self.run)
        with self._lock:
            restart, self._restart = self._restart, None
        if restart is not None:
            self.rows = [row for row in self.rows if row["step"] <= restart]
        saved = len(scan_targets(self.run))
        launched = _mtime(self.run.path / "pid")
        summary = (status, len(self.rows), self.rows[-1]["step"] if self.rows else None, self.problem,
                   self._metrics_file, self._intruders_file, saved, launched)
        if not log and summary == self._last:
            return None
        self._last = summary
        return RunUpdate(status, list(self.rows), log, list(self.points), saved, self.problem, launched)

    def _read_metrics(self) -> None:
        identity = _identity(self.run.metrics_path)
        if identity == self._metrics_file:
            return
        same_file = identity and self._metrics_file and identity[0] == self._metrics_file[0]
        if not same_file:
            self.rows, self._lines, self.problem = [], 0, ""
        metrics = self.run.read_metrics(self._lines)
        self.rows = latest_attempt(self.rows + metrics.rows)
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


def latest_attempt(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the run's current attempt: a process started again from an earlier step (a
    resume from a checkpoint, or from 0 without one) writes steps already there, which replace
    those and everything after them."""
    kept: list[dict[str, Any]] = []
    for row in rows:
        while kept and kept[-1]["step"] >= row["step"]:
            kept.pop()
        kept.append(row)
    return kept


def resume_step(run: Run) -> int:
    """The step a resume continues from: the newest checkpoint that can be resumed, else 0."""
    resumable = [step for step, path in run.checkpoints() if (path / RESUME_FILE).is_file()]
    return resumable[-1] if resumable else 0


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


# A Python warning as printed: "path.py:12: FutureWarning: text", then its indented source line.
_WARNING = re.compile(r"^\S+\.py:\d+: \w*Warning: ")
_SPECTUI = str(Path(__file__).resolve().parents[2])


class LogFilter:
    """Takes the log as it grows and gives back what to show: whole lines, library warnings (and
    their source lines) left out and counted. A partial last line waits for the rest."""

    def __init__(self) -> None:
        self.hidden = 0
        self._partial = ""
        self._in_warning = False

    def feed(self, text: str) -> list[str]:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        shown = []
        for line in lines:
            if _WARNING.match(line) and not line.startswith(_SPECTUI):
                self.hidden += 1
                self._in_warning = True
                continue
            if self._in_warning and line.startswith((" ", "\t")):
                continue  # the warning's source line
            self._in_warning = False
            shown.append(line)
        return shown


class RunLog(RichLog):
    """The log's tail, wrapped to the pane; `text` keeps the lines shown (for tests and copy)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(max_lines=LOG_LINES, wrap=True, markup=False, min_width=20, **kwargs)
        self.text: list[str] = []

    def add(self, lines: list[str]) -> None:
        for line in lines:
            self.write(Text(line))
        self.text = (self.text + lines)[-LOG_LINES:]


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
        self.feed = RunFeed(run)
        self.log_filter = LogFilter()

    def compose(self) -> ComposeResult:
        yield Static(f"[b]{escape(self.run.name)}[/]", id="run-status")
        with Horizontal(id="run-progress"):
            yield ProgressBar(show_eta=False, id="run-bar")
            yield Label("", id="run-progress-label")
        with Horizontal(id="run-plots"):
            yield LossCurve(id="loss-curve")
            yield IntruderCurve(id="intruder-curve")
        yield Static("", id="run-outcome")
        yield RunLog(id="run-log")

    def on_mount(self) -> None:
        self.follow()

    @work(thread=True, group="run-poll", exclusive=True, exit_on_error=False)
    def follow(self) -> None:
        """Polls the run's files off the UI thread until the view goes away."""
        worker, feed = get_current_worker(), self.feed
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
        if update.log:
            self.query_one(RunLog).add(self.log_filter.feed(update.log))
        self._show_progress(update)
        if previous is None or previous.rows != update.rows:
            self.query_one(LossCurve).show(update.rows)
        self.show_intruders()

    def resumed_from(self, step: int) -> None:
        """Called when the screen resumes the run: the steps after `step` will be redone."""
        self.feed.resumed_from(step)

    def show_intruders(self) -> None:
        """Re-read at the app's (k, ε): called on each update and when the thresholds change."""
        if (latest := self.latest) is not None:
            self.query_one(IntruderCurve).show(latest.points, latest.saved, self.app.k, self.app.epsilon)
            self._show_outcome(latest)

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
        if update.status.state in LIVE and not update.rows:
            since = "" if update.launched is None else f" ({duration(max(0.0, time.time() - update.launched))})"
            text = f"starting{since}: loading the model and data, then the first steps"
            if self.log_filter.hidden:
                text += f" · {self.log_filter.hidden} library warning(s) kept in log.txt"
            self.query_one("#run-progress-label", Label).update(text)
            return
        parts = [f"step {step}/{total or '?'}"]
        if (elapsed := last.get("elapsed_s")) is not None:
            parts.append(f"{duration(elapsed)} elapsed")
            if update.status.state in LIVE and step and total:
                parts.append(f"ETA {duration(elapsed / step * (total - step))}")
        if self.log_filter.hidden:
            parts.append(f"{self.log_filter.hidden} library warning(s) kept in log.txt")
        self.query_one("#run-progress-label", Label).update(" · ".join(parts))

    def _show_outcome(self, update: RunUpdate) -> None:
        """A finished run in one line: its last evaluation, intruders, and where its output is."""
        outcome = self.query_one("#run-outcome", Static)
        outcome.display = update.status.state is State.DONE
        if not outcome.display:
            return
        evaluated = [row for row in update.rows if row.get("eval_loss") is not None]
        parts = []
        if evaluated:
            last = evaluated[-1]
            accuracy = f", accuracy {share(last['eval_accuracy'])}" if last.get("eval_accuracy") is not None else ""
            parts.append(f"eval loss {loss(last['eval_loss'])}{accuracy} at step {last['step']}")
        if update.points:
            point, k, eps = update.points[-1], min(self.app.k, TOP_VECTORS), self.app.epsilon
            parts.append(f"{point.total(k, eps)} intruders at step {point.step} (k={k}, ε={eps:.2f})")
        parts.append(f"output {self.run.output_dir} (o opens it, a adds it)")
        outcome.update(Text.assemble(("done: ", "bold green"), " · ".join(parts)))
