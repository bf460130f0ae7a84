"""Pair base and tuned weight matrices by normalised name; give a reason for every tensor left out."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where tensors are touched: listing stays instant
    import torch

from spectui.checkpoint.adapters import LoraAdapter, LoraModule, is_adapter_dir
from spectui.checkpoint.files import CheckpointError, TensorStore, open_store

# Wrappers that the same weights carry under different model classes (…ForCausalLM vs bare model,
# PEFT's wrapper): stripped from the front, repeatedly, before matching.
NAME_PREFIXES = (
    "base_model.model.", "model.", "transformer.", "bert.", "roberta.", "deberta.", "distilbert.",
    "gpt_neox.", "language_model.",
)
# Architectures whose linear layers are GPT-2 style Conv1D, stored as (in, out).
CONV1D_MODEL_TYPES = {"gpt2", "openai-gpt", "imagegpt", "decision_transformer"}
_EMBEDDING = re.compile(r"(embed|wte|wpe|word_embeddings|position_embeddings|token_type|shared\.weight)")
_LM_HEAD = re.compile(r"(^|\.)(lm_head|embed_out)\.")
_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.(.+)\.weight$")


def normalise(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in NAME_PREFIXES:
            if name.startswith(prefix) and len(name) > len(prefix):
                name, changed = name[len(prefix):], True
    return name


def short_name(name: str) -> str:
    """How a matrix is shown: without model-class prefixes and the `.weight` suffix."""
    return normalise(name).removesuffix(".weight")


@dataclass(frozen=True)
class MatrixSpec:
    """One matrix to scan: `name` is the base checkpoint's; shape is (out, in) after orientation."""

    name: str
    tuned_name: str
    shape: tuple[int, int]
    role: str  # linear | embedding | lm_head
    transposed: bool  # stored (in, out), as GPT-2 Conv1D
    layer: int | None
    module: str  # path inside the layer, e.g. self_attn.q_proj; the name itself outside layers


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


class AdaptedModel:
    """The tuned weights a LoRA adapter stands for: base tensors, merged on read."""

    def __init__(self, base: TensorStore, adapter: LoraAdapter):
        self.base = base
        self.adapter = adapter
        self.path = adapter.path
        by_norm = {normalise(n): n for n in base.names()}
        self._modules: dict[str, LoraModule] = {}
        self._replaced: dict[str, str] = {}
        for weight_name, module in adapter.modules.items():
            base_name = by_norm.get(normalise(weight_name))
            if base_name is None:
                raise CheckpointError(
                    adapter.store.path,
                    f"adapts {module.module}, which the base {base.path} does not have; "
                    "the adapter was made for another base model",
                )
            adapter.check_fits(module, base.shape(base_name))
            self._modules[base_name] = module
        for weight_name, key in adapter.replacements.items():
            base_name = by_norm.get(normalise(weight_name), weight_name)
            self._replaced[base_name] = key

    @property
    def label(self) -> str:
        return self.path.name

    @property
    def config(self) -> dict:
        return self.base.config

    def names(self) -> list[str]:
        extra = [n for n in self._replaced if n not in self.base]
        return self.base.names() + extra

    def __contains__(self, name: str) -> bool:
        return name in self.base or name in self._replaced

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self._replaced:
            return self.adapter.store.shape(self._replaced[name])
        return self.base.shape(name)

    def changes(self, name: str) -> bool:
        return name in self._modules or name in self._replaced

    def load(self, name: str) -> torch.Tensor:
        """A saved replacement stands in for the base weight; LoRA, if any, applies on top (as PEFT loads)."""
        replaced = name in self._replaced
        w = self.adapter.store.load(self._replaced[name]) if replaced else self.base.load(name)
        return self.adapter.merge(self._modules[name], w) if name in self._modules else w

    def delta_factors(self, spec: MatrixSpec) -> tuple[torch.Tensor, torch.Tensor] | None:
        """ΔW = B @ A in scan orientation for plain LoRA (not DoRA), so its spectrum costs O(r²)."""
        module = self._modules.get(spec.name)
        if module is None or module.magnitude_key is not None or spec.name in self._replaced:
            return None
        b, a = self.adapter.factors(module)
        # The scan orientation is (out, in) for linear layers and stored for embeddings.
        return (a.T, b.T) if module.embedding else (b, a)


def open_model(path: Path, base: TensorStore | None = None) -> TensorStore | AdaptedModel:
    """A checkpoint, or an adapter applied to `base` (which must then be given)."""
    if not path.exists():
        raise CheckpointError(path, "no such file or directory")
    if is_adapter_dir(path):
        if base is None:
            raise CheckpointError(path, "is a PEFT adapter and needs a base model")
        return AdaptedModel(base, LoraAdapter(path))
    return open_store(path)


@dataclass
class Pairing:
    matrices: list[MatrixSpec] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def pair(base: TensorStore, tuned: TensorStore | AdaptedModel, include_embeddings: bool = False) -> Pairing:
    """Match every base tensor to its tuned counterpart; each one not scanned gets its reason."""
    conv1d = str(base.config.get("model_type", "")) in CONV1D_MODEL_TYPES
    vocab = base.config.get("vocab_size")
    tuned_by_norm = {normalise(n): n for n in tuned.names()}
    result = Pairing()
    seen_tuned = set()
    for name in base.names():
        tuned_name = tuned_by_norm.get(normalise(name))
        if tuned_name is not None:
            seen_tuned.add(tuned_name)
        reason = _skip_reason(base, tuned, name, tuned_name, include_embeddings, vocab)
        if reason:
            result.skipped.append(Skipped(name, reason))
            continue
        role = _role(name, base.shape(name), vocab)
        transposed = conv1d and role == "linear"
        rows, cols = base.shape(name)
        layer, module = layer_and_module(name)
        result.matrices.append(MatrixSpec(
            name=name, tuned_name=tuned_name, shape=(cols, rows) if transposed else (rows, cols),
            role=role, transposed=transposed, layer=layer, module=module,
        ))
    for tuned_name in tuned.names():
        if tuned_name not in seen_tuned:
            result.skipped.append(Skipped(tuned_name, "only in tuned"))
    if not seen_tuned:
        raise CheckpointError(
            tuned.path, f"shares no tensor name with the base {base.path}; are they the same architecture?"
        )
    return result


def _skip_reason(base, tuned, name, tuned_name, include_embeddings, vocab) -> str | None:
    shape = base.shape(name)
    if tuned_name is None:
        return "not in tuned"
    if len(shape) != 2:
        return f"{len(shape)}-D tensor"
    if tuple(tuned.shape(tuned_name)) != tuple(shape):
        return f"shape mismatch: base {_fmt(shape)}, tuned {_fmt(tuned.shape(tuned_name))}"
    if isinstance(tuned, AdaptedModel) and not tuned.changes(tuned_name):
        return "not changed by the adapter"
    role = _role(name, shape, vocab)
    if role != "linear" and not include_embeddings:
        return f"{role} (off by default; --include-embeddings scans it)"
    return None


def _role(name: str, shape: tuple[int, ...], vocab) -> str:
    if _LM_HEAD.search(name):
        return "lm_head"
    in_layer = _LAYER.search(name) is not None
    if _EMBEDDING.search(name) or (not in_layer and vocab is not None and vocab in shape):
        return "embedding"
    return "linear"


def layer_and_module(name: str) -> tuple[int | None, str]:
    match = _LAYER.search(name)
    if match:
        return int(match[1]), match[2]
    return None, normalise(name).removesuffix(".weight")


def _fmt(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def load_matrix(source, key: str, spec: MatrixSpec) -> torch.Tensor:
    """One matrix in (out, in) orientation as float32; non-finite weights are bad input."""
    import numpy as np

    w = source.load(key).float()
    if not np.isfinite(w.numpy()).all():  # numpy's check: 20× faster than torch's on one thread
        raise CheckpointError(source.path, f"tensor {key} contains NaN or infinite values")
    return (w.T if spec.transposed else w).contiguous()
