"""W0 + B @ A as a float32 tensor, the way PEFT's merge rounds it (the product, then the sum), a
slab of rows at a time: neither the full product nor a second copy of W is ever held, which was
the memory peak of reading a LoRA-tuned matrix (three matrix-sized temporaries)."""

from __future__ import annotations

import torch

_ROWS = 1024


def plus_low_rank(w0: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    w = w0.to(torch.float32, copy=True)
    for start in range(0, w.shape[0], _ROWS):
        w[start: start + _ROWS] += b[start: start + _ROWS] @ a
    return w
