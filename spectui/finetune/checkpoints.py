"""Checkpoints and the final output, written so that nothing half-written is ever presented.

    checkpoints/step-N/
        model/                  the adapter or full model, exactly as the final output would be
        trainable.safetensors   adapter methods: the trainable parameters as trained (for PiSSA
                                these differ from the converted adapter in model/)
        state.pt                optimizer, scheduler and RNG state, step and elapsed time

Only the newest checkpoint keeps trainable.safetensors and state.pt (what a resume needs);
older ones keep model/, for looking at the weights along the run.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from spectui import atomic
from spectui.errors import FileInputError, one_line
from spectui.finetune.models import TRAINABLE_FILE, save_output, save_trainable
from spectui.finetune.runs import Run

STATE_FILE = "state.pt"


def save_checkpoint(run: Run, step: int, elapsed_s: float, model: nn.Module,
                    tokenizer: PreTrainedTokenizerBase, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler) -> Path:
    """Write checkpoints/step-N, then drop the resume files of the older checkpoints."""
    spec = run.spec()
    with atomic.directory(run.checkpoint_dir(step)) as directory:
        save_output(model, tokenizer, spec, directory / "model", run.pissa_init_dir)
        if spec.uses_adapter:
            save_trainable(model, directory / TRAINABLE_FILE)
        torch.save({
            "step": step,
            "elapsed_s": elapsed_s,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }, directory / STATE_FILE)
    for older_step, older in run.checkpoints():
        if older_step != step:
            (older / STATE_FILE).unlink(missing_ok=True)
            (older / TRAINABLE_FILE).unlink(missing_ok=True)
    return run.checkpoint_dir(step)


def resume_point(run: Run) -> Path | None:
    """The newest checkpoint the run can resume from, if any."""
    resumable = [path for _, path in run.checkpoints() if (path / STATE_FILE).is_file()]
    return resumable[-1] if resumable else None


def restore(checkpoint: Path, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler) -> tuple[int, float]:
    """Load optimizer, scheduler and RNG state; return the step and elapsed seconds reached.

    The state file is untrusted: anything but the training state this module writes, loaded
    without unpickling objects, is a FileInputError naming it (the run fails with that reason)."""
    path = checkpoint / STATE_FILE
    state = load_state(path)
    if checkpoint.name != f"step-{state['step']}":
        raise FileInputError(path, f"says step {state['step']}, but lies in {checkpoint.name}")
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RuntimeError) as error:
        raise FileInputError(path, "holds an optimizer or schedule state that does not fit this "
                                   f"run ({one_line(error, 100)})") from None
    try:
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] and len(state["rng_cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
    except (RuntimeError, TypeError, ValueError) as error:
        raise FileInputError(path, f"holds a random generator state that cannot be restored "
                                   f"({one_line(error, 100)})") from None
    return state["step"], float(state["elapsed_s"])


def load_state(path: Path) -> dict[str, Any]:
    """A checkpoint's state.pt, loaded with weights_only (no object is unpickled) and checked to
    have the keys and kinds save_checkpoint writes; FileInputError naming the file otherwise."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise FileInputError(path, "holds more than tensors and plain values, which spectui does "
                                   "not unpickle: it is not a training state spectui wrote") from None
    except EOFError:
        raise FileInputError(path, "is empty, not a training state") from None
    except OSError as error:
        raise FileInputError(path, f"cannot be read ({error.strerror or one_line(error)})") from None
    except MemoryError:
        raise
    except Exception as error:  # arbitrary bytes: a truncated archive (RuntimeError) and the rest
        raise FileInputError(path, f"is truncated or damaged ({one_line(error, 100)})") from None
    problem = _state_problem(state)
    if problem:
        raise FileInputError(path, f"is not a training state spectui wrote: {problem}")
    return state


def _state_problem(state: object) -> str | None:
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a table"
    missing = [key for key in _STATE_KINDS if key not in state]
    if missing:
        return f"it has no {missing[0]}"
    for key, (kinds, what) in _STATE_KINDS.items():
        if type(state[key]) not in kinds:
            return f"its {key} is not {what}"
    try:
        elapsed = float(state["elapsed_s"])
    except OverflowError:
        elapsed = math.inf
    if state["step"] < 0 or not (math.isfinite(elapsed) and elapsed >= 0):
        return "its step or elapsed time is negative or not finite"
    if state["rng_cpu"].dtype != torch.uint8 or not all(
            isinstance(item, torch.Tensor) and item.dtype == torch.uint8 for item in state["rng_cuda"]):
        return "its random generator states are not byte tensors"
    if not {"state", "param_groups"} <= set(state["optimizer"]):
        return "its optimizer state lacks state or param_groups"
    return None


_STATE_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "step": ((int,), "a whole number"),
    "elapsed_s": ((int, float), "a number"),
    "optimizer": ((dict,), "a table"),
    "scheduler": ((dict,), "a table"),
    "rng_cpu": ((torch.Tensor,), "a tensor"),
    "rng_cuda": ((list,), "a list"),
}
