"""The paper's intruder test on stored max|cos| values: one definition for every reader (the
scan's results, a run's intruder curve), with numpy only, so the TUI can count without torch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def count_intruders(max_cos: np.ndarray, k: int, epsilon: float) -> int:
    """The paper's count: how many of the top-k tuned singular vectors have max|cos| < ε. Compared
    in float32, as max|cos| is stored, so every reader counts the same."""
    return int((np.asarray(max_cos)[:k] < np.float32(epsilon)).sum())


def intruder_ranks(max_cos: np.ndarray, k: int, epsilon: float) -> list[int]:
    """0-based ranks (in the tuned spectrum) of the intruders among the top k."""
    return [int(j) for j in np.flatnonzero(np.asarray(max_cos)[:k] < np.float32(epsilon))]


@dataclass(frozen=True)
class MatrixCounts:
    """One matrix pair's flags at a single (k, ε), without spectra: what `spectui scan --counts-only`
    fills. `lower`/`upper` bound max|cos| of each of the top k tuned vectors (equal where it was
    found exactly). `decided_by`: "compact" (certified from W0's cached decomposition,
    `compact.CompactBase`), "bounds" (certified from products with W0 on its cached spectrum),
    "reduction" (certified on W0's Gram reduced to a band), "exact" (the full comparison,
    as a plain scan does it), "cache" (a full result was cached) or "unchanged" (W = W0)."""

    shape: tuple[int, int]
    k: int
    epsilon: float
    lower: np.ndarray
    upper: np.ndarray
    decided_by: str

    @property
    def unchanged(self) -> bool:
        return self.decided_by == "unchanged"

    def intruder_ranks(self, k: int, epsilon: float) -> list[int]:
        if k > self.k or epsilon != self.epsilon:
            raise ValueError(f"these counts answer k ≤ {self.k} at ε = {self.epsilon} only "
                             "(scan without --counts-only)")
        return [int(j) for j in np.flatnonzero(self.upper[:k] < np.float32(epsilon))]

    def intruders(self, k: int, epsilon: float) -> int:
        return len(self.intruder_ranks(k, epsilon))

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        meta = {"shape": f"{self.shape[0]},{self.shape[1]}", "k": str(self.k), "epsilon": repr(self.epsilon),
                "decided_by": self.decided_by}
        return {"lower": self.lower, "upper": self.upper}, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, str]) -> MatrixCounts:
        rows, cols = (int(x) for x in meta["shape"].split(","))
        return cls(shape=(rows, cols), k=int(meta["k"]), epsilon=float(meta["epsilon"]), lower=arrays["lower"],
                   upper=arrays["upper"], decided_by=meta["decided_by"])
