"""Studies: the paper's experiments as one spec. LoRA at several ranks (and learning rates) beside
full fine-tuning on the same data, or on a sequence of tasks trained one after another (each stage
starting from the previous stage's model, a LoRA stage's adapter merged first).

    <out>/                      a study directory (default <runs-dir>/<name>)
        study.json              the resolved StudySpec: `spectui study <out>/study.json` reruns it
        status, pid, log.txt, command.txt   the study's own detached process, as a run's
        heldout/task<i>.jsonl   each task's held-out examples: where the task metric is measured
        results.json            the figures of every member (spectui.study_results), rewritten
                                after each member is evaluated

Each member is a normal run of the runs directory (detached, resumable, re-attachable), named
<name>-<line> for a study and <name>-[<line>-]stage<k> for a sequence, where a line is one rank
(`r8`) or `full`, with `-lr<lr>` when a grid has several rates. Running a study again skips the
members already done, re-attaches to live ones and resumes stopped ones; a member that fails is
recorded and the others go on.

Nothing here imports torch (except to count GPUs, in the study's own process): the CLI and the
TUI validate, launch and watch studies cheaply. The study's process is `python -m spectui.study`.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
import threading
import time
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from spectui.atomic import write_text
from spectui.defaults import DEFAULT_K, DEFAULT_MAX_TOKENS, TOP_VECTORS
from spectui.errors import InputError, printable
from spectui.finetune.runs import (
    LIVE,
    ProcessDir,
    Run,
    RunError,
    State,
    checked_runs_dir,
    create_run,
    find_run,
    process_env,
    resolve_start,
)
from spectui.finetune.spec import (
    ADAPTER_LR,
    FULL_LR,
    METHODS,
    SPEC_LIMIT,
    RunSpec,
    SpecError,
    flag_name,
    name_error,
)
from spectui.locations import runs_dir, samples_dir
from spectui.validate import read_bytes

STUDY_MODULE = "spectui.study"  # the study's own process: train, probe and scan the members
SPEC_FILE, RESULTS_FILE, HELDOUT_DIR = "study.json", "results.json", "heldout"
LINE_METHODS = tuple(method for method in METHODS if method != "full")
# RunSpec fields a study sets per member; every other one may be set for all members in `run`
OWNED = ("base", "data", "method", "rank", "alpha", "alpha_2r", "lr", "max_steps", "name", "out",
         "start_from")
RUN_FIELDS = tuple(f.name for f in fields(RunSpec) if f.name not in OWNED)
ALPHA_2R = "2r"
_LIST_WORDS = {int: "whole numbers", float: "numbers", str: "file names"}
POLL_S = 1.0
MEMBERS_LIMIT = 256  # members in one study: far more than one machine trains in a day


class StudyError(SpecError):
    """A study spec or directory that cannot be used; the message says why, in one line."""


def _field(default: Any, help: str, **extra: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class StudySpec:
    """One study; field metadata also defines `spectui study`'s flags (a list: comma-separated)."""

    base: str = _field("", "base model directory or local Hugging Face id", metavar="DIR")
    data: str | None = _field(None, "training data file of the one task (.jsonl, .csv, .txt)",
                              metavar="FILE")
    sequence: list[str] | None = _field(None, "training data files trained in order, each stage "
                                              "from the previous stage's model", metavar="F1,F2,…")
    ranks: list[int] = _field([1, 8, 64], "LoRA ranks", metavar="R,R,…")
    full: bool = _field(False, "also fine-tune every weight (full fine-tuning)")
    method: str = _field("lora", "adapter method of the rank members", choices=LINE_METHODS)
    alpha: str | float = _field(ALPHA_2R, "LoRA alpha: 2r (the paper's setting) or a number",
                                metavar="2r|A")
    lr_grid: list[float] | None = _field(None, f"learning rates of the rank members (default "
                                               f"{ADAPTER_LR:g})", metavar="LR,LR,…")
    full_lr_grid: list[float] | None = _field(None, f"learning rates of full fine-tuning "
                                                    f"(default {FULL_LR:g})", metavar="LR,LR,…")
    steps: int | None = _field(None, "optimizer steps per member (default: the run's epochs)",
                               metavar="N")
    reference: str | None = _field(None, "pre-training-like text whose loss measures forgetting "
                                         "(default for the bundled sample base: its "
                                         "data/reference.txt)", metavar="FILE")
    max_tokens: int = _field(DEFAULT_MAX_TOKENS, "tokens scored per text by the probe")
    k: int = _field(DEFAULT_K, "top-k tuned singular vectors tested for intruders")
    name: str | None = _field(None, "study name, the prefix of its members' run names (default: "
                                    "study and the time)")
    out: str | None = _field(None, "study directory: spec, status, log and results (default: "
                                   "<runs-dir>/<name>)", metavar="DIR")
    runs_dir: str | None = _field(None, "where the member runs live (default: $SPECTUI_RUNS_DIR, "
                                        "else ./runs)", metavar="DIR")
    run: dict[str, Any] = _field({}, "run settings shared by every member (RunSpec fields)")

    # -- reading ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudySpec:
        """A spec from parsed TOML/JSON; unknown keys and wrongly typed values are StudyErrors."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise StudyError(f"unknown field `{unknown[0]}`")
        return cls(**{name: _typed(name, value) for name, value in data.items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # -- what it trains --------------------------------------------------------------------------
    @property
    def tasks(self) -> list[str]:
        """The training data files: the one task's, or the sequence's in order."""
        return list(self.sequence) if self.sequence else [self.data or ""]

    @property
    def is_sequence(self) -> bool:
        return self.sequence is not None

    @property
    def adapter_lrs(self) -> list[float]:
        return list(self.lr_grid) if self.lr_grid else [ADAPTER_LR]

    @property
    def full_lrs(self) -> list[float]:
        return list(self.full_lr_grid) if self.full_lr_grid else [FULL_LR]

    def lines(self) -> list[Line]:
        """The fine-tunes compared: each rank at each adapter rate, then full at each full rate."""
        lines = [Line(f"r{rank}" + _lr_suffix(lr, self.adapter_lrs), self.method, rank, lr)
                 for rank in self.ranks for lr in self.adapter_lrs]
        if self.full:
            lines += [Line("full" + _lr_suffix(lr, self.full_lrs), "full", None, lr)
                      for lr in self.full_lrs]
        return lines

    def members(self) -> list[Member]:
        """Every run of the study, in training order: line by line, stage by stage."""
        lines, tasks, members = self.lines(), self.tasks, []
        for line in lines:
            previous = None
            for task, data in enumerate(tasks):
                stage = task + 1 if self.is_sequence else None
                name = self.member_name(line, stage, len(lines))
                spec = self._run_spec(line, data, name, previous)
                members.append(Member(name, line, task, stage, previous, spec))
                if self.is_sequence:
                    previous = name
        return members

    def member_name(self, line: Line, stage: int | None, line_count: int) -> str:
        prefix = self.name or "study"
        if stage is None:
            return f"{prefix}-{line.label}"
        return f"{prefix}-stage{stage}" if line_count == 1 else f"{prefix}-{line.label}-stage{stage}"

    def _run_spec(self, line: Line, data: str, name: str, start_from: str | None) -> RunSpec:
        alpha_2r = self.alpha == ALPHA_2R
        return RunSpec(**{
            **self.run, "base": self.base, "data": data, "method": line.method,
            "rank": line.rank or RunSpec.rank, "alpha_2r": alpha_2r,
            "alpha": RunSpec.alpha if alpha_2r else float(self.alpha), "lr": line.lr,
            "max_steps": self.steps, "name": name, "start_from": start_from,
        })

    # -- checking --------------------------------------------------------------------------------
    def errors(self, on_disk: bool = True) -> dict[str, str]:
        """Each invalid field with a one-sentence reason; a member run's invalid settings are told
        under the study field that sets them (`run.<field>` for the shared ones)."""
        problems: dict[str, str] = {}
        if (self.data is None) == (self.sequence is None):
            problems["data"] = "give either data (one task) or sequence (tasks in order), not both"
        elif self.sequence is not None and not self.sequence:
            problems["sequence"] = "a sequence needs at least one data file"
        if not self.ranks and not self.full:
            problems["ranks"] = "nothing to train: give ranks, or full"
        if len(set(self.ranks)) != len(self.ranks):
            problems["ranks"] = "ranks must not repeat"
        for name, grid in (("lr_grid", self.lr_grid), ("full_lr_grid", self.full_lr_grid)):
            if grid is not None and (not grid or len(set(grid)) != len(grid)):
                problems[name] = f"{name} must hold distinct learning rates"
        if self.max_tokens < 2:
            problems["max_tokens"] = "max_tokens must be at least 2"
        if not 1 <= self.k <= TOP_VECTORS:
            problems["k"] = f"k must be from 1 to {TOP_VECTORS}"
        if self.name is not None and (wrong := name_error(self.name)):
            problems["name"] = wrong
        if self.run.get("task", "causal-lm") != "causal-lm":
            problems["run"] = "a study measures language-model loss: run.task must be causal-lm"
        if self.is_sequence and self.run.get("eval_file"):
            problems["run"] = ("run.eval_file holds out one task's examples; a sequence holds out "
                               "eval_fraction of each task")
        if self.run.get("eval_fraction") == 0 and not self.run.get("eval_file"):
            problems["run"] = ("the task metric needs held-out examples: run.eval_fraction must be "
                               "above 0, or give run.eval_file")
        if on_disk:
            reference = self.reference or self.default_reference()
            if reference is None:
                problems["reference"] = ("a reference text is required (pre-training-like text; "
                                         "forgetting is its loss)")
            elif not Path(reference).expanduser().is_file():
                problems["reference"] = f"reference text {reference} does not exist"
            missing = [data for data in self.tasks if data and not Path(data).expanduser().is_file()]
            if missing:
                problems["sequence" if self.is_sequence else "data"] = (
                    f"data file {missing[0]} does not exist")
            for path, label in ((self.out, "out"), (self.runs_dir, "runs_dir")):
                if path and Path(path).expanduser().exists() and not Path(path).expanduser().is_dir():
                    problems[label] = f"{label} {path} is a file, not a directory"
        count = (len(self.ranks) * len(self.adapter_lrs) + self.full * len(self.full_lrs)) * len(self.tasks)
        if count > MEMBERS_LIMIT:
            problems["ranks"] = f"the study has {count} members; at most {MEMBERS_LIMIT}"
        if not problems:
            problems.update(self._member_errors(on_disk))
        return problems

    def _member_errors(self, on_disk: bool) -> dict[str, str]:
        members = self.members()
        owner = {"rank": "ranks", "lr": "lr_grid", "max_steps": "steps", "data": "data"}
        for member in members:
            for name, message in member.spec.errors(on_disk).items():
                if name in ("name",):
                    return {"name": f"member name {member.name}: {message}"}
                if name == "start_from":
                    continue  # the previous stage: a run made before this one
                if name == "data" and self.is_sequence:
                    return {"sequence": message}
                if name == "lr" and member.line.method == "full":
                    return {"full_lr_grid": message}
                return {owner.get(name, name if name in OWNED else f"run.{name}"): message}
        return {}

    def check(self, on_disk: bool = True) -> None:
        """Raise StudyError naming every invalid field, on one line."""
        problems = self.errors(on_disk)
        if problems:
            raise StudyError("; ".join(problems.values()))

    def default_reference(self) -> str | None:
        """The bundled sample base's reference text, when the base is that sample."""
        sample = samples_dir() / "base"
        try:
            is_sample = Path(self.base).expanduser().resolve() == sample.resolve()
        except OSError:
            return None
        reference = samples_dir() / "data" / "reference.txt"
        return str(reference) if is_sample and reference.is_file() else None

    def resolved(self, root: str | Path | None = None) -> StudySpec:
        """Everything a rerun needs written out: name, directories, reference and rates filled in,
        local paths absolute (so the study does not depend on its cwd)."""
        name = self.name or f"study-{datetime.now():%Y%m%d-%H%M%S}"
        runs = Path(self.runs_dir or runs_dir(root)).expanduser().absolute()
        base = Path(self.base).expanduser()
        run = dict(self.run)
        for key in ("eval_file", "accelerate_config"):
            if run.get(key):
                run[key] = _absolute(run[key])
        return replace(
            self, name=name,
            base=str(base.resolve()) if base.exists() else self.base,
            data=_absolute(self.data) if self.data else None,
            sequence=[_absolute(path) for path in self.sequence] if self.sequence else self.sequence,
            reference=_absolute(reference) if (reference := self.reference or self.default_reference()) else None,
            lr_grid=self.adapter_lrs, full_lr_grid=self.full_lrs,
            out=_absolute(self.out) if self.out else str(runs / name),
            runs_dir=str(runs), run=run,
        )

    @classmethod
    def for_sequence(cls, spec: RunSpec, files: list[str], reference: str | None,
                     root: str | Path | None) -> StudySpec:
        """The study `spectui train --sequence` runs: the run spec's method, rank and rate, one
        stage per file, stages named <name>-stage1…N."""
        adapter = spec.method != "full"
        shared = {key: value for key, value in spec.to_dict().items()
                  if key in RUN_FIELDS and value != getattr(RunSpec, key)}
        name = spec.name or (f"seq-{spec.method}" + (f"-r{spec.rank}" if adapter else "")
                             + f"-{datetime.now():%Y%m%d-%H%M%S}")
        return cls(
            base=spec.base, sequence=list(files), ranks=[spec.rank] if adapter else [],
            full=not adapter, method=spec.method if adapter else "lora",
            alpha=ALPHA_2R if spec.alpha_2r else spec.alpha,
            lr_grid=[spec.learning_rate] if adapter else None,
            full_lr_grid=None if adapter else [spec.learning_rate],
            steps=spec.max_steps, reference=reference, name=name,
            runs_dir=str(root) if root else None, run=shared,
        )


@dataclass(frozen=True)
class Line:
    """One fine-tune of the comparison: a rank (or full) at a learning rate."""

    label: str  # r8, full, r8-lr0.001
    method: str
    rank: int | None  # None: full fine-tuning
    lr: float


@dataclass(frozen=True)
class Member:
    """One run of a study: a line trained on one task (a stage, in a sequence)."""

    name: str
    line: Line
    task: int  # index into StudySpec.tasks
    stage: int | None  # 1, 2, … in a sequence
    after: str | None  # the member whose model it starts from
    spec: RunSpec


def load_study_spec(path: str | Path) -> StudySpec:
    """Read a .toml or .json study spec; every problem is a StudyError naming the file."""
    path = Path(path)
    raw = read_bytes(path, SPEC_LIMIT, lambda where, problem: StudyError(f"{where}: {problem}"))
    try:
        text = raw.decode("utf-8")
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise StudyError("a study spec file must end in .toml or .json")
        if not isinstance(data, dict):
            raise StudyError("a study spec must be a table of fields")
        return StudySpec.from_dict(data)
    except UnicodeDecodeError:
        raise StudyError(f"{path}: is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise StudyError(f"{path}: invalid TOML ({error})") from None
    except json.JSONDecodeError as error:
        raise StudyError(f"{path}: invalid JSON at line {error.lineno}") from None
    except ValueError:  # an integer of thousands of digits
        raise StudyError(f"{path}: invalid JSON (a number is too long)") from None
    except RecursionError:
        raise StudyError(f"{path}: nested too deeply to be a study spec") from None
    except SpecError as error:
        raise StudyError(f"{path}: {error}") from None


def save_study_spec(spec: StudySpec, path: Path) -> None:
    write_text(path, json.dumps(spec.to_dict(), indent=2) + "\n")


# -- the study directory ------------------------------------------------------------------------


class Study(ProcessDir):
    """A study directory: its spec, its own process's state, its held-out data and its results."""

    kind = "study"
    interrupted_message = ("the study's process stopped; run the study again to go on (members "
                           "already done are kept)")

    @property
    def spec_path(self) -> Path:
        return self.path / SPEC_FILE

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS_FILE

    def heldout_path(self, task: int) -> Path:
        return self.path / HELDOUT_DIR / f"task{task + 1}.jsonl"

    def spec(self) -> StudySpec:
        """The saved spec, its values checked (not the files it names); StudyError naming it."""
        spec = load_study_spec(self.spec_path)
        problems = spec.errors(on_disk=False)
        if problems:
            raise StudyError(f"{self.spec_path}: {'; '.join(problems.values())}")
        if not spec.name or not spec.runs_dir:
            raise StudyError(f"{self.spec_path}: a saved study names itself and its runs directory")
        return spec

    def _check_live(self) -> None:
        self.spec()

    def running(self) -> bool:
        """Whether the study's process is alive (a study made but not started is not)."""
        try:
            return self.status().state in LIVE and self._live_pid() is not None
        except InputError:
            return False

    def runs_root(self) -> Path:
        return Path(self.spec().runs_dir or runs_dir())

    def member_runs(self) -> list[tuple[Member, Run | None]]:
        """Each member with its run, None when it was not made yet (or is not a run there)."""
        spec, root = self.spec(), self.runs_root()
        found = []
        for member in spec.members():
            run = Run(root / member.name)
            found.append((member, run if (run.path / "spec.json").is_file() else None))
        return found

    def start(self) -> subprocess.Popen:
        """Start the study's own process (train, then probe and scan each member) detached."""
        self.spec()
        return self._launch([sys.executable, "-m", STUDY_MODULE, str(self.path)], process_env())


def open_study(spec: StudySpec, root: str | Path | None = None) -> Study:
    """The study directory of a resolved, checked spec: made and its spec saved, or an existing
    one (a rerun) whose spec is replaced by this one when it is not running. Member runs already
    there are compared with the new spec member by member when the study runs."""
    spec = spec.resolved(root) if not (spec.name and spec.out and spec.runs_dir) else spec
    study = Study(Path(spec.out or ""))
    path = study.path
    if path.exists():
        if not study.spec_path.is_file():
            if not path.is_dir() or any(path.iterdir()):
                raise StudyError(f"{path}: exists and is not a study directory (it has no "
                                 f"{SPEC_FILE})")
        else:
            saved = study.spec()
            if study.running() and _plain(saved) != _plain(spec):
                raise StudyError(f"{path}: its study is running with another spec; cancel it "
                                 "first or choose another out")
    checked_runs_dir(spec.runs_dir, create=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not study.spec_path.is_file() or _plain(study.spec()) != _plain(spec):
            save_study_spec(spec, study.spec_path)
        if not (path / "status").exists():
            study.set_status(State.QUEUED)
    except OSError as error:
        raise StudyError(f"{path}: cannot write the study's files ({error.strerror or error})") from None
    return study


def start_study(spec: StudySpec) -> tuple[Study, subprocess.Popen | None]:
    """The study of a checked spec started detached, or re-attached to (no process) when it runs;
    every task's data is read first, so a bad file is reported before anything is launched. The
    one way a study starts: `spectui study` and the TUI's Study tab."""
    from spectui.finetune.data import load_splits

    for member in {m.task: m for m in reversed(spec.members())}.values():
        load_splits(member.spec)
    study = open_study(spec)
    return study, None if study.running() else study.start()


def list_studies(root: str | Path | None = None) -> list[Study]:
    """The studies whose directories are in the runs directory (the default place of a study's
    directory), newest first; an absent or unreadable runs directory has none."""
    parent = runs_dir(root)
    try:
        entries = [path for path in parent.iterdir() if (path / SPEC_FILE).is_file()]
    except OSError:
        return []
    entries.sort(key=lambda path: (path / SPEC_FILE).stat().st_mtime, reverse=True)
    return [Study(path) for path in entries]


def saved_name(out: str | Path) -> str | None:
    """The name of the study saved in a study directory, if one is there and readable."""
    try:
        return load_study_spec(Path(out).expanduser() / SPEC_FILE).name
    except InputError:
        return None


def _plain(spec: StudySpec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)


# -- training the members -------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How a member's training ended (or why it was not trained)."""

    state: State
    message: str = ""


def device_slots(spec: StudySpec) -> list[str | None]:
    """Where members train at the same time: one per visible GPU (device cuda:N) when the run
    settings allow GPUs and more than one is visible; else one at a time as the settings say."""
    device = spec.run.get("device", "auto")
    if device not in ("auto", "cuda") or spec.run.get("accelerate_config"):
        return [None]
    import torch  # in the study's own process only

    count = torch.cuda.device_count()
    return [f"cuda:{index}" for index in range(count)] if count > 1 else [None]


def train_members(study: Study, on_done: Callable[[Member, Run], None], stop: threading.Event,
                  say: Callable[[str], None] = print,
                  slots: list[str | None] | None = None) -> dict[str, Outcome]:
    """Train every member not yet done, each as a detached run (side by side over `slots`, one at
    a time with one slot), and call `on_done` for each done member, those done before included,
    as soon as it is. A live member is waited for, a stopped one resumed, a failed one retried
    once; one that fails is recorded and the members that start from it are not trained. With
    `stop` set, the members this call waits for are cancelled and it returns."""
    spec, root = study.spec(), study.runs_root()
    slots = slots or device_slots(spec)
    pending = spec.members()
    outcomes: dict[str, Outcome] = {}
    active: dict[int, tuple[Member, Run, subprocess.Popen | None]] = {}
    while pending or active:
        if stop.is_set():
            _cancel(active, say)
            for member in pending:
                outcomes[member.name] = Outcome(State.CANCELLED, "the study was cancelled")
            for member, _, _ in active.values():
                outcomes[member.name] = Outcome(State.CANCELLED, "the study was cancelled")
            return outcomes
        ended = []
        for slot, (member, run, process) in list(active.items()):
            if process is not None:
                process.poll()  # reaps a child that ended (else it would linger as a zombie)
            status = run.status()
            if status.state not in LIVE:
                del active[slot]
                outcomes[member.name] = Outcome(status.state, status.message)
                say(f"{member.name}: {status.state.value}"
                    + (f" ({_first_line(status.message)})" if status.message else ""))
                ended.append((member, run))
        if len(slots) > 1:
            _start_ready(pending, active, outcomes, slots, root, say, on_done)
        for member, run in ended:
            if outcomes[member.name].state is State.DONE:
                on_done(member, run)
        if len(slots) == 1:
            _start_ready(pending, active, outcomes, slots, root, say, on_done)
        if active:
            stop.wait(POLL_S)
    return outcomes


def _start_ready(pending: list[Member], active: dict, outcomes: dict[str, Outcome],
                 slots: list[str | None], root: Path, say: Callable[[str], None],
                 on_done: Callable[[Member, Run], None]) -> None:
    """Start (or attach to) the pending members whose previous stage is done, in free slots."""
    for member in list(pending):
        if member.after is not None:
            before = outcomes.get(member.after)
            if before is None:
                continue  # its previous stage is still training
            if before.state is not State.DONE:
                pending.remove(member)
                outcomes[member.name] = Outcome(State.CANCELLED, f"not trained: the stage before "
                                                                 f"it, {member.after}, "
                                                                 f"{before.state.value}")
                continue
        free = [index for index in range(len(slots)) if index not in active]
        if not free:
            return
        pending.remove(member)
        try:
            run, process = _launch_member(member, slots[free[0]], root, say)
        except InputError as error:  # its run cannot be made or started: the others go on
            outcomes[member.name] = Outcome(State.FAILED, printable(str(error)))
            say(f"{member.name}: failed ({_first_line(str(error))})")
            continue
        if process is None and run.status().state is State.DONE:
            outcomes[member.name] = Outcome(State.DONE)
            say(f"{member.name}: done before, kept")
            on_done(member, run)
            continue
        active[free[0]] = (member, run, process)


def _launch_member(member: Member, device: str | None, root: Path,
                   say: Callable[[str], None]) -> tuple[Run, subprocess.Popen | None]:
    """The member's run, started; or, when it exists: done (kept), live (attached to), or stopped
    or failed (resumed). RunError when a run of that name has other settings."""
    spec = replace(member.spec, device=device) if device else member.spec
    if not (Path(root) / member.name / "spec.json").is_file():
        run = create_run(spec, root)
        say(f"{member.name}: training" + (f" on {device}" if device else ""))
        return run, run.start()
    run = find_run(member.name, root)
    difference = _difference(run.spec(), spec, root)
    if difference:
        raise RunError(f"run {run.name} in {root} exists with other settings ({difference}); "
                       "remove it, or give the study another name")
    status = run.status()
    if status.state is State.DONE:
        return run, None
    if status.state in LIVE:
        say(f"{member.name}: still training, attached")
        return run, None
    if status.state is State.UNKNOWN:
        raise RunError(f"run {run.name}: {status.message}")
    say(f"{member.name}: {status.state.value} before, resumed")
    return run, run.resume()


def _difference(saved: RunSpec, wanted: RunSpec, root: Path) -> str:
    """The first setting in which a member's existing run differs from what the study trains
    (its name and device aside: a rerun may place it on another GPU)."""
    expected = replace(wanted.resolved(), start_from=resolve_start(wanted, root), name=saved.name,
                       device=saved.device)
    have, want = saved.to_dict(), expected.to_dict()
    for key in want:
        if _comparable(key, have[key]) != _comparable(key, want[key]):
            return f"{key} {have[key]} instead of {want[key]}"
    return ""


def _comparable(key: str, value: Any) -> Any:
    if key in ("base", "start_from", "data", "eval_file") and isinstance(value, str):
        path = Path(value).expanduser()
        return str(path.resolve()) if path.exists() else value
    return value


def _cancel(active: dict, say: Callable[[str], None]) -> None:
    """Cancel the live members and wait a while for them to record it."""
    for member, run, _ in active.values():
        try:
            run.cancel()
            say(f"{member.name}: cancelling")
        except RunError:
            pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
            run.status().state in LIVE for _, run, _ in active.values()):
        for _, _, process in active.values():
            if process is not None:
                process.poll()
        time.sleep(0.2)


def _first_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


# -- field types ----------------------------------------------------------------------------------

_HINTS = typing.get_type_hints(StudySpec)


def field_help(name: str) -> str:
    return next(f.metadata["help"] for f in fields(StudySpec) if f.name == name)


def _typed(name: str, value: Any) -> Any:
    """The value if it has the field's type (ints pass as floats; "2r" or a number for alpha; the
    run table checked as RunSpec fields)."""
    if value is None and type(None) in typing.get_args(_HINTS[name]):
        return None
    if name == "run":
        return _run_table(value)
    if name == "alpha":
        return parse_alpha(value)
    if name == "sequence":
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise StudyError("sequence must be a list of data files")
        return list(value)
    if name == "ranks":
        if not isinstance(value, list) or not all(type(item) is int and item >= 1 for item in value):
            raise StudyError("ranks must be a list of whole numbers of at least 1")
        return list(value)
    if name in ("lr_grid", "full_lr_grid"):
        if not isinstance(value, list) or not all(_positive(item) for item in value):
            raise StudyError(f"{name} must be a list of numbers greater than 0")
        return [float(item) for item in value]
    hint = _HINTS[name]
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    kind = next(t for t in (typing.get_args(hint) if union else (hint,)) if t is not type(None))
    if type(value) is not kind:
        words = {bool: "true or false", int: "an integer", str: "a string"}[kind]
        raise StudyError(f"{name} must be {words}")
    if kind is str and not value.isprintable():
        raise StudyError(f"{name} must be printable text")
    if name == "steps" and value < 1:
        raise StudyError("steps must be at least 1")
    return value


def parse_alpha(value: Any) -> str | float:
    """"2r" (alpha = 2 x rank), or a number greater than 0."""
    if value == ALPHA_2R:
        return ALPHA_2R
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise StudyError(f"alpha must be {ALPHA_2R} or a number") from None
    if not _positive(value):
        raise StudyError(f"alpha must be {ALPHA_2R} or a number greater than 0")
    return float(value)


def study_field_kind(name: str) -> tuple[Any, bool]:
    """A StudySpec field's type (None aside), and whether it may be None."""
    hint = _HINTS[name]
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    kinds = typing.get_args(hint) if union else (hint,)
    return next(t for t in kinds if t is not type(None)), type(None) in kinds


def parse_text(name: str, text: str) -> Any:
    """A field's value from text, as its `spectui study` flag and the Study tab read it: a list
    comma-separated, alpha 2r or a number, blank none where the field may be none; StudyError in one
    sentence otherwise. (The value's own checks, ranks of at least 1 and the like, are from_dict's.)"""
    kind, optional = study_field_kind(name)
    text = text.strip()
    if not text and optional:
        return None
    if name == "alpha":
        return parse_alpha(text)
    if typing.get_origin(kind) is list:
        item = typing.get_args(kind)[0]
        try:
            return [item(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError:
            raise StudyError(f"'{text}' is not comma-separated {_LIST_WORDS[item]}") from None
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise StudyError(f"{name} must be a whole number") from None
    return text


def flag_text(value: Any) -> str:
    """A value as its flag takes it: a list comma-separated, a number as short as it reads (2e-05)."""
    if isinstance(value, list):
        return ",".join(map(flag_text, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def render_command(spec: StudySpec) -> str:
    """The `spectui study` command line of a spec (the Study tab's preview): the base, then every
    setting that is not the default, the members' run settings last."""
    defaults = StudySpec()
    words = ["spectui", "study"]
    settings = [(f.name, getattr(spec, f.name)) for f in fields(StudySpec) if f.name != "run"]
    for name, value in [*settings, *spec.run.items()]:
        if value is None or (name != "base" and value == getattr(defaults, name, None)):
            continue
        if isinstance(value, bool):
            words.append(flag_name(name) if value else "--no-" + flag_name(name)[2:])
        else:
            words += [flag_name(name), flag_text(value)]
    return shlex.join(words)


def _run_table(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StudyError("run must be a table of run settings")
    owned = sorted(set(value) & set(OWNED))
    if owned:
        raise StudyError(f"run.{owned[0]} is set by the study itself, not in run")
    try:
        spec = RunSpec.from_dict(value)
    except SpecError as error:
        raise StudyError(f"run: {error}") from None
    return {key: getattr(spec, key) for key in value}


def _positive(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value > 0


def _lr_suffix(lr: float, grid: list[float]) -> str:
    """-lr0.001, -lr2e-05, -lr1e30: a learning rate as a run name may hold it."""
    return f"-lr{lr:g}".replace("+", "") if len(grid) > 1 else ""


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve()) if path else path
