"""Scan results read at any (k, ε): the one place intruders are counted, totalled, swept and
summarised, for the CLI, the TUI, the reports and the runs' intruder curves alike.

Only numpy is needed here (no torch): the TUI reads results and run files with it while the
scan's heavy imports happen in workers.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from statistics import median
from typing import TYPE_CHECKING, Protocol

from spectui.defaults import EPSILON_SWEEP

if TYPE_CHECKING:
    from spectui.checkpoint.comparison import Comparison
    from spectui.checkpoint.names import MatrixSpec
    from spectui.intruders import MatrixCounts
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
    # the follow-up literature's metrics, medians over the scanned matrices at r = k
    median_max_angle: float | None = None  # largest principal angle (degrees), top-k subspaces of W0 and W
    median_rotation: float | None = None  # mean sin² of those principal angles
    median_base_share: float | None = None  # share of ‖ΔW‖²_F inside the base's top-k left singular subspace
    median_intruder_share: float | None = None  # share of ‖ΔW‖²_F along the intruders at (k, ε)
    median_drift: float | None = None  # mean |σ_j(W) − σ_j(W0)| / σ_j(W0) over j < k


def is_unchanged(result: MatrixResult | MatrixCounts) -> bool:
    """ΔW is exactly zero (`MatrixResult.unchanged`, `MatrixCounts.unchanged`)."""
    return result.unchanged


class ScanResults:
    """Per (tuned model index, base matrix name) results of one comparison, and the failures."""

    def __init__(self, comparison: Comparison, results: Mapping[tuple[int, str], MatrixResult],
                 errors: Mapping[str, Failure]):
        self.comparison = comparison
        self.results = dict(results)
        self.errors = dict(errors)

    @property
    def counts_only(self) -> bool:
        """Whether the scan found only the flags at its (k, ε) (`spectui scan --counts-only`):
        no spectra, curves or follow-up metrics to read."""
        from spectui.intruders import MatrixCounts

        return any(isinstance(r, MatrixCounts) for r in self.results.values())

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
            **self.followup_medians(model, k, epsilon),
        )

    def followup_medians(self, model: int, k: int, epsilon: float) -> dict[str, float | None]:
        """The follow-up metrics' medians over the model's scanned matrices (None where none has
        one: a ΔW = 0 has no shares), keyed as ModelSummary's fields."""
        results = [r for _, r in self.matrices(model)]
        return {
            "median_max_angle": _median(r.max_principal_angle(k) for r in results),
            "median_rotation": _median(r.subspace_rotation(k) for r in results),
            "median_base_share": _median(r.base_subspace_share(k) for r in results),
            "median_intruder_share": _median(r.intruder_share(k, epsilon) for r in results),
            "median_drift": _median(r.mean_abs_drift(k) for r in results),
        }

    def update_similarity(self) -> UpdateSimilarity | None:
        """How alike the tuned models' updates are (`update_similarity`), for two or more tuned
        models; computed once (it reads the tensors again, one matrix at a time) and kept. Matrices
        the scan could not read are left out."""
        if len(self.comparison.tuned) < 2:
            return None
        if getattr(self, "_similarity", None) is None:
            self._similarity = update_similarity(self.comparison, skip=set(self.errors))
        return self._similarity

    def summaries(self, k: int, epsilon: float) -> list[ModelSummary]:
        return [self.summary(i, k, epsilon) for i in range(len(self.comparison.tuned))]


def _median(values) -> float | None:
    present = [v for v in values if v is not None]
    return median(present) if present else None


@dataclass(frozen=True)
class UpdateSimilarity:
    """Cosine similarity of tuned models' updates, ⟨ΔW_a, ΔW_b⟩_F / (‖ΔW_a‖_F ‖ΔW_b‖_F): per matrix
    that both change, and for the whole model (every matrix's ΔW one vector; a matrix only one model
    changes adds to its norm alone). Near 1: the fine-tunes moved the same directions."""

    models: list[int]  # tuned model indices, in the order of `cosine`'s rows
    labels: list[str]
    cosine: list[list[float | None]]  # whole model; None where a model's update is zero
    per_matrix: dict[tuple[int, int], dict[str, float | None]]  # (a, b), a < b → base matrix name → cosine
    left_out: list[str]  # matrices that could not be read

    def between(self, a: int, b: int) -> float | None:
        return self.cosine[self.models.index(a)][self.models.index(b)]

    def matrices(self, a: int, b: int) -> dict[str, float | None]:
        return self.per_matrix[(min(a, b), max(a, b))]


def update_similarity(comparison: Comparison, models: Sequence[int] | None = None,
                      skip: Collection[str] = ()) -> UpdateSimilarity:
    """Stream the comparison one base matrix at a time: each model's ΔW as its low-rank factors
    (`delta_factors`, never multiplied out) or, for a full checkpoint or a kind that is not B·A, as
    W − W0; the inner products and norms summed as they come. At most W0, two dense updates and the
    tuned matrix being read are in memory: a dense update is re-read for each later model rather
    than kept (low-rank factors are kept, they are small)."""
    from spectui.checkpoint.files import CheckpointError

    models = list(range(len(comparison.tuned))) if models is None else list(models)
    pairs = [(a, b) for x, a in enumerate(models) for b in models[x + 1:]]
    norms, inner = dict.fromkeys(models, 0.0), dict.fromkeys(pairs, 0.0)
    per_matrix: dict[tuple[int, int], dict[str, float | None]] = {pair: {} for pair in pairs}
    left_out = []
    for name in comparison.matrix_names(models):
        if name in skip:
            continue
        changing = [i for i in models if comparison.tuned[i].spec(name) is not None]
        try:
            here, dots = _one_matrix(comparison, name, changing)
        except CheckpointError:
            left_out.append(name)
            continue
        for i, value in here.items():
            norms[i] += value
        for pair, value in dots.items():
            inner[pair] += value
            product = here[pair[0]] * here[pair[1]]
            per_matrix[pair][name] = max(-1.0, min(1.0, value / product ** 0.5)) if product > 0 else None

    def cosine(a: int, b: int) -> float | None:
        if norms[a] <= 0 or norms[b] <= 0:
            return None
        if a == b:
            return 1.0
        value = inner[(a, b) if (a, b) in inner else (b, a)]
        return max(-1.0, min(1.0, value / (norms[a] * norms[b]) ** 0.5))

    return UpdateSimilarity(models=models, labels=[comparison.tuned[i].label for i in models],
                            cosine=[[cosine(a, b) for b in models] for a in models],
                            per_matrix=per_matrix, left_out=left_out)


def _one_matrix(comparison: Comparison, name: str, changing: list[int]):
    """‖ΔW_i‖² and ⟨ΔW_a, ΔW_b⟩ (a before b) for one base matrix and the models that change it."""
    from spectui.checkpoint.pairing import load_matrix
    from spectui.spectral import update_inner, update_norm2

    base, kept = [], {}  # W0 (read once, when a dense update first needs it); low-rank factors

    def update(i: int):
        if i in kept:
            return kept[i]
        model = comparison.tuned[i]
        spec = model.spec(name)
        if (factors := model.source.delta_factors(spec)) is not None:
            kept[i] = factors
            return factors
        if not base:
            base.append(load_matrix(comparison.base, name, spec))
        return load_matrix(model.source, spec.tuned_name, spec) - base[0]

    norms, dots = {}, {}
    for x, a in enumerate(changing):
        later = changing[x + 1:]
        if a in norms and not later:
            break
        delta_a = update(a)
        norms.setdefault(a, update_norm2(delta_a))
        for b in later:
            delta_b = update(b)
            norms.setdefault(b, update_norm2(delta_b))
            dots[(a, b)] = update_inner(delta_a, delta_b)
            del delta_b
        del delta_a
    return norms, dots
