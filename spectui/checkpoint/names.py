"""How weight tensors are named across model classes, and what one scanned matrix is."""

from __future__ import annotations

import re
from dataclasses import dataclass

from spectui.checkpoint.experts import expert_of

# Wrappers that the same weights carry under different model classes (…ForCausalLM vs bare model,
# PEFT's wrapper): stripped from the front, repeatedly, before matching.
NAME_PREFIXES = (
    "base_model.model.", "model.", "transformer.", "bert.", "roberta.", "deberta.", "distilbert.",
    "gpt_neox.", "language_model.",
)
LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.(.+)\.weight$")


def normalise(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in NAME_PREFIXES:
            if name.startswith(prefix) and len(name) > len(prefix):
                name, changed = name[len(prefix):], True
    return name


# Mixtral's experts on disk (w1 gate, w3 up, w2 down) pair with the names 3-D experts are split into
_MIXTRAL_EXPERT = re.compile(r"(^|\.)block_sparse_moe\.experts\.(\d+)\.(w1|w2|w3)\.weight$")
_MIXTRAL_MATRIX = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}


def pair_key(name: str) -> str:
    """The name base and tuned tensors are matched by: without model-class prefixes, Mixtral's expert
    names spelt as transformers ≥ 5 splits its 3-D experts."""
    name = normalise(name)
    return _MIXTRAL_EXPERT.sub(lambda m: f"{m[1]}mlp.experts.{m[2]}.{_MIXTRAL_MATRIX[m[3]]}.weight", name)


def short_name(name: str) -> str:
    """How a matrix is shown: without model-class prefixes and the `.weight` suffix."""
    return normalise(name).removesuffix(".weight")


def layer_and_module(name: str) -> tuple[int | None, str]:
    """(layer, path inside it) of a weight; an expert's index is left out of the path, so every
    expert of a layer has the same module (`mlp.experts.gate_proj`): `expert_of` gives the index."""
    name = expert_of(name)[1]
    match = LAYER.search(name)
    if match:
        return int(match[1]), match[2]
    return None, normalise(name).removesuffix(".weight")


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
    expert: int | None = None  # a mixture-of-experts matrix's expert (module: e.g. mlp.experts.gate_proj)
