"""Scan results read at any (k, ε): the one place intruders are counted, totalled, swept and
summarised, for the CLI, the TUI, the reports and the runs' intruder curves alike.

Only numpy is needed here (no torch): the TUI reads results and run files with it while the
scan's heavy imports happen in workers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import median
from typing import TYPE_CHECKING, Protocol

from spectui.defaults import EPSILON_SWEEP

if TYPE_CHECKING:
    from spectui.checkpoint.comparison import Comparison
    from spectui.checkpoint.names import MatrixSpec
    from spectui.spectral import MatrixResult


class Failure(Protocol):
    """A matrix the scan could not compute (the engine's `MatrixFailed`)."""

    name: str
    message: str
    bad_input: bool


@dataclass(frozen=True)
class ModelSummary:
    """One tuned model at (k, ε): the summary row of the CLI, the TUI and every report."""

    label: str
    description: str
    total: int
    with_intruders: int
    scanned: int
    matrices: int
    median_rel_norm: float | None  # None until a matrix is scanned
    median_effective_rank: float | None
    by_epsilon: dict[str, int]
    skipped: int


def is_unchanged(result: MatrixResult) -> bool:
    """ΔW is exactly zero: every singular value of W − W0 is 0 (the engine records a pair whose
    matrices are equal so, without decomposing W; a non-zero ΔW has a positive singular value)."""
    return not result.sigma_delta.any()


class ScanResults:
    """Per (tuned model index, base matrix name) results of one comparison, and the failures."""

    def __init__(self, comparison: Comparison, results: Mapping[tuple[int, str], MatrixResult],
                 errors: Mapping[str, Failure]):
        self.comparison = comparison
        self.results = dict(results)
        self.errors = dict(errors)

    def result(self, model: int, name: str) -> MatrixResult | None:
        return self.results.get((model, name))

    def matrices(self, model: int) -> list[tuple[MatrixSpec, MatrixResult]]:
        """The model's scanned matrices, in checkpoint order."""
        pairs = ((spec, self.results.get((model, spec.name))) for spec in self.comparison.tuned[model].pairing.matrices)
        return [(spec, result) for spec, result in pairs if result is not None]

    def failures(self, model: int) -> list[Failure]:
        tuned = self.comparison.tuned[model]
        return [failure for failure in self.errors.values() if tuned.spec(failure.name) is not None]

    def unchanged(self, model: int) -> list[str]:
        """The model's scanned matrices equal to the base's (as float32, value for value), in
        checkpoint order: what the fine-tune left as it was."""
        return [spec.name for spec, result in self.matrices(model) if is_unchanged(result)]

    def identical_to_base(self, model: int) -> bool:
        """Whether every matrix paired with the base was scanned and found unchanged: a fine-tune
        that did nothing (or a copy of the base)."""
        paired = self.comparison.tuned[model].pairing.matrices
        return bool(paired) and len(self.unchanged(model)) == len(paired)

    def total(self, model: int, k: int, epsilon: float) -> int:
        return sum(r.intruders(k, epsilon) for _, r in self.matrices(model))

    def epsilon_curve(self, model: int, k: int, grid: Sequence[float] = EPSILON_SWEEP) -> dict[str, int]:
        """Total intruders at each ε of the paper's sweep (Fig. 4), keyed as the JSON keys them."""
        return {str(eps): self.total(model, k, eps) for eps in grid}

    def k_curve(self, model: int, epsilon: float, ks: Sequence[int]) -> list[int]:
        """Total intruders as k grows at a fixed ε (Fig. 15): max|cos| is kept for TOP_VECTORS."""
        return [self.total(model, k, epsilon) for k in ks]

    @property
    def largest_k(self) -> int:
        """The largest k the stored results answer."""
        return max((len(r.max_cos) for r in self.results.values()), default=0)

    def summary(self, model: int, k: int, epsilon: float) -> ModelSummary:
        tuned = self.comparison.tuned[model]
        results = [r for _, r in self.matrices(model)]
        return ModelSummary(
            label=tuned.label, description=tuned.description,
            total=sum(r.intruders(k, epsilon) for r in results),
            with_intruders=sum(1 for r in results if r.intruders(k, epsilon)),
            scanned=len(results), matrices=len(tuned.pairing.matrices),
            median_rel_norm=median(r.delta_rel_norm for r in results) if results else None,
            median_effective_rank=median(r.delta_effective_rank for r in results) if results else None,
            by_epsilon=self.epsilon_curve(model, k),
            skipped=len(tuned.pairing.skipped),
        )

    def summaries(self, k: int, epsilon: float) -> list[ModelSummary]:
        return [self.summary(i, k, epsilon) for i in range(len(self.comparison.tuned))]
