"""Adapters merged into their base with PEFT itself, for runs that continue from another model.

A sequence of fine-tunes trains each stage on the model the previous one left, as the paper does
for continual learning: a LoRA stage's adapter is merged into its base (`merge_and_unload`) and
the merged model is the next stage's base. The same merge gives the model of a LoRA stage to
compare with the original base. Merged models are written whole (float32, with the base's
tokenizer), atomically, once: `start/` or `merged/` of the run that needs them.

Imports torch, transformers and peft: used by the training process and the study's evaluation,
never by the TUI's polls.
"""

from __future__ import annotations

from pathlib import Path

import torch

from spectui import atomic
from spectui.errors import one_line
from spectui.finetune.models import ModelError
from spectui.finetune.runs import Run, is_adapter_dir


def merge_adapter(base: str | Path, adapter: str | Path, out: Path, task: str = "causal-lm") -> Path:
    """Write `base` with the adapter at `adapter` merged in by PEFT's `merge_and_unload` (float32),
    with the base's tokenizer, to `out` (atomically: a directory there is the whole model)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    model_class = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    try:
        model = model_class.from_pretrained(base, dtype=torch.float32, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(f"cannot load base model {base}: {one_line(error)}") from None
    try:
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelError(f"cannot merge adapter {adapter} into {base}: {one_line(error)}") from None
    with atomic.directory(out) as directory:
        merged.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return out


def prepare_start(run: Run) -> str:
    """The model the run trains from, made ready: the base; a previous full model as it is; a
    previous adapter merged into its base into `start/` (kept, so a resumed run reuses it)."""
    previous = run.previous_model()
    if previous is None:
        return run.spec().base
    model, base = previous
    if not is_adapter_dir(model):
        return str(model)
    if not run.start_dir.is_dir():
        print(f"merging {model} into {base} as this run's starting model", flush=True)
        merge_adapter(base, model, run.start_dir, run.spec().task)
    return str(run.start_dir)


def tuned_model(run: Run) -> Path:
    """A done run's model as a directory to compare with the run's original base: its output,
    unless it is an adapter of a model other than that base (a later stage of a sequence): then
    the adapter merged into its starting model, written to `merged/` once."""
    output = run.output_dir
    if not is_adapter_dir(output) or run.previous_model() is None:
        return output
    if not run.merged_dir.is_dir():
        merge_adapter(run.starting_model(), output, run.merged_dir, run.spec().task)
    return run.merged_dir
