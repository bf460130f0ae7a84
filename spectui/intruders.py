"""The paper's intruder test on stored max|cos| values: one definition for every reader (the
scan's results, a run's intruder curve), with numpy only, so the TUI can count without torch."""

from __future__ import annotations

import numpy as np


def count_intruders(max_cos: np.ndarray, k: int, epsilon: float) -> int:
    """The paper's count: how many of the top-k tuned singular vectors have max|cos| < ε. Compared
    in float32, as max|cos| is stored, so every reader counts the same."""
    return int((np.asarray(max_cos)[:k] < np.float32(epsilon)).sum())


def intruder_ranks(max_cos: np.ndarray, k: int, epsilon: float) -> list[int]:
    """0-based ranks (in the tuned spectrum) of the intruders among the top k."""
    return [int(j) for j in np.flatnonzero(np.asarray(max_cos)[:k] < np.float32(epsilon))]
