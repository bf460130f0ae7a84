"""The model side of a run: load the base, apply the method with PEFT, save in the output format.

Remote code is never run (`trust_remote_code=False`): a run only loads architectures that
transformers ships.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from accelerate.utils import set_seed
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.pytorch_utils import Conv1D

from spectui.errors import InputError, one_line
from spectui.finetune.spec import RunSpec

TRAINABLE_FILE = "trainable.safetensors"  # in a checkpoint: the trainable parameters as trained
_ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)


class ModelError(InputError):
    """A base model or method setting the run cannot use; the message is for the user."""


def load_tokenizer(spec: RunSpec) -> PreTrainedTokenizerBase:
    """The base's tokenizer, with padding by the end-of-sequence token when it has no pad."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.base, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load the tokenizer of {spec.base}: {one_line(error)}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"the tokenizer of {spec.base} has neither a pad nor an "
                             "end-of-sequence token to pad batches with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_model(spec: RunSpec, tokenizer: PreTrainedTokenizerBase, num_labels: int,
                checkpoint: Path | None = None) -> nn.Module:
    """The model to train: the base itself for full fine-tuning, else the base wrapped by PEFT.

    The seed is set first, so the initial adapter depends only on the spec. With a checkpoint, a
    full fine-tune loads from its model and an adapter gets its trained weights back.
    """
    set_seed(spec.seed)
    if not spec.uses_adapter:
        return _load_base(spec, tokenizer, num_labels, checkpoint / "model" if checkpoint else None)
    base = _load_base(spec, tokenizer, num_labels)
    try:
        model = get_peft_model(base, lora_config(spec, base))
    except ValueError as error:
        raise ModelError(f"cannot apply {spec.method} to {spec.base}: {one_line(error)}") from None
    if spec.method == "lora-frozen-a":
        for name, parameter in model.named_parameters():
            if ".lora_A." in name:
                parameter.requires_grad_(False)
    if checkpoint:
        unexpected = model.load_state_dict(load_file(checkpoint / TRAINABLE_FILE),
                                           strict=False).unexpected_keys
        if unexpected:
            raise ModelError(f"checkpoint {checkpoint} does not fit this model ({unexpected[0]})")
    return model


def lora_config(spec: RunSpec, base: nn.Module) -> LoraConfig:
    causal = spec.task == "causal-lm"
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM if causal else TaskType.SEQ_CLS,
        r=spec.rank,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.dropout,
        target_modules=target_modules(spec.target_modules, base),
        use_rslora=spec.method == "rslora",
        use_dora=spec.method == "dora",
        init_lora_weights="pissa" if spec.method == "pissa" else True,
    )


def target_modules(targets: str, base: nn.Module) -> str | list[str]:
    """PEFT's target_modules for a preset (attention, all-linear) or comma-separated names."""
    if targets == "all-linear":
        return targets
    if targets != "attention":
        return targets.split(",")
    names = [
        name for name, module in base.named_modules()
        if isinstance(module, (nn.Linear, Conv1D))
        and any(_ATTENTION.search(part) for part in name.split(".")[:-1])
    ]
    if not names:
        raise ModelError("the base has no linear layers inside attention blocks; name the "
                         "target modules explicitly")
    return names


def save_trainable(model: nn.Module, path: Path) -> None:
    """The parameters being trained, under the names `build_model` loads them back with."""
    save_file({name: parameter.detach().contiguous()
               for name, parameter in model.named_parameters() if parameter.requires_grad}, path)


def save_pissa_init(model: PeftModel, directory: Path) -> None:
    """PiSSA's starting adapter, which `save_output` subtracts to make the output relative to
    the original base. It is saved as a plain init so that reloading it does not decompose the
    base a second time."""
    config = model.peft_config["default"]
    config.init_lora_weights = True
    try:
        model.save_pretrained(directory)
    finally:
        config.init_lora_weights = "pissa"


def save_output(model: nn.Module, tokenizer: PreTrainedTokenizerBase, spec: RunSpec,
                directory: Path, pissa_init: Path) -> None:
    """Write the run's product: a PEFT adapter (for PiSSA, converted to apply to the original
    base) or, for full fine-tuning, the whole model with its tokenizer."""
    if spec.method == "pissa":
        model.save_pretrained(directory, path_initial_model_for_weight_conversion=str(pissa_init))
    else:
        model.save_pretrained(directory)
    if not spec.uses_adapter:
        tokenizer.save_pretrained(directory)


def _load_base(spec: RunSpec, tokenizer: PreTrainedTokenizerBase, num_labels: int,
               source: Path | None = None) -> PreTrainedModel:
    """The base, or a full fine-tune's checkpoint, in the dtype the method trains it in: float32
    master weights for full fine-tuning, the spec's dtype for an adapter's frozen base."""
    dtype = getattr(torch, spec.dtype) if spec.uses_adapter else torch.float32
    try:
        if spec.task == "causal-lm":
            return AutoModelForCausalLM.from_pretrained(
                source or spec.base, dtype=dtype, trust_remote_code=False)
        return AutoModelForSequenceClassification.from_pretrained(
            source or spec.base, dtype=dtype, trust_remote_code=False,
            num_labels=num_labels, pad_token_id=tokenizer.pad_token_id)
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(f"cannot load base model {source or spec.base}: {one_line(error)}") from None


