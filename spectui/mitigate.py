"""Scale intruder dimensions after training: the paper's causal intervention, in memory or on disk.

Shuttleworth et al. (arXiv 2410.21228, §6): with W = W0 + ΔW = U S Vᵀ and a chosen intruder
(u_j, σ_j, v_j), W' = W + (λ − 1) σ_j u_j v_jᵀ. λ = 1 changes nothing and λ = 0 removes the component.
Because W' keeps W's singular vectors, its spectrum is W's with each chosen σ_j replaced by λ·σ_j.
Scope `top` scales only the top intruder of each matrix (the paper); `all` every intruder among the
top k (PEFT's `reduce_intruder_dimension`). Intruders come from spectui's own scan results, so they
are the ones `spectui scan` counts; W' is built from a float64 SVD of the same W, whose singular
values are ordered the same way, so rank j names the same direction in both.

Output keeps the input's kind: a full checkpoint is rewritten in its own files, formats and dtypes;
a LoRA adapter gets ΔW' re-factored to rank r (or r + number of intruders, nothing lost), or is
written merged into the base's checkpoint. Every other adapter kind (OFT, IA³, VeRA, …: its ΔW is
not B·A, or not only) is written merged, and `export_note` says so. Writing is atomic and never
touches the sources.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spectui.checkpoint.adapters import LoraModule
from spectui.checkpoint.comparison import Comparison
from spectui.checkpoint.files import CheckpointError
from spectui.checkpoint.names import MatrixSpec, normalise
from spectui.checkpoint.pairing import load_matrix
from spectui.checkpoint.writer import write_checkpoint, write_lora_adapter
from spectui.defaults import DEFAULT_EPSILON, DEFAULT_K
from spectui.results import ScanResults
from spectui.spectral import MatrixResult


@dataclass(frozen=True)
class MatrixPlan:
    """The intruders chosen in one matrix: their ranks in W's spectrum and their singular values."""

    spec: MatrixSpec
    ranks: tuple[int, ...]
    sigma: tuple[float, ...]


@dataclass(frozen=True)
class Plan:
    """What mitigation touches in one tuned model; matrices without a chosen intruder are absent."""

    model_index: int
    k: int
    epsilon: float
    scope: str
    matrices: tuple[MatrixPlan, ...]

    @property
    def intruders(self) -> int:
        return sum(len(m.ranks) for m in self.matrices)


@dataclass(frozen=True)
class Refit:
    """A LoRA module re-factored after mitigation: its new rank and ‖ΔW'_r − ΔW'‖_F / ‖ΔW'‖_F."""

    module: LoraModule
    rank: int
    relative_error: float


def chosen_ranks(result: MatrixResult, k: int, epsilon: float, scope: str) -> list[int]:
    """The intruders a scope scales: the lowest-rank one (`top`) or all of the top k (`all`)."""
    ranks = result.intruder_ranks(k, epsilon)
    return ranks[:1] if scope == "top" else ranks


def plan(scan: ScanResults, model_index: int, k: int = DEFAULT_K, epsilon: float = DEFAULT_EPSILON,
         scope: str = "top") -> Plan:
    """Choose the intruders of one tuned model from its scan results."""
    matrices = []
    for spec, result in scan.matrices(model_index):
        ranks = chosen_ranks(result, k, epsilon, scope)
        if ranks:
            sigma = tuple(float(result.sigma_tuned[j]) for j in ranks)
            matrices.append(MatrixPlan(spec, tuple(ranks), sigma))
    return Plan(model_index, k, epsilon, scope, tuple(matrices))


def preview(result: MatrixResult, ranks: Collection[int], lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Tuned singular values before and after (descending): W' keeps W's singular vectors, so each
    chosen σ_j becomes λ·σ_j and nothing else moves; no decomposition is needed."""
    after = result.sigma_tuned.copy()
    after[list(ranks)] *= lam
    return result.sigma_tuned, np.sort(after)[::-1]


def intruder_component(w: torch.Tensor, ranks: Collection[int]) -> torch.Tensor:
    """Σ_j σ_j u_j v_jᵀ over the given ranks of W's SVD, in float64 and W's orientation."""
    u, s, vh = torch.linalg.svd(w.to(torch.float64), full_matrices=False)
    j = list(ranks)
    return (u[:, j] * s[j]) @ vh[j]


def scale_intruders(w: torch.Tensor, ranks: Collection[int], lam: float) -> torch.Tensor:
    """W' = W + (λ − 1) Σ_j σ_j u_j v_jᵀ, in float64."""
    return w.to(torch.float64) + (lam - 1) * intruder_component(w, ranks)


def _tuned_matrix(comparison: Comparison, plan: Plan, matrix: MatrixPlan) -> torch.Tensor:
    return load_matrix(comparison.tuned[plan.model_index].source, matrix.spec.tuned_name, matrix.spec)


def _stored(spec: MatrixSpec, m: torch.Tensor) -> torch.Tensor:
    """Back from the (out, in) orientation of the scan to the checkpoint's own (GPT-2 Conv1D)."""
    return m.T.contiguous() if spec.transposed else m


def _mitigated_matrix(comparison: Comparison, plan: Plan, matrix: MatrixPlan, lam: float) -> torch.Tensor:
    w = _tuned_matrix(comparison, plan, matrix)
    return _stored(matrix.spec, scale_intruders(w, matrix.ranks, lam))


def _touched(plan: Plan, lam: float) -> tuple[MatrixPlan, ...]:
    """λ = 1 changes nothing, so nothing is recomputed and an export is bit-identical to its input."""
    return () if lam == 1 else plan.matrices


def components(comparison: Comparison, plan: Plan) -> Iterator[tuple[str, torch.Tensor]]:
    """(tuned tensor name, Σ σ_j u_j v_jᵀ in stored orientation): W' = W + (λ − 1)·component for any
    λ, so a λ sweep decomposes each matrix once."""
    for matrix in plan.matrices:
        component = intruder_component(_tuned_matrix(comparison, plan, matrix), matrix.ranks)
        yield matrix.spec.tuned_name, _stored(matrix.spec, component)


# -- export -----------------------------------------------------------------------------------


def check_export(comparison: Comparison, model_index: int, out: Path, *, merged: bool = False,
                 force: bool = False) -> None:
    """Every reason not to write, found before any work: a target that exists or overlaps a
    source (inside it, or holding it), and adapters whose mitigated form cannot be written."""
    comparison.check_output(out, "--out")
    if out.exists() and not force:
        raise CheckpointError(out, "already exists; pass --force to replace it")
    source = comparison.tuned[model_index].source
    if not source.is_adapter:
        return
    if merged or source.refittable() is None:
        extra = [n for n in source.names() if n not in source.layout]
        if extra:
            raise CheckpointError(source.path, f"saves {extra[0]}, which the base checkpoint lacks, so "
                                               "it cannot be merged into the base's files; export the adapter")
    elif any(m.magnitude_key is not None for m in source.refittable().modules.values()):
        raise CheckpointError(source.refittable().config_file,
                              "is a DoRA adapter: re-factoring ΔW' would leave its magnitude vector "
                              "describing other directions; export it with --merged instead")


def export_note(comparison: Comparison, model_index: int, *, merged: bool = False) -> str:
    """What an export of this model writes when that is not the input's kind, in words for the CLI
    and the TUI to show beside the path; empty when it is (a full checkpoint, a re-fitted LoRA)."""
    source = comparison.tuned[model_index].source
    if not source.is_adapter or (not merged and source.refittable() is not None):
        return ""
    if merged:
        return "a merged checkpoint in the base's files"
    return (f"a merged checkpoint in the base's files: a {source.description} adapter has no LoRA factors to "
            "re-fit")


def export(comparison: Comparison, plan: Plan, lam: float, out: Path, *, merged: bool = False,
           rank_extra: bool = False, force: bool = False) -> list[Refit]:
    """Write the mitigated model to `out` in the input's kind (adapters that are not LoRA: merged,
    see `export_note`); the refits are empty unless a LoRA adapter was re-factored."""
    check_export(comparison, plan.model_index, out, merged=merged, force=force)
    if not merged and comparison.tuned[plan.model_index].source.refittable() is not None:
        return _write_adapter(comparison, plan, lam, out, rank_extra)
    _write_checkpoint(comparison, plan, lam, out)
    return []


def _write_checkpoint(comparison: Comparison, plan: Plan, lam: float, out: Path) -> None:
    """A full checkpoint in the tuned one's files; an adapter is merged into the base's files."""
    source = comparison.tuned[plan.model_index].source
    by_name = {m.spec.tuned_name: m for m in _touched(plan, lam)}

    def new_tensor(name: str) -> torch.Tensor:
        if name in by_name:
            return _mitigated_matrix(comparison, plan, by_name[name], lam)
        return source.load(name)

    layout = source.layout
    merged = {name for name in layout.names() if source.changes(name)} if layout is not source else set()
    write_checkpoint(layout, out, merged | set(by_name), new_tensor)


def _write_adapter(comparison: Comparison, plan: Plan, lam: float, out: Path,
                   rank_extra: bool) -> list[Refit]:
    """PEFT's recipe: ΔW' = ΔW + (λ − 1)·component, re-factored by truncated SVD, √σ on each side."""
    adapter = comparison.tuned[plan.model_index].source.refittable()
    refits, tensors = [], {}
    for refit, new_b, new_a in _refits(comparison, plan, lam, rank_extra):
        tensors[refit.module.b_key], tensors[refit.module.a_key] = new_b, new_a
        refits.append(refit)
    write_lora_adapter(adapter, out, tensors, {r.module: r.rank for r in refits})
    return refits


def refit_errors(comparison: Comparison, plan: Plan, lam: float, rank_extra: bool = False) -> list[Refit]:
    """What re-fitting a LoRA adapter at λ would lose, per module (the relative truncation error
    the export reports), computed without writing anything: for a preview before exporting."""
    return [refit for refit, _, _ in _refits(comparison, plan, lam, rank_extra)]


def _refits(comparison: Comparison, plan: Plan, lam: float,
            rank_extra: bool) -> Iterator[tuple[Refit, torch.Tensor, torch.Tensor]]:
    """Each touched module's re-fit (rank r, or r + its intruders with `rank_extra`) and its new
    B and A (divided by the module's scaling, as stored)."""
    adapter = comparison.tuned[plan.model_index].source.refittable()
    modules = {normalise(name): module for name, module in adapter.modules.items()}
    for matrix in _touched(plan, lam):
        module = modules[normalise(matrix.spec.name)]
        component = intruder_component(_tuned_matrix(comparison, plan, matrix), matrix.ranks)
        b, a = adapter.factors(module)
        # B @ A is (out, in) like the scan, except for embeddings, scanned as stored (vocab, dim).
        delta = b.double() @ a.double() + (lam - 1) * (component.T if module.embedding else component)
        rank = module.rank + (len(matrix.ranks) if rank_extra else 0)
        new_b, new_a, error = refactor(delta / module.scaling, rank)
        yield Refit(module, rank, error), new_b, new_a


def refactor(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """B (out × rank), A (rank × in) with B @ A the best rank-`rank` approximation of `delta`
    (Eckart–Young), √σ shared by both as PEFT does, and the relative error the truncation leaves."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    kept = min(rank, s.numel())
    root = s[:kept].sqrt()
    b = delta.new_zeros(delta.shape[0], rank)
    a = delta.new_zeros(rank, delta.shape[1])
    b[:, :kept] = u[:, :kept] * root
    a[:kept] = root[:, None] * vh[:kept]
    total = float(s.norm())
    return b, a, float(s[kept:].norm()) / total if total > 0 else 0.0
