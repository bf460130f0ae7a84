"""The paper's algorithm written the naive way: two full float64 SVDs per matrix, nothing cached."""

from __future__ import annotations

import torch


def naive_max_cos(w0: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    u0, _, _ = torch.linalg.svd(w0.double(), full_matrices=False)
    u, _, _ = torch.linalg.svd(w.double(), full_matrices=False)
    return (u.T @ u0).abs().max(dim=1).values


def naive_intruders(w0: torch.Tensor, w: torch.Tensor, k: int = 10, epsilon: float = 0.5) -> list[int]:
    return [int(j) for j in torch.nonzero(naive_max_cos(w0, w)[:k] < epsilon).flatten()]
