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
        start/          with `start_from` naming an adapter: that adapter merged into its base, the
                        model this run trains from (a full model named there is trained from as is)
        merged/         such a run's adapter output merged into start/: the stage's whole model,
                        written when a study compares it with the original base

Nothing here imports torch (except to count GPUs at launch), so the TUI can poll runs cheaply.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from spectui.atomic import write_text
from spectui.errors import InputError, printable
from spectui.finetune.spec import RunSpec, SpecError, load_spec, name_error, save_spec
from spectui.locations import runs_dir
from spectui.validate import open_regular, read_bytes

RUNNER_MODULE = "spectui.finetune.runner"
SUPERVISOR_MODULE = "spectui.finetune.supervisor"
_STEP_DIR = re.compile(r"step-(\d+)")
_HAS_PROC = Path("/proc/self/stat").exists()
INTERRUPTED_MESSAGE = ("the training process stopped without recording a result; resume "
                       "continues from the last checkpoint")

# What a run's small files may hold. They are read every second by the TUI and may have been
# written by anyone: each read is bounded, never blocks (a FIFO is refused, not opened for a
# writer), and is checked against the shape the runner writes before anything uses it.
STATUS_LIMIT = 64 * 1024
PID_LIMIT = 256
METRICS_LIMIT = 64 * 1024 * 1024
_PID_LINE = re.compile(r"([1-9]\d{0,9}) (\d{1,20}|-)")
_PID_MAX = 2**31 - 1
_STEP_MAX = 10**15
ADAPTER_CONFIG = "adapter_config.json"  # what makes a directory a PEFT adapter
CHAIN_LIMIT = 1000  # runs started one from another's output: far more than any sequence
_METRIC_NUMBERS = ("epoch", "eval_loss", "eval_accuracy", "lr", "grad_norm", "tokens_per_s",
                   "elapsed_s")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


class State(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"  # the status or pid file cannot be read; the message says why


LIVE = (State.QUEUED, State.RUNNING)


class RunError(InputError):
    """A run operation that cannot be done; the message says why, in one line."""


@dataclass(frozen=True)
class RunStatus:
    state: State
    message: str = ""


@dataclass(frozen=True)
class RunSummary:
    """What a runs list shows: state and the latest figures, and what is wrong with the run's
    files (`problem`), so that a damaged run is listed like the others."""

    name: str
    state: State
    message: str
    step: int
    max_steps: int | None
    loss: float | None
    eval_loss: float | None
    eval_accuracy: float | None
    problem: str = ""

    @property
    def note(self) -> str:
        """One line: the status message's first line, then the problems of the run's files."""
        first = self.message.splitlines()[0] if self.message.strip() else ""
        return "; ".join(part for part in (first, self.problem) if part)


@dataclass(frozen=True)
class Metrics:
    """The valid metrics lines from some line on; a damaged line is left out and told once."""

    rows: list[dict[str, Any]]
    lines: int  # complete lines in the file: where the next incremental read starts
    problem: str = ""  # the first damaged line, in one sentence naming the file


class ProcessDir:
    """A directory whose work is done by one detached process, which records its state there:
    `status` (the state word, a message on the next lines), `pid` ("PID START") and `log.txt`.
    A run is one; so is a study (spectui.finetune.study). Every read goes to disk, so a poller
    always sees the latest state."""

    kind = "run"  # how messages name it
    interrupted_message = INTERRUPTED_MESSAGE

    def __init__(self, path: str | Path):
        self.path = Path(path).absolute()  # the process runs inside it

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def log_path(self) -> Path:
        return self.path / "log.txt"

    def status(self) -> RunStatus:
        """The recorded state, except that a live state whose process is gone reads interrupted.
        Never raises: a status or pid file that cannot be read makes the state unknown, and so
        does what `_check_live` finds wrong with a live one; the message says which file and why."""
        try:
            status = self._recorded_status()
            if status.state in LIVE:
                recorded = self._recorded_process()
                if recorded and not _alive(*recorded):
                    return RunStatus(State.INTERRUPTED, self.interrupted_message)
                self._check_live()
        except InputError as error:
            return RunStatus(State.UNKNOWN, printable(str(error)))
        return status

    def _check_live(self) -> None:
        """InputError when what following a live process needs cannot be read."""

    def set_status(self, state: State, message: str = "") -> None:
        write_text(self.path / "status", f"{state.value}\n{message}".rstrip() + "\n")

    def log_tail(self, lines: int = 20) -> list[str]:
        """The last lines of log.txt, read from the end so that a long log costs little."""
        try:
            with _open_read(self.log_path) as stream:
                size = stream.seek(0, os.SEEK_END)
                block = min(size, 200 * lines + 4096)
                while True:
                    stream.seek(size - block)
                    data = stream.read()
                    if block == size or data.count(b"\n") > lines:
                        break
                    block = min(size, 2 * block)
        except (FileNotFoundError, RunError):
            return []
        return data.decode("utf-8", errors="replace").splitlines()[-lines:]

    def log_since(self, offset: int) -> tuple[str, int]:
        """Log text written after byte `offset`, and the offset to pass next time."""
        try:
            with _open_read(self.log_path) as stream:
                stream.seek(offset)
                data = stream.read()
        except (FileNotFoundError, RunError):
            return "", offset
        return data.decode("utf-8", errors="replace"), offset + len(data)

    def cancel(self) -> None:
        """Ask the process to stop: SIGTERM to its process group; it records `cancelled`."""
        pid = self._live_pid()
        if pid is None:
            raise RunError(f"{self.kind} {self.name} is not running")
        if not _launched_for(pid, self.path):
            raise RunError(f"{self.path / 'pid'}: names process {pid}, which was not started for this "
                           f"{self.kind}; not stopping it")
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            raise RunError(f"{self.kind} {self.name} is not running") from None
        except PermissionError:
            raise RunError(f"{self.kind} {self.name}: not allowed to stop its process {pid}") from None

    def _launch(self, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        """Start `command` in the directory in its own session, so that closing the terminal, the
        TUI or the SSH connection does not stop it: its output to log.txt, the command line to
        command.txt, its pid to `pid`. The caller may wait on the process or drop it."""
        log = _open_append(self.log_path)  # first: a directory whose files cannot be written stays as it was
        with log:
            try:
                with _open_append(self.path / "command.txt") as commands:
                    commands.write((shlex.join(command) + "\n").encode())
                (self.path / "pid").unlink(missing_ok=True)
                self.set_status(State.QUEUED)
            except OSError as error:
                raise RunError(f"{self.kind} {self.name}: cannot write its files in {self.path} "
                               f"({error.strerror or error})") from None
            try:
                process = subprocess.Popen(
                    command, cwd=self.path, env=env, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )
            except OSError as error:  # never left queued with no process behind it
                message = f"could not start {command[0]}: {error.strerror or error}"
                self.set_status(State.FAILED, message)
                raise RunError(f"{self.kind} {self.name}: {message}") from error
        try:  # atomically: a poller never reads half a pid file
            write_text(self.path / "pid", f"{process.pid} {_process_start(process.pid) or '-'}\n")
        except OSError as error:  # unrecorded, it could be neither watched nor cancelled
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            with contextlib.suppress(OSError):
                self.set_status(State.FAILED, "its process could not be recorded")
            raise RunError(f"{self.kind} {self.name}: cannot record its process in {self.path} "
                           f"({error.strerror or error})") from None
        return process

    def _recorded_status(self) -> RunStatus:
        """The status file: a state word, and a message on the next lines (none: queued)."""
        path = self.path / "status"
        data = _read_file(path, STATUS_LIMIT)
        if data is None:
            return RunStatus(State.QUEUED)
        word, _, message = data.decode("utf-8", errors="replace").partition("\n")
        try:
            state = State(word.strip())
        except ValueError:
            raise RunError(f"{path}: {printable(word[:40], keep='')!r} is not a run state "
                           f"(one of {', '.join(_RECORDED)})") from None
        if state is State.UNKNOWN:
            raise RunError(f"{path}: `unknown` is not a state a run records")
        return RunStatus(state, printable(message.rstrip("\n")))

    def _recorded_process(self) -> tuple[int, str] | None:
        """The pid file: "PID START" (none: no process started yet); RunError if it is anything
        else, since then whether the run's process lives cannot be told."""
        path = self.path / "pid"
        data = _read_file(path, PID_LIMIT)
        if data is None:
            return None
        match = _PID_LINE.fullmatch(data.decode("ascii", errors="replace").strip())
        if not match or int(match[1]) > _PID_MAX:
            raise RunError(f"{path}: not a process id and start time, so whether the {self.kind} is "
                           "still going cannot be told")
        return int(match[1]), match[2]

    def _live_pid(self) -> int | None:
        """The process id if that very process (not a reuse of its pid) is alive."""
        recorded = self._recorded_process()
        return recorded[0] if recorded and _alive(*recorded) else None


class Run(ProcessDir):
    """One run directory; every read goes to disk, so a poller always sees the latest state."""

    @property
    def start_dir(self) -> Path:
        """With `start_from` naming an adapter: the model training starts from, that adapter
        merged into its own base (written by the runner before training)."""
        return self.path / "start"

    @property
    def merged_dir(self) -> Path:
        """An adapter run that started from another model: its output merged into its starting
        model, the model to compare with the original base (written when asked for)."""
        return self.path / "merged"

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
        """The saved spec, its values checked (not the files it names); SpecError naming the file."""
        path = self.path / "spec.json"
        spec = load_spec(path)
        problems = spec.errors(on_disk=False)
        if problems:
            raise SpecError(f"{path}: {'; '.join(problems.values())}")
        return spec

    def status(self) -> RunStatus:
        """The recorded state, except that a live state whose process is gone reads interrupted.
        Never raises: a status or pid file that cannot be read makes the state unknown, and so
        does a spec.json that cannot be for a live run (a live run is followed: re-attached and
        its checkpoints scanned against its spec's base); the message says which file and why."""
        return super().status()

    def _check_live(self) -> None:
        self.spec()

    def previous_model(self, _seen: frozenset[Path] = frozenset()) -> tuple[Path, str] | None:
        """With `start_from`: the model this run continues from, and the base that model applies
        to when it is an adapter (a run's output applies to that run's own starting model; an
        adapter directory given as a path, to this run's base). None without `start_from`.
        RunError when the run named there is not done, its output is gone, or the runs before
        it lead back to it."""
        spec = self.spec()
        if not spec.start_from:
            return None
        source = Path(spec.start_from)
        if not (source / "spec.json").is_file():
            return source, spec.base
        previous = Run(source)
        if previous.path in _seen or len(_seen) > CHAIN_LIMIT:
            raise RunError(f"run {self.name}: the runs it starts from lead back to it")
        status = previous.status()
        if status.state is not State.DONE:
            raise RunError(f"run {self.name} starts from run {previous.name}, which is "
                           f"{status.state.value}, not done")
        if not previous.output_dir.is_dir():
            raise RunError(f"run {self.name} starts from run {previous.name}, whose output "
                           f"{previous.output_dir} is gone")
        return previous.output_dir, previous.starting_model(_seen | {self.path})

    def starting_model(self, _seen: frozenset[Path] = frozenset()) -> str:
        """The model training starts from: the spec's base, or with `start_from` the previous
        model: a full model as it is, an adapter merged into its base first (`start_dir`)."""
        previous = self.previous_model(_seen)
        if previous is None:
            return self.spec().base
        model, _ = previous
        return str(self.start_dir) if is_adapter_dir(model) else str(model)

    def metrics(self, since_line: int = 0) -> list[dict[str, Any]]:
        """Valid complete metrics lines from `since_line` on (a line still being written, and a
        damaged one, are left out)."""
        return self.read_metrics(since_line).rows

    def read_metrics(self, since_line: int = 0) -> Metrics:
        """Complete metrics lines from `since_line` on, each checked against what the runner
        writes; a damaged line is left out, and the first one is told in `problem`."""
        try:
            data = _read_file(self.metrics_path, METRICS_LIMIT)
        except RunError as error:
            return Metrics([], since_line, str(error))
        if data is None:
            return Metrics([], 0)
        complete = data.decode("utf-8", errors="replace").split("\n")[:-1]
        rows, problem = [], ""
        for number, line in enumerate(complete[since_line:], start=since_line + 1):
            if not line.strip():
                continue
            row, wrong = _metrics_row(line)
            if row is not None:
                rows.append(row)
            elif not problem:
                problem = f"{self.metrics_path}: line {number} {wrong}"
        return Metrics(rows, len(complete), problem)

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append one metrics line (the runner's only way of writing them)."""
        with _open_append(self.metrics_path) as stream:
            stream.write((json.dumps(row) + "\n").encode())

    def keep_metrics_until(self, step: int) -> None:
        """Drop metrics past `step` (a resumed run redoes those steps from its checkpoint), and
        damaged lines with them."""
        kept = [row for row in self.metrics() if row["step"] <= step]
        write_text(self.metrics_path, "".join(json.dumps(row) + "\n" for row in kept))

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / f"step-{step}"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints as (step, directory), oldest first."""
        try:
            paths = list(self.checkpoints_dir.iterdir())
        except OSError:  # none yet, or not a directory one can list
            return []
        found = ((_STEP_DIR.fullmatch(path.name), path) for path in paths)
        return sorted((int(match[1]), path) for match, path in found if match)

    def summary(self) -> RunSummary:
        """State and latest figures; never raises: what is wrong with the run's files becomes
        its `problem` (and an unreadable status its state `unknown`)."""
        status, metrics = self.status(), self.read_metrics()
        problems = [metrics.problem]
        try:
            planned = self.spec().max_steps
        except SpecError as error:  # said once: an unknown state's message may say it already
            planned = None
            if printable(str(error)) not in status.message:
                problems.insert(0, str(error))
        rows = metrics.rows
        last = rows[-1] if rows else {}
        evaluated = [row for row in rows if row.get("eval_loss") is not None]
        last_eval = evaluated[-1] if evaluated else {}
        return RunSummary(
            name=printable(self.name, keep=""),
            state=status.state,
            message=status.message,
            step=last.get("step", 0),
            max_steps=last.get("max_steps") or planned,
            loss=last.get("loss"),
            eval_loss=last_eval.get("eval_loss"),
            eval_accuracy=last_eval.get("eval_accuracy"),
            problem=printable("; ".join(problem for problem in problems if problem), keep=""),
        )

    def start(self) -> subprocess.Popen:
        """Start the training process in its own session, so that closing the terminal, the TUI
        or the SSH connection does not stop it; the caller may wait on the process or drop it."""
        spec = self.spec()
        return self._launch(launch_command(spec, self.path, visible_gpu_count(spec)), _child_env(spec))

    def resume(self) -> subprocess.Popen:
        """Start the run again; the runner continues from its last checkpoint."""
        status = self.status()
        if status.state in LIVE:
            raise RunError(f"run {self.name} is still {status.state.value}")
        if status.state is State.DONE:
            raise RunError(f"run {self.name} is already done")
        if status.state is State.UNKNOWN:
            raise RunError(f"run {self.name} cannot be resumed: {status.message}")
        return self.start()


_RECORDED = [state.value for state in State if state is not State.UNKNOWN]


def check_run_name(name: str) -> None:
    """RunError unless `name` is a plain directory name (the one rule, spec.name_error): what
    keeps every run, and the process started in it, inside the runs directory."""
    problem = name_error(name)
    if problem:
        shown = printable(name if len(name) <= 40 else name[:39] + "…", keep="")
        raise RunError(f"run {shown!r}: {problem.replace('name must', 'a run name must', 1)}")


def checked_runs_dir(root: str | Path | None = None, create: bool = False) -> Path:
    """The runs directory (`runs_dir(root)`), or a RunError saying in one sentence why it cannot
    be one: a file, or (with `create`) a directory that cannot be made or written in. An absent
    directory is fine when only reading: it holds no runs."""
    parent = runs_dir(root)
    try:
        mode = parent.stat().st_mode
    except FileNotFoundError:
        if not create:
            return parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunError(f"{parent}: cannot create the runs directory "
                           f"({error.strerror or error})") from None
        mode = parent.stat().st_mode
    except OSError as error:
        raise RunError(f"{parent}: cannot use it as the runs directory "
                       f"({error.strerror or error})") from None
    if not stat.S_ISDIR(mode):
        raise RunError(f"{parent}: the runs directory is a file, not a directory")
    if create and not os.access(parent, os.W_OK | os.X_OK):
        raise RunError(f"{parent}: the runs directory is read-only")
    return parent


def create_run(spec: RunSpec, root: str | Path | None = None) -> Run:
    """A new run directory holding the resolved spec, queued but not started (`start_from` made
    the absolute directory it names: `resolve_start`)."""
    if spec.name:
        check_run_name(spec.name)
    parent = checked_runs_dir(root, create=True)
    start_from = resolve_start(spec, parent)
    path = _new_run_dir(parent, spec)
    run = Run(path)
    try:
        save_spec(replace(spec.resolved(), name=path.name, start_from=start_from), path / "spec.json")
        run.set_status(State.QUEUED)
    except OSError as error:
        shutil.rmtree(path, ignore_errors=True)
        raise RunError(f"{path}: cannot write the run's files ({error.strerror or error})") from None
    return run


def resolve_start(spec: RunSpec, root: str | Path | None = None) -> str | None:
    """The spec's `start_from` as an absolute directory: a run of the runs directory when it is a
    plain name one is called (the previous stage of a sequence), else a model or adapter
    directory, or a run directory given by its path. RunError when it names neither, or a run
    trained from another base (its intruders are counted against this spec's base)."""
    start = spec.start_from
    if not start:
        return None
    parent = checked_runs_dir(root)
    if name_error(start) is None and (parent / start / "spec.json").is_file():
        path = find_run(start, parent).path
    else:
        path = Path(start).expanduser()
        if not path.is_dir():
            raise RunError(f"start_from {start}: neither a run in {parent} nor a model directory")
        path = path.resolve()
    if (path / "spec.json").is_file():
        try:
            previous_base = Run(path).spec().base
        except SpecError as error:
            raise RunError(f"start_from {start}: {error}") from None
        if _same_model(previous_base) != _same_model(spec.base):
            raise RunError(f"start_from {start}: that run was trained from base {previous_base}, "
                           f"not {spec.base}")
    return str(path)


def _same_model(base: str) -> str:
    """A base as compared between runs: a local directory resolved, a hub id as written."""
    path = Path(base).expanduser()
    return str(path.resolve()) if path.exists() else base


def list_runs(root: str | Path | None = None, strict: bool = False) -> list[Run]:
    """Every run under the root, newest first: each directory there with a spec.json, whatever
    state its files are in (a link out of the root is not one of its runs). An absent root has
    no runs; a root that is not a directory, or cannot be listed, raises RunError when `strict`
    and has no runs otherwise (pollers that must not stop; `checked_runs_dir` says why)."""
    try:
        parent = checked_runs_dir(root)
        entries = list(os.scandir(parent)) if parent.exists() else []
    except RunError:
        if strict:
            raise
        return []
    except OSError as error:
        if strict:
            raise RunError(f"{runs_dir(root)}: cannot list the runs directory "
                           f"({error.strerror or error})") from None
        return []
    found = []
    for entry in entries:
        path = Path(entry.path)
        try:
            info = (path / "spec.json").stat()
            if not stat.S_ISREG(info.st_mode) or (entry.is_symlink() and not _inside(parent, path)):
                continue
        except OSError:  # not a directory, or one that cannot be looked into
            continue
        found.append((info.st_mtime, Run(path)))
    found.sort(key=lambda item: item[0], reverse=True)
    return [run for _, run in found]


def find_run(name: str, root: str | Path | None = None) -> Run:
    """The run called `name` in the runs directory; RunError for a name that is not a plain
    directory name, a run that is not there, or a link out of the runs directory."""
    check_run_name(name)
    parent = checked_runs_dir(root)
    run = Run(parent / name)
    try:
        is_run = stat.S_ISREG((run.path / "spec.json").stat().st_mode)
    except OSError:
        is_run = False
    if not is_run:
        raise RunError(f"no run named {name} in {parent}")
    if not _inside(parent, run.path):
        raise RunError(f"run {name} is a link out of {parent}, not a run of it")
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
    if spec.name:  # checked by create_run, before anything was made
        try:
            (parent / spec.name).mkdir()
        except FileExistsError:
            raise RunError(f"a run named {spec.name} already exists in {parent}") from None
        except OSError as error:
            raise RunError(f"{parent}: cannot create the run's directory "
                           f"({error.strerror or error})") from None
        return parent / spec.name
    stem = spec.method if spec.method == "full" else f"{spec.method}-r{spec.rank}"
    stem = f"{stem}-{datetime.now():%Y%m%d-%H%M%S}"
    check_run_name(stem)
    for suffix in ["", *(f"-{n}" for n in range(2, 1000))]:
        try:
            (parent / f"{stem}{suffix}").mkdir()
        except FileExistsError:
            continue
        except OSError as error:
            raise RunError(f"{parent}: cannot create the run's directory "
                           f"({error.strerror or error})") from None
        return parent / f"{stem}{suffix}"
    raise RunError(f"too many runs named {stem} in {parent}")


def is_adapter_dir(path: str | Path) -> bool:
    """Whether a model directory holds a PEFT adapter (else it is a full model)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def _inside(parent: Path, path: Path) -> bool:
    """Whether `path`, links resolved, is an entry of `parent`, links resolved."""
    return path.resolve().parent == parent.resolve()


def _run_error(path: Path, problem: str) -> RunError:
    return RunError(f"{path}: {problem}")


def _read_file(path: Path, limit: int) -> bytes | None:
    """A small file's bytes (None when there is none), or RunError naming it: not a regular file,
    unreadable, or over `limit`."""
    if not os.path.lexists(path):
        return None
    return read_bytes(path, limit, _run_error)


def _open_read(path: Path) -> IO[bytes]:
    """A regular file opened for reading without blocking on a FIFO (FileNotFoundError when
    there is none; RunError for anything else there)."""
    if not os.path.lexists(path):
        raise FileNotFoundError(path)
    return open_regular(path, _run_error)


def _open_append(path: Path) -> IO[bytes]:
    """A run file opened for appending, never through a link or into a FIFO (a run directory may
    hold anything): RunError naming it otherwise."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as error:
        reason = "is not a regular file (a link)" if error.errno == errno.ELOOP else \
            f"cannot be written ({error.strerror or error})"
        raise RunError(f"{path}: {reason}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunError(f"{path}: is not a regular file")
    return os.fdopen(fd, "ab")


def _metrics_row(line: str) -> tuple[dict[str, Any] | None, str]:
    """A metrics line as the runner writes it, or None and what is wrong with it."""
    try:
        row = json.loads(line)  # NaN and Infinity parse, and fail the checks below
    except (ValueError, RecursionError):
        return None, "is not JSON"
    if not isinstance(row, dict):
        return None, "is not a JSON object"
    step = row.get("step")
    if type(step) is not int or not 0 <= step <= _STEP_MAX:
        return None, "has no step (a whole number)"
    max_steps = row.get("max_steps")
    if max_steps is not None and (type(max_steps) is not int or not 1 <= max_steps <= _STEP_MAX):
        return None, "has a max_steps that is not a whole number"
    if not _finite(row.get("loss")):
        return None, "has no loss (a finite number)"
    for key in _METRIC_NUMBERS:
        if row.get(key) is not None and not _finite(row[key]):
            return None, f"has a {key} that is not a finite number"
    return row, ""


def _finite(value: object) -> bool:
    if type(value) not in (int, float):  # bool is neither
        return False
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except OverflowError:
        return False


def process_env() -> dict[str, str]:
    """A detached process's environment: unbuffered logs, this spectui importable, nothing
    fetched from the network (Hugging Face offline: the base is local or already cached)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **OFFLINE_ENV)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env


def _child_env(spec: RunSpec) -> dict[str, str]:
    """The training process's environment: `process_env`, and a pinned GPU (cuda:N) made the
    only visible one."""
    env = process_env()
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
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, *fields = stat_line.rsplit(")", 1)[1].split()
    return None if state in ("Z", "X") else fields[18]  # field 22 of proc(5): starttime


def _launched_for(pid: int, directory: Path) -> bool:
    """Whether a live process was started for this directory (its command line names it): a pid
    file may have been written by anyone, and cancelling signals what it names."""
    if not _HAS_PROC:
        return True  # without /proc (macOS) the start-time check is all there is
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.fsencode(str(directory)) in arguments


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
