"""Intruder dimensions along a fine-tuning run (the paper's Fig. 5, live): every saved checkpoint,
and the final output, scanned against the run's base, one line each in <run>/intruders.jsonl.

A line holds the counts at the scan's (k, ε) and, per matrix, the top TOP_VECTORS max|cos| values
(float32, exact, base64), so the curve re-reads at any k ≤ TOP_VECTORS and any ε without a new scan.
The file is rewritten through a temporary file, so a reader never sees half a line. Base
decompositions come from the shared cache: a run's checkpoints decompose the base only once.

Only the scan imports torch (through the engine); reading the file is cheap, for the TUI's polls.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from spectui import atomic
from spectui.defaults import DEFAULT_EPSILON, DEFAULT_K
from spectui.errors import InputError
from spectui.finetune.runs import LIVE, Run, State
from spectui.intruders import count_intruders
from spectui.validate import is_int, is_number, read_bytes

if TYPE_CHECKING:
    from spectui.cache import Cache
    from spectui.engine import Scan

INTRUDERS_FILE = "intruders.jsonl"
INTRUDERS_LIMIT = 256 << 20  # a line per checkpoint, ~80 KB for an 8B model's 224 matrices
POLL_S = 2.0
_WRITE_LOCK = threading.Lock()  # one process may scan a run from two workers at once


@dataclass(frozen=True)
class CheckpointIntruders:
    """One line of intruders.jsonl: counts at the scan's (k, ε), and what re-counts at others."""

    step: int
    k: int
    epsilon: float
    total_intruders: int
    per_matrix: dict[str, int]
    max_cos: dict[str, str]  # per matrix, top TOP_VECTORS in singular-value order, packed (_pack)
    errors: dict[str, str] = field(default_factory=dict)  # matrices not scanned, and why

    def total(self, k: int, epsilon: float) -> int:
        """Intruders summed over matrices at any k (up to TOP_VECTORS) and ε."""
        return sum(count_intruders(_unpack(packed), k, epsilon) for packed in self.max_cos.values())


def intruders_path(run: Run) -> Path:
    return run.path / INTRUDERS_FILE


def read_intruders(run: Run) -> list[CheckpointIntruders]:
    """The scanned checkpoints, by step; a damaged line is skipped (its checkpoint is rescanned).
    InputError when the file is not one to read (too large, not a regular file)."""
    path = intruders_path(run)
    if not os.path.lexists(path):
        return []
    lines = read_bytes(path, INTRUDERS_LIMIT).decode("utf-8", errors="replace").splitlines()
    points = {}
    for line in lines:
        point = _parsed(line)
        if point is not None:
            points.setdefault(point.step, point)
    return [points[step] for step in sorted(points)]


def _parsed(line: str) -> CheckpointIntruders | None:
    """One line, checked field by field; anything else is damage (None)."""
    try:
        fields = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(fields, dict) or set(fields) != {f.name for f in dataclasses.fields(CheckpointIntruders)}:
        return None
    ints = all(is_int(fields[name]) and fields[name] >= 0 for name in ("step", "k", "total_intruders"))
    tables = all(isinstance(fields[name], dict) and all(isinstance(key, str) for key in fields[name])
                 for name in ("per_matrix", "max_cos", "errors"))
    if not (ints and tables and is_number(fields["epsilon"])):
        return None
    try:
        packed = all(_unpack(value).size for value in fields["max_cos"].values())
    except (TypeError, ValueError):
        return None
    return CheckpointIntruders(**fields) if packed or not fields["max_cos"] else None


def scan_targets(run: Run) -> list[tuple[int, Path]]:
    """(step, model directory) of each checkpoint, and of the final output once the run is done."""
    targets = [(step, path / "model") for step, path in run.checkpoints()]
    if run.status().state is State.DONE and run.output_dir.is_dir() and (rows := run.metrics()):
        final_step = rows[-1]["step"]
        if final_step not in {step for step, _ in targets}:
            targets.append((final_step, run.output_dir))
    return targets


def pending(run: Run) -> list[tuple[int, Path]]:
    """Scan targets not yet in intruders.jsonl."""
    scanned = {point.step for point in read_intruders(run)}
    return [(step, path) for step, path in scan_targets(run) if step not in scanned]


def scan_new_checkpoints(run: Run, cache: Cache, stop: threading.Event | None = None,
                         device: str = "auto", workers: int | None = None, k: int = DEFAULT_K,
                         epsilon: float = DEFAULT_EPSILON) -> list[CheckpointIntruders]:
    """Scan the run's unscanned checkpoints, oldest first, appending a line for each; returns
    the new lines. Setting `stop` ends it early without writing a partial line.

    Raises InputError when the run's spec, base or a checkpoint cannot be read."""
    stop = stop or threading.Event()
    base = run.starting_model()  # a later stage of a sequence trains on the previous stage's model
    added = []
    for step, model_dir in pending(run):
        scan = _scan(base, model_dir, cache, stop, device, workers)
        if scan is None:
            break
        point = _point(step, scan, k, epsilon)
        _append(run, point)
        added.append(point)
    return added


def follow_runs(runs: list[Run], cache: Cache, stop: threading.Event,
                on_error: Callable[[Run, str], None], device: str = "auto",
                workers: int | None = None) -> None:
    """Scan the runs' checkpoints as they land, until every run has ended and is fully scanned
    (or `stop` is set). A run whose checkpoints cannot be opened is reported once and dropped."""
    following = list(runs)
    while following and not stop.is_set():
        for run in list(following):
            ended = run.status().state not in LIVE  # read first: a checkpoint may land meanwhile
            try:
                scan_new_checkpoints(run, cache, stop, device, workers)
            except InputError as error:
                on_error(run, str(error))
                ended = True
            if ended:
                following.remove(run)
        if following:
            stop.wait(POLL_S)


def _scan(base: str, model_dir: Path, cache: Cache, stop: threading.Event, device: str,
          workers: int | None) -> Scan | None:
    """A finished engine scan of one checkpoint against the base, or None if stopped."""
    from spectui.checkpoint.comparison import open_comparison
    from spectui.engine import Scan

    scan = Scan(open_comparison(base, [str(model_dir)]), cache, device=device,
                workers=workers).start()
    while not scan.wait(timeout=0.2):
        if stop.is_set():
            scan.cancel()
    return None if stop.is_set() else scan


def _point(step: int, scan: Scan, k: int, epsilon: float) -> CheckpointIntruders:
    results = {name: scan.results[(0, name)] for name in scan.names if (0, name) in scan.results}
    per_matrix = {name: result.intruders(k, epsilon) for name, result in results.items()}
    return CheckpointIntruders(
        step=step, k=k, epsilon=epsilon, total_intruders=sum(per_matrix.values()),
        per_matrix=per_matrix,
        max_cos={name: _pack(result.max_cos) for name, result in results.items()},
        errors={name: failure.message for name, failure in scan.errors.items()},
    )


def _append(run: Run, point: CheckpointIntruders) -> None:
    """Rewrite the file with one more line, unless another worker recorded this step first."""
    path = intruders_path(run)
    with _WRITE_LOCK:
        if any(existing.step == point.step for existing in read_intruders(run)):
            return
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        atomic.write_text(path, text + json.dumps(asdict(point)) + "\n")


def _pack(values) -> str:
    """Float32 values, exactly, as base64 of their little-endian bytes."""
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")


def _unpack(text: str) -> np.ndarray:
    data = base64.b64decode(text, validate=True)
    return np.frombuffer(data[: len(data) // 4 * 4], dtype="<f4")
