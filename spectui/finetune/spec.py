"""What a fine-tuning run trains, how, and on which data: validated, and saved with the run.

The field list is the single source of truth: the CLI flags, the command preview and the
TOML/JSON loader are all derived from it.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import tomllib
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from spectui.atomic import write_text
from spectui.errors import InputError
from spectui.validate import read_bytes

METHODS = ("full", "lora", "rslora", "lora-frozen-a", "dora", "pissa")
TASKS = ("causal-lm", "classification")
TARGET_PRESETS = ("attention", "all-linear")
SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
)
DTYPES = ("float32", "bfloat16", "float16")
ADAPTER_LR, FULL_LR = 2e-4, 2e-5
ALWAYS_SHOWN = ("base", "method", "data")  # in the command preview, even when left at default
NAME_LIMIT = 100  # characters in a run name: well under any file system's limit on a name
SPEC_LIMIT = 1024 * 1024  # bytes in a spec file: far more than any spec needs

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_MODULE_LIST = re.compile(r"[\w.]+(,[\w.]+)*")
_PLAIN_NAME = re.compile(r"\w[\w.-]*")
_KIND_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


class SpecError(InputError):
    """A spec that cannot be used; the message says what to fix, in one line."""


def _field(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class RunSpec:
    """One fine-tuning run. Field metadata (help, choices) also defines `spectui train`'s flags."""

    base: str = _field("", "base model directory or local Hugging Face id", metavar="DIR")
    data: str = _field("", "training data file: .jsonl or .csv (field `text`, and `label` for "
                           "classification) or .txt (one example per line)", metavar="FILE")
    method: str = _field("lora", "what to train", choices=METHODS)
    task: str = _field("causal-lm", "training objective", choices=TASKS)
    eval_file: str | None = _field(None, "evaluation data file (default: hold out a share of "
                                           "the data)", metavar="FILE")
    eval_fraction: float = _field(0.1, "share of the data held out for evaluation (without "
                                       "an eval file)")
    rank: int = _field(8, "LoRA rank r", metavar="R")
    alpha: float = _field(16.0, "LoRA alpha (scaling alpha/r, or alpha/sqrt(r) for rslora)",
                          metavar="A")
    alpha_2r: bool = _field(False, "set alpha to 2 x rank, the paper's setting (overrides alpha)")
    dropout: float = _field(0.05, "LoRA dropout")
    target_modules: str = _field("attention", "modules to adapt: attention, all-linear, or "
                                              "comma-separated module names")
    lr: float | None = _field(None, f"learning rate (default {ADAPTER_LR:g} for adapters, "
                                    f"{FULL_LR:g} for full fine-tuning)")
    epochs: float = _field(1.0, "passes over the training data (ignored when max_steps is set)")
    max_steps: int | None = _field(None, "optimizer steps to train (overrides epochs)",
                                    metavar="N")
    batch_size: int = _field(8, "examples per micro-batch (per device)")
    grad_accum: int = _field(1, "micro-batches accumulated per optimizer step")
    max_seq_len: int = _field(256, "tokens per example; longer texts are truncated")
    warmup_steps: int = _field(0, "learning-rate warm-up steps")
    scheduler: str = _field("linear", "learning-rate schedule after warm-up", choices=SCHEDULERS)
    max_grad_norm: float = _field(1.0, "gradient clipping norm")
    seed: int = _field(0, "random seed (initialisation, data order, evaluation split)")
    log_every: int = _field(10, "steps between metrics lines")
    eval_every: int = _field(50, "steps between evaluations (0: only at the end)")
    save_every: int = _field(50, "steps between checkpoints (0: no checkpoints, no resume)")
    device: str = _field("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = _field("float32", "compute precision (adapter methods also load the frozen "
                                   "base in it)", choices=DTYPES)
    accelerate_config: str | None = _field(None, "accelerate config file; launches through "
                                                 "`accelerate launch`", metavar="FILE")
    name: str | None = _field(None, "run name (default: method, rank and time)")
    out: str | None = _field(None, "directory for the final model (default: <run>/output)",
                             metavar="DIR")
    start_from: str | None = _field(None, "continue from another run's output (its name) or a "
                                          "model or adapter directory; an adapter is merged into "
                                          "its base first, a full model trained on", metavar="RUN")

    @property
    def uses_adapter(self) -> bool:
        return self.method != "full"

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return ADAPTER_LR if self.uses_adapter else FULL_LR

    @property
    def lora_alpha(self) -> float:
        return 2.0 * self.rank if self.alpha_2r else self.alpha

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        """A spec from parsed TOML/JSON; unknown keys and wrongly typed values are errors."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise SpecError(f"unknown field `{unknown[0]}`")
        return cls(**{name: _typed(name, value) for name, value in data.items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def errors(self, on_disk: bool = True) -> dict[str, str]:
        """Each invalid field with a one-sentence reason, for a form to show beside the field.

        Without `on_disk`, only the values are checked, not the files they name (a saved run's
        spec: its output exists once it is done, and its base need not be looked up again)."""
        checks = {
            "base": _base_error(self.base) if on_disk else None,
            "data": None if self.data else "a data file is required",
            "method": _choice_error("method", self.method, METHODS),
            "task": _choice_error("task", self.task, TASKS),
            "eval_fraction": _range_error("eval_fraction", self.eval_fraction, 0.0, 0.5),
            "rank": _minimum_error("rank", self.rank, 1),
            "alpha": _positive_error("alpha", self.alpha),
            "dropout": _range_error("dropout", self.dropout, 0.0, 0.9),
            "target_modules": _targets_error(self.target_modules),
            "lr": None if self.lr is None else _positive_error("lr", self.lr),
            "epochs": _positive_error("epochs", self.epochs),
            "max_steps": None if self.max_steps is None else _minimum_error(
                "max_steps", self.max_steps, 1),
            "batch_size": _minimum_error("batch_size", self.batch_size, 1),
            "grad_accum": _minimum_error("grad_accum", self.grad_accum, 1),
            "max_seq_len": _minimum_error("max_seq_len", self.max_seq_len, 2),
            "warmup_steps": _minimum_error("warmup_steps", self.warmup_steps, 0),
            "scheduler": _choice_error("scheduler", self.scheduler, SCHEDULERS),
            "max_grad_norm": _positive_error("max_grad_norm", self.max_grad_norm),
            "seed": None if 0 <= self.seed < 2**32 else "seed must be from 0 to 4294967295",
            "log_every": _minimum_error("log_every", self.log_every, 1),
            "eval_every": _minimum_error("eval_every", self.eval_every, 0),
            "save_every": _minimum_error("save_every", self.save_every, 0),
            "device": None if _DEVICE.fullmatch(self.device) else (
                "device must be auto, cpu, cuda, cuda:N or mps"),
            "dtype": _choice_error("dtype", self.dtype, DTYPES),
            "accelerate_config": _missing_file_error("accelerate config", self.accelerate_config)
            if on_disk else None,
            "name": None if self.name is None else name_error(self.name),
            "out": _existing_output_error(self.out) if on_disk else None,
            "start_from": _start_error(self.start_from, on_disk),
        }
        return {name: message for name, message in checks.items() if message}

    def check(self) -> None:
        """Raise SpecError naming every invalid field, on one line."""
        problems = self.errors()
        if problems:
            raise SpecError("; ".join(problems.values()))

    def warnings(self) -> list[str]:
        """Things that are valid but that the user should know before launching."""
        if self.method == "pissa":
            return [("PiSSA rewrites the base weights while training; the saved adapter is "
                     "converted so that it applies to the original base")]
        return []

    def resolved(self) -> RunSpec:
        """The same spec with local paths made absolute, so the run does not depend on its cwd."""
        base = Path(self.base).expanduser()
        return replace(
            self,
            base=str(base.resolve()) if base.exists() else self.base,
            data=_absolute(self.data),
            eval_file=_absolute(self.eval_file),
            accelerate_config=_absolute(self.accelerate_config),
            out=_absolute(self.out),
            start_from=self.start_from if _is_run_name(self.start_from) else _absolute(self.start_from),
        )


def name_error(name: str) -> str | None:
    """Why `name` cannot name a run directory, or None: the one rule for run names, checked by the
    spec, and by runs.py wherever a name becomes a path."""
    if len(name) > NAME_LIMIT:
        return f"name must be at most {NAME_LIMIT} characters long (it has {len(name)})"
    if not _PLAIN_NAME.fullmatch(name):
        return "name must be a plain directory name (letters, digits, '.', '-', '_')"
    return None


def field_kind(name: str) -> type:
    """The Python type of a spec field's value, ignoring `None`."""
    hint = _HINTS[name]
    return next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))


def is_optional(name: str) -> bool:
    return type(None) in typing.get_args(_HINTS[name])


def parse_field(name: str, text: str) -> Any:
    """A field's value from the text a user typed (blank clears an optional field)."""
    kind, text = field_kind(name), text.strip()
    if not text and is_optional(name):
        return None
    try:
        value = _BOOL_WORDS[text.lower()] if kind is bool else kind(text)
    except (KeyError, ValueError):
        raise SpecError(f"{name} must be {_KIND_WORDS[kind]}") from None
    return _typed(name, value)


def load_spec(path: str | Path) -> RunSpec:
    """Read a .toml or .json spec; every problem becomes a SpecError naming the file."""
    path = Path(path)
    raw = read_bytes(path, SPEC_LIMIT, lambda where, problem: SpecError(f"{where}: {problem}"))
    try:
        text = raw.decode("utf-8")
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise SpecError("a spec file must end in .toml or .json")
        if not isinstance(data, dict):
            raise SpecError("a spec must be a table of fields")
        return RunSpec.from_dict(data)
    except UnicodeDecodeError:
        raise SpecError(f"{path}: is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{path}: invalid TOML ({error})") from None
    except json.JSONDecodeError as error:
        raise SpecError(f"{path}: invalid JSON at line {error.lineno}") from None
    except ValueError:  # an integer of thousands of digits
        raise SpecError(f"{path}: invalid JSON (a number is too long)") from None
    except RecursionError:
        raise SpecError(f"{path}: nested too deeply to be a spec") from None
    except SpecError as error:
        raise SpecError(f"{path}: {error}") from None


def save_spec(spec: RunSpec, path: Path) -> None:
    """Written aside and renamed into place: a poller never reads half a spec."""
    write_text(path, json.dumps(spec.to_dict(), indent=2) + "\n")


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def render_command(spec: RunSpec) -> str:
    """The `spectui train` command line that reproduces the spec (for preview and copy)."""
    defaults = RunSpec()
    words = ["spectui", "train"]
    for f in fields(RunSpec):
        value = getattr(spec, f.name)
        if value == getattr(defaults, f.name) and f.name not in ALWAYS_SHOWN:
            continue
        if isinstance(value, bool):
            words.append(flag_name(f.name) if value else "--no-" + flag_name(f.name)[2:])
        else:
            words += [flag_name(f.name), str(value)]
    return shlex.join(words)


_HINTS = typing.get_type_hints(RunSpec)


def _typed(name: str, value: Any) -> Any:
    """The value if it has the field's type (ints pass as floats; a list of names as modules)."""
    kind = field_kind(name)
    if value is None and is_optional(name):
        return None
    if kind is float and type(value) is int:
        try:
            value = float(value)
        except OverflowError:
            raise SpecError(f"{name} is too large") from None
    if name == "target_modules" and isinstance(value, list) and all(
            isinstance(item, str) for item in value):
        value = ",".join(value)
    if type(value) is not kind:
        raise SpecError(f"{name} must be {_KIND_WORDS[kind]}")
    return value


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else path


def _base_error(base: str) -> str | None:
    if not base:
        return "a base model is required"
    path = Path(base).expanduser()
    if path.is_dir():
        return None if (path / "config.json").is_file() else (
            f"base model directory {base} has no config.json")
    if path.exists():
        return f"base model {base} is not a directory"
    if base.startswith((".", "/", "~")) or base.count("/") > 1:
        return f"base model directory {base} does not exist"
    from spectui.checkpoint.files import CheckpointError, locate

    try:
        locate(base)  # the same rule as the inspector's: a path, or the local hub cache only
    except CheckpointError:
        return (f"base model {base} is neither a local directory nor in the local Hugging Face "
                "cache, and spectui downloads nothing: download it first, or give its directory")
    return None  # a Hugging Face id already cached: the runner loads it offline


def _choice_error(name: str, value: str, choices: tuple[str, ...]) -> str | None:
    return None if value in choices else f"{name} must be one of {', '.join(choices)}"


def _minimum_error(name: str, value: int, low: int) -> str | None:
    return None if value >= low else f"{name} must be at least {low}"


def _positive_error(name: str, value: float) -> str | None:
    return None if math.isfinite(value) and value > 0 else f"{name} must be greater than 0"


def _range_error(name: str, value: float, low: float, high: float) -> str | None:
    return None if low <= value <= high else f"{name} must be between {low:g} and {high:g}"


def _targets_error(targets: str) -> str | None:
    if targets in TARGET_PRESETS or _MODULE_LIST.fullmatch(targets):
        return None
    return "target_modules must be attention, all-linear or comma-separated module names"


def _missing_file_error(what: str, path: str | None) -> str | None:
    return None if path is None or Path(path).expanduser().is_file() else (
        f"{what} file {path} does not exist")


def _is_run_name(start: str | None) -> bool:
    """Whether `start_from` reads as a run's name (a plain name) rather than a path."""
    return bool(start) and name_error(start) is None and not start.startswith(".")


def _start_error(start: str | None, on_disk: bool) -> str | None:
    """A plain name is a run's (looked up in the runs directory when the run is created); anything
    else is a path, to a directory."""
    if start is None or _is_run_name(start):
        return None
    if not start.strip() or not start.isprintable():
        return "start_from must name a run or a model directory"
    if on_disk and not Path(start).expanduser().is_dir():
        return f"start_from {start} is neither a run's name nor a directory"
    return None


def _existing_output_error(out: str | None) -> str | None:
    return None if out is None or not Path(out).expanduser().exists() else (
        f"output directory {out} already exists")
