"""The RoPE row order of query and key projections in llama.cpp's GGUF, Meta's and torchtune's
layout, against Hugging Face's.

Hugging Face's LLaMA rotates the two halves of each head (rotate_half); Meta's original code, and so
llama.cpp and torchtune, rotate interleaved pairs. Converters reorder the rows of q_proj / k_proj
(and of a LoRA B factor) per head: llama.cpp's `convert_hf_to_gguf.LlamaModel.permute`, torchtune's
`convert_weights._permute`. Both are `permute_rows` below, with the query's head count for q and the
key/value head count for k; `unpermute_rows` reads such a tensor back in Hugging Face's order.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from spectui.checkpoint.files import CheckpointError

if TYPE_CHECKING:
    import torch


def permute_rows(t: torch.Tensor, heads: int) -> torch.Tensor:
    """Hugging Face → interleaved (what the converters write)."""
    rows = t.shape[0]
    return t.reshape(heads, 2, rows // heads // 2, *t.shape[1:]).transpose(1, 2).reshape(t.shape)


def unpermute_rows(t: torch.Tensor, heads: int) -> torch.Tensor:
    """Interleaved → Hugging Face: the inverse of `permute_rows`."""
    rows = t.shape[0]
    return t.reshape(heads, rows // heads // 2, 2, *t.shape[1:]).transpose(1, 2).reshape(t.shape)


def check_rows(rows: int, heads: int, path: Path, name: str) -> None:
    """The row count must split into `heads` heads of an even size, or the order cannot be undone."""
    if heads < 1 or rows % (2 * heads):
        raise CheckpointError(path, f"tensor {name} has {rows} rows, which do not split into {heads} heads "
                                    "of an even size; its RoPE row order cannot be undone")


def head_counts(config: dict, path: Path) -> tuple[int, int]:
    """(query heads, key/value heads) from a config: the counts the row order depends on."""
    heads = config.get("num_attention_heads")
    kv = config.get("num_key_value_heads", heads)
    for value, field in ((heads, "num_attention_heads"), (kv, "num_key_value_heads")):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CheckpointError(path, f"gives no usable {field} ({value!r}), which undoing the RoPE row order "
                                        "of q_proj / k_proj needs")
    return heads, kv
