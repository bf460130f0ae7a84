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

from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from spectui import atomic
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
    """Load optimizer, scheduler and RNG state; return the step and elapsed seconds reached."""
    state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and len(state["rng_cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return state["step"], state["elapsed_s"]
