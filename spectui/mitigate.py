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
written merged into the base's checkpoint. Writing is atomic and never touches the sources.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spectui.checkpoint.adapters import ADAPTER_CONFIG, LoraAdapter, LoraModule
from spectui.checkpoint.comparison import Comparison
from spectui.checkpoint.files import BIN_INDEX, SAFETENSORS_INDEX, CheckpointError, TensorStore
from spectui.checkpoint.pairing import AdaptedModel, MatrixSpec, load_matrix, normalise
from spectui.defaults import DEFAULT_EPSILON, DEFAULT_K
from spectui.spectral import MatrixResult

# Another copy of the weights beside the ones rewritten would still hold the unmitigated model.
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx"}


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


def plan(
    comparison: Comparison,
    model_index: int,
    results: dict[tuple[int, str], MatrixResult],
    k: int = DEFAULT_K,
    epsilon: float = DEFAULT_EPSILON,
    scope: str = "top",
) -> Plan:
    """Choose the intruders of one tuned model from its scan results (`Scan.results`)."""
    matrices = []
    for spec in comparison.tuned[model_index].pairing.matrices:
        result = results[(model_index, spec.name)]
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


def mitigated_weights(comparison: Comparison, plan: Plan,
                      lam: float) -> Iterator[tuple[str, torch.Tensor]]:
    """(tuned tensor name, W' in stored orientation, float64), one matrix at a time."""
    for matrix in _touched(plan, lam):
        yield matrix.spec.tuned_name, _mitigated_matrix(comparison, plan, matrix, lam)


def components(comparison: Comparison, plan: Plan) -> Iterator[tuple[str, torch.Tensor]]:
    """(tuned tensor name, Σ σ_j u_j v_jᵀ in stored orientation): W' = W + (λ − 1)·component for any
    λ, so a λ sweep decomposes each matrix once."""
    for matrix in plan.matrices:
        component = intruder_component(_tuned_matrix(comparison, plan, matrix), matrix.ranks)
        yield matrix.spec.tuned_name, _stored(matrix.spec, component)


# -- export -----------------------------------------------------------------------------------


def check_export(comparison: Comparison, model_index: int, out: Path, *, merged: bool = False,
                 force: bool = False) -> None:
    """Every reason not to write, found before any work: an existing or source-overlapping target,
    and adapters whose mitigated form cannot be written."""
    target = out.resolve()
    for source in [comparison.base.path, *(m.path for m in comparison.tuned)]:
        source = source.resolve()
        if target == source or target in source.parents:
            raise CheckpointError(out, f"would replace the source {source}; choose another --out")
    if out.exists() and not force:
        raise CheckpointError(out, "already exists; pass --force to replace it")
    source = comparison.tuned[model_index].source
    if not isinstance(source, AdaptedModel):
        return
    if merged:
        extra = [n for n in source.names() if n not in source.base]
        if extra:
            raise CheckpointError(source.path, f"saves {extra[0]}, which the base checkpoint lacks, so "
                                               "it cannot be merged into the base's files; export the adapter")
    elif any(m.magnitude_key is not None for m in source.adapter.modules.values()):
        raise CheckpointError(source.adapter.config_file,
                              "is a DoRA adapter: re-factoring ΔW' would leave its magnitude vector "
                              "describing other directions; export it with --merged instead")


def export(comparison: Comparison, plan: Plan, lam: float, out: Path, *, merged: bool = False,
           rank_extra: bool = False, force: bool = False) -> list[Refit]:
    """Write the mitigated model to `out` in the input's kind; the refits are empty unless a LoRA
    adapter was re-factored."""
    check_export(comparison, plan.model_index, out, merged=merged, force=force)
    source = comparison.tuned[plan.model_index].source
    if isinstance(source, AdaptedModel) and not merged:
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

    if isinstance(source, AdaptedModel):
        store = source.base
        changed = {name for name in store.names() if source.changes(name)} | set(by_name)
    else:
        store, changed = source, set(by_name)
    with _atomic_dir(out) as tmp:
        _write_store(store, tmp, changed, new_tensor)


def _write_adapter(comparison: Comparison, plan: Plan, lam: float, out: Path,
                   rank_extra: bool) -> list[Refit]:
    """PEFT's recipe: ΔW' = ΔW + (λ − 1)·component, re-factored by truncated SVD, √σ on each side."""
    adapter = comparison.tuned[plan.model_index].source.adapter
    modules = {normalise(name): module for name, module in adapter.modules.items()}
    refits, tensors = [], {}
    for matrix in _touched(plan, lam):
        module = modules[normalise(matrix.spec.name)]
        component = intruder_component(_tuned_matrix(comparison, plan, matrix), matrix.ranks)
        b, a = adapter.factors(module)
        # B @ A is (out, in) like the scan, except for embeddings, scanned as stored (vocab, dim).
        delta = b.double() @ a.double() + (lam - 1) * (component.T if module.embedding else component)
        rank = module.rank + (len(matrix.ranks) if rank_extra else 0)
        new_b, new_a, error = refactor(delta / module.scaling, rank)
        tensors[module.b_key], tensors[module.a_key] = new_b, new_a
        refits.append(Refit(module, rank, error))
    with _atomic_dir(out) as tmp:
        _write_store(adapter.store, tmp, tensors.keys(), tensors.__getitem__, skip={ADAPTER_CONFIG})
        config = _adapter_config(adapter, [r for r in refits if r.rank != r.module.rank], out)
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return refits


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


def _adapter_config(adapter: LoraAdapter, grown: list[Refit], out: Path) -> dict:
    """The source config, with rank_pattern / alpha_pattern entries (first, so they win) for modules
    whose rank grew, keeping their scaling; and a relative base path re-pointed from `out`."""
    config = dict(adapter.config)
    rslora = bool(config.get("use_rslora"))
    if grown:
        keys = {re.escape(r.module.module): r for r in grown}
        ranks = {key: r.rank for key, r in keys.items()}
        alphas = {key: r.module.scaling * (math.sqrt(r.rank) if rslora else r.rank) for key, r in keys.items()}
        config["rank_pattern"] = {**ranks, **(config.get("rank_pattern") or {})}
        config["alpha_pattern"] = {**alphas, **(config.get("alpha_pattern") or {})}
    reference = config.get("base_model_name_or_path")
    if reference and not Path(reference).is_absolute() and (adapter.path / reference).exists():
        base = (adapter.path / reference).resolve()
        config["base_model_name_or_path"] = os.path.relpath(base, out.resolve())
    return config


# -- files ------------------------------------------------------------------------------------


@contextmanager
def _atomic_dir(out: Path) -> Iterator[Path]:
    """Write into a temporary directory beside `out`, then rename it into place; on failure only
    the temporary directory is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.tmp")
    tmp.mkdir()  # not mkdtemp: its 0700 mode would stay on the published directory
    try:
        yield tmp
        if out.exists():
            old = tmp.with_name(tmp.name + ".old")
            os.replace(out, old)
            os.replace(tmp, out)
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_store(store: TensorStore, out: Path, changed: Collection[str],
                 new_tensor: Callable[[str], torch.Tensor], skip: Collection[str] = ()) -> None:
    """Rewrite the store's weight files into `out`, in the same files, formats and per-tensor dtypes,
    with the `changed` tensors replaced; untouched files are copied byte for byte. One file's tensors
    are in memory at a time. Small side files (config, tokenizer) are copied too."""
    files = list(dict.fromkeys(store.info(name).file for name in store.names()))
    for file in files:
        names = [n for n in store.names() if store.info(n).file == file]
        if not any(n in changed for n in names):
            shutil.copy2(file, out / file.name)
            continue
        tensors = {}
        for name in names:
            original = store.load(name)
            tensors[name] = new_tensor(name).to(original.dtype).contiguous() if name in changed else original
        _save(tensors, file, out / file.name)
    if store.path.is_dir():
        _copy_side_files(store.path, out, index=SAFETENSORS_INDEX if files[0].suffix == ".safetensors"
                         else BIN_INDEX, skip=skip)


def _save(tensors: dict[str, torch.Tensor], like: Path, file: Path) -> None:
    if like.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(like), framework="pt") as handle:
            metadata = handle.metadata()
        save_file(tensors, str(file), metadata=metadata)
    else:
        torch.save(tensors, file)


def _copy_side_files(source: Path, out: Path, index: str, skip: Collection[str]) -> None:
    """Config, tokenizer and other small files; other copies of the weights and their indexes are
    left out, since they would still hold the unmitigated model."""
    for file in source.iterdir():
        other_index = file.name.endswith(".index.json") and file.name != index
        stale = file.suffix in _WEIGHT_SUFFIXES or other_index
        if file.is_file() and not stale and file.name not in skip:
            shutil.copy2(file, out / file.name)
