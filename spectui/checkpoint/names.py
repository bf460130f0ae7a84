"""How weight tensors are named across model classes, and what one scanned matrix is."""

from __future__ import annotations

import re
from dataclasses import dataclass

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


def short_name(name: str) -> str:
    """How a matrix is shown: without model-class prefixes and the `.weight` suffix."""
    return normalise(name).removesuffix(".weight")


def layer_and_module(name: str) -> tuple[int | None, str]:
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
