"""Run directories: create, launch detached, watch, cancel and resume fine-tuning runs.

    <root>/<name>/
        spec.json       the resolved RunSpec
        command.txt     every command line that started the training process, one per launch
        log.txt         the training process's stdout and stderr
        metrics.jsonl   one JSON object per log interval, written by the runner
        status          the state word; a failure message follows on the next lines
        pid             "PID START": process group leader and its start time (detects pid reuse)
        checkpoints/    step-N/ directories, each complete (written aside, then renamed)
        output/         the final model, present only once complete (unless the spec sets `out`)
        pissa-init/     PiSSA's starting adapter, needed to convert the output to the original base

Nothing here imports torch (except to count GPUs at launch), so the TUI can poll runs cheaply.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from spectui.atomic import write_text
from spectui.errors import InputError
from spectui.finetune.spec import RunSpec, load_spec, save_spec
from spectui.locations import runs_dir

RUNNER_MODULE = "spectui.finetune.runner"
SUPERVISOR_MODULE = "spectui.finetune.supervisor"
_STEP_DIR = re.compile(r"step-(\d+)")
_HAS_PROC = Path("/proc/self/stat").exists()
INTERRUPTED_MESSAGE = ("the training process stopped without recording a result; resume "
                       "continues from the last checkpoint")


class State(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"


LIVE = (State.QUEUED, State.RUNNING)


class RunError(InputError):
    """A run operation that cannot be done; the message says why, in one line."""


@dataclass(frozen=True)
class RunStatus:
    state: State
    message: str = ""


@dataclass(frozen=True)
class RunSummary:
    """What a runs list shows: state and the latest figures."""

    name: str
    state: State
    message: str
    step: int
    max_steps: int | None
    loss: float | None
    eval_loss: float | None
    eval_accuracy: float | None


class Run:
    """One run directory; every read goes to disk, so a poller always sees the latest state."""

    def __init__(self, path: str | Path):
        self.path = Path(path).absolute()  # the training process runs inside it

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def log_path(self) -> Path:
        return self.path / "log.txt"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def pissa_init_dir(self) -> Path:
        return self.path / "pissa-init"

    @property
    def output_dir(self) -> Path:
        out = self.spec().out
        return Path(out) if out else self.path / "output"

    def spec(self) -> RunSpec:
        return load_spec(self.path / "spec.json")

    def status(self) -> RunStatus:
        """The recorded state, except that a live state whose process is gone reads interrupted."""
        try:
            state, *message = (self.path / "status").read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return RunStatus(State.QUEUED)
        recorded = self._recorded_process()
        if State(state) in LIVE and recorded and not _alive(*recorded):
            return RunStatus(State.INTERRUPTED, INTERRUPTED_MESSAGE)
        return RunStatus(State(state), "\n".join(message))

    def set_status(self, state: State, message: str = "") -> None:
        write_text(self.path / "status", f"{state.value}\n{message}".rstrip() + "\n")

    def metrics(self, since_line: int = 0) -> list[dict[str, Any]]:
        """Complete metrics lines from `since_line` on (a line still being written is left out)."""
        try:
            text = self.metrics_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        complete = text.split("\n")[:-1]
        return [json.loads(line) for line in complete[since_line:]]

    def keep_metrics_until(self, step: int) -> None:
        """Drop metrics past `step`: a resumed run redoes those steps from its checkpoint."""
        kept = [row for row in self.metrics() if row["step"] <= step]
        write_text(self.metrics_path, "".join(json.dumps(row) + "\n" for row in kept))

    def log_tail(self, lines: int = 20) -> list[str]:
        """The last lines of log.txt, read from the end so that a long log costs little."""
        try:
            with self.log_path.open("rb") as stream:
                size = stream.seek(0, os.SEEK_END)
                block = min(size, 200 * lines + 4096)
                while True:
                    stream.seek(size - block)
                    data = stream.read()
                    if block == size or data.count(b"\n") > lines:
                        break
                    block = min(size, 2 * block)
        except FileNotFoundError:
            return []
        return data.decode("utf-8", errors="replace").splitlines()[-lines:]

    def log_since(self, offset: int) -> tuple[str, int]:
        """Log text written after byte `offset`, and the offset to pass next time."""
        try:
            with self.log_path.open("rb") as stream:
                stream.seek(offset)
                data = stream.read()
        except FileNotFoundError:
            return "", offset
        return data.decode("utf-8", errors="replace"), offset + len(data)

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / f"step-{step}"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints as (step, directory), oldest first."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = ((_STEP_DIR.fullmatch(path.name), path) for path in self.checkpoints_dir.iterdir())
        return sorted((int(match[1]), path) for match, path in found if match)

    def summary(self) -> RunSummary:
        status, rows = self.status(), self.metrics()
        last = rows[-1] if rows else {}
        evaluated = [row for row in rows if row.get("eval_loss") is not None]
        last_eval = evaluated[-1] if evaluated else {}
        return RunSummary(
            name=self.name,
            state=status.state,
            message=status.message,
            step=last.get("step", 0),
            max_steps=last["max_steps"] if last else self.spec().max_steps,
            loss=last.get("loss"),
            eval_loss=last_eval.get("eval_loss"),
            eval_accuracy=last_eval.get("eval_accuracy"),
        )

    def start(self) -> subprocess.Popen:
        """Start the training process in its own session, so that closing the terminal, the TUI
        or the SSH connection does not stop it; the caller may wait on the process or drop it."""
        spec = self.spec()
        command = launch_command(spec, self.path, visible_gpu_count(spec))
        env = _child_env(spec)
        (self.path / "pid").unlink(missing_ok=True)
        self.set_status(State.QUEUED)
        with (self.path / "command.txt").open("a", encoding="utf-8") as commands:
            commands.write(shlex.join(command) + "\n")
        with self.log_path.open("ab") as log:
            try:
                process = subprocess.Popen(
                    command, cwd=self.path, env=env, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )
            except OSError as error:  # never left queued with no process behind it
                message = f"could not start {command[0]}: {error.strerror or error}"
                self.set_status(State.FAILED, message)
                raise RunError(f"run {self.name}: {message}") from error
        (self.path / "pid").write_text(f"{process.pid} {_process_start(process.pid) or '-'}\n")
        return process

    def cancel(self) -> None:
        """Ask the run to stop: SIGTERM to its process group; the runner records `cancelled`."""
        pid = self._live_pid()
        if pid is None:
            raise RunError(f"run {self.name} is not running")
        os.killpg(pid, signal.SIGTERM)

    def resume(self) -> subprocess.Popen:
        """Start the run again; the runner continues from its last checkpoint."""
        state = self.status().state
        if state in LIVE:
            raise RunError(f"run {self.name} is still {state.value}")
        if state is State.DONE:
            raise RunError(f"run {self.name} is already done")
        return self.start()

    def _recorded_process(self) -> tuple[int, str] | None:
        try:
            pid, start = (self.path / "pid").read_text().split()
        except (FileNotFoundError, ValueError):
            return None
        return int(pid), start

    def _live_pid(self) -> int | None:
        """The run's process id if that very process (not a reuse of its pid) is alive."""
        recorded = self._recorded_process()
        return recorded[0] if recorded and _alive(*recorded) else None


def create_run(spec: RunSpec, root: str | Path | None = None) -> Run:
    """A new run directory holding the resolved spec, queued but not started."""
    parent = runs_dir(root)
    parent.mkdir(parents=True, exist_ok=True)
    path = _new_run_dir(parent, spec)
    run = Run(path)
    save_spec(replace(spec.resolved(), name=path.name), path / "spec.json")
    run.set_status(State.QUEUED)
    return run


def list_runs(root: str | Path | None = None) -> list[Run]:
    """Every run under the root, newest first."""
    parent = runs_dir(root)
    if not parent.is_dir():
        return []
    specs = [path / "spec.json" for path in parent.iterdir() if (path / "spec.json").is_file()]
    specs.sort(key=lambda spec: spec.stat().st_mtime, reverse=True)
    return [Run(spec.parent) for spec in specs]


def find_run(name: str, root: str | Path | None = None) -> Run:
    run = Run(runs_dir(root) / name)
    if not (run.path / "spec.json").is_file():
        raise RunError(f"no run named {name} in {runs_dir(root)}")
    return run


def launch_command(spec: RunSpec, run_dir: Path, gpus: int) -> list[str]:
    """The training process's command: `accelerate launch` (under a supervisor that records how
    it ended) when the spec names an accelerate config or several GPUs are visible, a plain
    `python -m` otherwise."""
    if spec.accelerate_config:
        options = ["--config_file", spec.accelerate_config]
    elif gpus > 1:
        options = ["--multi_gpu", "--num_processes", str(gpus)]
    else:
        return [sys.executable, "-m", RUNNER_MODULE, str(run_dir)]
    return [sys.executable, "-m", SUPERVISOR_MODULE, str(run_dir),
            sys.executable, "-m", "accelerate.commands.launch", *options, "--module", RUNNER_MODULE, str(run_dir)]


def visible_gpu_count(spec: RunSpec) -> int:
    """GPUs the run may spread over: all visible ones, unless the spec pins a device."""
    if spec.device not in ("auto", "cuda"):
        return 0
    import torch  # deferred: a second of import time, paid only when the spec allows GPUs

    return torch.cuda.device_count()


def _new_run_dir(parent: Path, spec: RunSpec) -> Path:
    """Create the run's directory: the spec's name, or a fresh name from method, rank and time."""
    if spec.name:
        try:
            (parent / spec.name).mkdir()
        except FileExistsError:
            raise RunError(f"a run named {spec.name} already exists in {parent}") from None
        return parent / spec.name
    stem = spec.method if spec.method == "full" else f"{spec.method}-r{spec.rank}"
    stem = f"{stem}-{datetime.now():%Y%m%d-%H%M%S}"
    for suffix in ["", *(f"-{n}" for n in range(2, 1000))]:
        try:
            (parent / f"{stem}{suffix}").mkdir()
        except FileExistsError:
            continue
        return parent / f"{stem}{suffix}"
    raise RunError(f"too many runs named {stem} in {parent}")


def _child_env(spec: RunSpec) -> dict[str, str]:
    """The training process's environment: unbuffered logs, this spectui importable, and a
    pinned GPU (cuda:N) made the only visible one."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    if spec.device.startswith("cuda:"):
        index = int(spec.device.split(":")[1])
        visible = env.get("CUDA_VISIBLE_DEVICES")
        if not visible:
            env["CUDA_VISIBLE_DEVICES"] = str(index)
        elif index < len(visible.split(",")):
            env["CUDA_VISIBLE_DEVICES"] = visible.split(",")[index]
        else:
            raise RunError(f"device {spec.device} is not among CUDA_VISIBLE_DEVICES={visible}")
    return env


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a live process, or None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, *fields = stat.rsplit(")", 1)[1].split()
    return None if state in ("Z", "X") else fields[18]  # field 22 of proc(5): starttime


def _alive(pid: int, start: str) -> bool:
    if _HAS_PROC:
        return _process_start(pid) == start
    try:  # without /proc (macOS), pid reuse cannot be told apart
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
