"""Pair base and tuned weight matrices by normalised name; give a reason for every tensor left out."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where tensors are touched: listing stays instant
    import torch

from spectui.checkpoint.experts import expert_of
from spectui.checkpoint.files import CheckpointError, TensorStore
from spectui.checkpoint.names import LAYER, MatrixSpec, layer_and_module, pair_key
from spectui.checkpoint.source import WeightSource

# Architectures whose linear layers are GPT-2 style Conv1D, stored as (in, out).
CONV1D_MODEL_TYPES = {"gpt2", "openai-gpt", "imagegpt", "decision_transformer"}
_EMBEDDING = re.compile(r"(embed|wte|wpe|word_embeddings|position_embeddings|token_type|shared\.weight)")
_LM_HEAD = re.compile(r"(^|\.)(lm_head|embed_out)\.")


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


@dataclass
class Pairing:
    matrices: list[MatrixSpec] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def pair(base: TensorStore, tuned: WeightSource, include_embeddings: bool = False) -> Pairing:
    """Match every base tensor to its tuned counterpart; each one not scanned gets its reason. A 3-D
    expert tensor is matched expert by expert (`experts.py`), with either layout on either side."""
    conv1d = str(base.config.get("model_type", "")) in CONV1D_MODEL_TYPES
    vocab = base.config.get("vocab_size")
    base_experts, tuned_experts = base.experts(), tuned.experts()
    tuned_by_norm: dict[str, str] = {}
    for tuned_name in [*tuned.names(), *tuned_experts.parts]:  # a stored tensor wins over an expert part
        tuned_by_norm.setdefault(pair_key(tuned_name), tuned_name)
    result = Pairing()
    seen_tuned = set()

    def counterpart(name: str) -> str | None:
        tuned_name = tuned_by_norm.get(pair_key(name))
        if tuned_name is not None:
            part = tuned_experts.get(tuned_name)
            seen_tuned.add(part.stored if part is not None else tuned_name)
        return tuned_name

    for stored, name in base_experts.expanded(base.names()):
        part = name != stored
        if part:
            counterpart(stored)  # the same 3-D tensor in the tuned model: its parts pair below
        tuned_name = counterpart(name)
        reason = _skip_reason(base, tuned, name, tuned_name, include_embeddings, vocab)
        if reason:
            result.skipped.append(Skipped(name, reason))
            continue
        role = _role(name, base.shape(name), vocab)
        transposed = conv1d and role == "linear" and not part  # expert parts read as (out, in)
        rows, cols = base.shape(name)
        layer, module = layer_and_module(name)
        result.matrices.append(MatrixSpec(
            name=name, tuned_name=tuned_name, shape=(cols, rows) if transposed else (rows, cols),
            role=role, transposed=transposed, layer=layer, module=module, expert=expert_of(name)[0],
        ))
    for tuned_name in tuned.names():
        if tuned_name not in seen_tuned:
            result.skipped.append(Skipped(tuned_name, tuned.unreadable(tuned_name) or "only in tuned"))
    if not seen_tuned:
        raise CheckpointError(
            tuned.path, f"shares no tensor name with the base {base.path}; are they the same architecture?"
        )
    return result


def _skip_reason(base, tuned, name, tuned_name, include_embeddings, vocab) -> str | None:
    shape = base.shape(name)
    unreadable = base.unreadable(name) or (tuned.unreadable(tuned_name) if tuned_name is not None else None)
    if unreadable:  # what it is (a quantization state, …) says more than where it is missing
        return unreadable
    if tuned_name is None:
        return "not in tuned"
    if len(shape) != 2:
        return f"{len(shape)}-D tensor"
    if 0 in shape:
        return f"empty {_fmt(shape)} matrix"
    if tuple(tuned.shape(tuned_name)) != tuple(shape):
        return f"shape mismatch: base {_fmt(shape)}, tuned {_fmt(tuned.shape(tuned_name))}"
    if not tuned.changes(tuned_name):
        return "not changed by the adapter"
    role = _role(name, shape, vocab)
    if role != "linear" and not include_embeddings:
        return f"{role} (off by default; --include-embeddings scans it)"
    return None


def _role(name: str, shape: tuple[int, ...], vocab) -> str:
    if _LM_HEAD.search(name):
        return "lm_head"
    in_layer = LAYER.search(name) is not None
    if _EMBEDDING.search(name) or (not in_layer and vocab is not None and vocab in shape):
        return "embedding"
    return "linear"


def _fmt(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def load_matrix(source, key: str, spec: MatrixSpec, stored: torch.Tensor | None = None,
                as_stored: bool = False) -> torch.Tensor:
    """One matrix in (out, in) orientation as float32 (from the tensor as `stored`, when already read);
    with `as_stored`, a bfloat16 or float16 one stays so (half the bytes held: its readers convert it
    a slab at a time, exactly). Non-finite weights are bad input."""
    import numpy as np
    import torch

    w = source.load(key) if stored is None else stored
    if not (as_stored and w.dtype in (torch.bfloat16, torch.float16)):
        w = w.float()
    rows = w.reshape(w.shape[0], -1) if w.ndim else w.reshape(1, 1)
    # numpy's check (far faster than torch's on one thread), a slab at a time (no matrix-sized mask)
    if not all(np.isfinite(rows[i: i + 1024].float().numpy()).all() for i in range(0, rows.shape[0], 1024)):
        raise CheckpointError(source.path, f"tensor {key} contains NaN or infinite values")
    return (w.T if spec.transposed else w).contiguous()
