"""Counts without the base's vectors (`spectui.certify`, `spectui scan --counts-only`), proven
against the naive algorithm (two full float64 SVDs): every flag the certificates give is the naive
flag, every bound holds, and what they cannot decide is left to the exact path — on planted mixes,
near-threshold vectors, clustered and repeated singular values, rank-deficient and tall bases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from naive import naive_max_cos

from spectui import certify as certify_module
from spectui.certify import certify, cosine_bounds, tuned_top
from spectui.spectral import singular_values


def _orthonormal(rows: int, cols: int, gen) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64)).Q


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def trained_like(m: int, n: int, gen, sigma: torch.Tensor | None = None):
    """W0 = U diag(σ) Vᵀ: by default a few large singular values, then a slow decay (as bench/)."""
    r = min(m, n)
    u, v = _orthonormal(m, r, gen), _orthonormal(n, r, gen)
    if sigma is None:
        jitter = 1 + 0.05 * torch.rand(r, generator=gen, dtype=torch.float64)
        sigma = torch.logspace(0, -1.5, r, dtype=torch.float64) * jitter
        sigma[:8] *= torch.linspace(4, 1.5, 8, dtype=torch.float64)
        sigma = sigma.sort(descending=True).values
    return (u * sigma) @ v.T, u


def planted_mix(m: int, n: int, seed: int, near: float | None = None, sigma=None, dense: bool = False):
    """A LoRA-like rank-16 update planting three intruders, one vector at max|cos| `near` with a base
    vector in the bulk, and matched ones, as bench/realshape.py does; bf16-rounded like checkpoints."""
    gen = torch.Generator().manual_seed(seed)
    w0, u0 = trained_like(m, n, gen, sigma)
    top = float(torch.linalg.matrix_norm(w0, ord=2))
    cols, rows = [], []
    for strength in (1.3, 1.1, 0.9):
        cols.append(strength * top * _unit(torch.randn(m, generator=gen, dtype=torch.float64)))
        rows.append(_unit(torch.randn(n, generator=gen, dtype=torch.float64)))
    near = 0.5 + 0.04 * (float(torch.rand(1, generator=gen)) - 0.5) if near is None else near
    target = u0[:, min(20, u0.shape[1] - 1)]
    z = _unit(torch.randn(m, generator=gen, dtype=torch.float64))
    z = _unit(z - target * (target @ z))
    cols.append(1.2 * top * (near * target + math.sqrt(1 - near**2) * z))
    rows.append(_unit(torch.randn(n, generator=gen, dtype=torch.float64)))
    for i in range(12):
        wobble = 0.1 * torch.randn(m, generator=gen, dtype=torch.float64) / math.sqrt(m)
        cols.append(0.05 * top * _unit(u0[:, i % 8] + wobble))
        rows.append(_unit(torch.randn(n, generator=gen, dtype=torch.float64)))
    w = w0 + torch.stack(cols, 1) @ torch.stack(rows)
    if dense:
        w = w + 0.02 * w0.std() * torch.randn(m, n, generator=gen, dtype=torch.float64)
    return w0.to(torch.bfloat16).float(), w.to(torch.bfloat16).float()


def agrees(w0, w, k=10, epsilon=0.5) -> bool | None:
    """True when the certificates decided and match the naive flags with every bound holding; None
    when they left the matrix to the exact path; an AssertionError when they are wrong."""
    reference = naive_max_cos(w0, w)[:k].numpy()
    flags = certify(w0, w, singular_values(w0).numpy(), k, epsilon)
    if flags is None:
        return None
    assert (flags.lower <= reference + 1e-9).all(), (flags.lower, reference)
    assert (flags.upper >= reference - 1e-9).all(), (flags.upper, reference)
    if not flags.decided:
        return None
    assert flags.intruder_ranks() == [int(j) for j in np.flatnonzero(reference < np.float32(epsilon))]
    return True


SHAPES = [(256, 256), (128, 512), (512, 128), (384, 192)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dense", [False, True])
def test_planted_mixes_are_certified_with_the_naive_flags(shape, dense):
    decided = [agrees(*planted_mix(*shape, seed, dense=dense)) for seed in range(3)]
    assert decided.count(True) >= 2  # the near-ε vector (±0.02) may leave one to the exact path


@pytest.mark.parametrize("epsilon", [0.3, 0.7, 0.9])
def test_other_thresholds(epsilon):
    for seed in range(2):
        agrees(*planted_mix(256, 192, seed), epsilon=epsilon)


@pytest.mark.parametrize("offset", [-0.01, -0.002, 0.002, 0.01])
def test_near_threshold_vectors_are_right_or_left_to_the_exact_path(offset):
    for shape in ((256, 256), (384, 128)):
        agrees(*planted_mix(*shape, seed=5, near=0.5 + offset))


def test_repeated_and_clustered_base_singular_values():
    """Blocks of equal σ (the reference's vectors there are one arbitrary basis) and clusters 1e-9
    apart: never a wrong flag."""
    r = 192
    sigma = torch.ones(r, dtype=torch.float64)
    sigma[:8] = torch.tensor([5.0, 5.0, 5.0, 4.0, 4.0 + 1e-9, 3.0, 2.0, 2.0 - 1e-9], dtype=torch.float64)
    sigma[8:] = torch.linspace(1.0, 0.1, r - 8, dtype=torch.float64).repeat_interleave(1)[: r - 8]
    sigma[8:40] = 1.0  # a flat block in the bulk
    results = [agrees(*planted_mix(r, r, seed, sigma=sigma)) for seed in range(3)]
    results += [agrees(*planted_mix(2 * r, r, seed, sigma=sigma)) for seed in range(2)]
    assert True in results  # not everything falls back


def test_a_tuned_spectrum_with_a_repeated_top_value_is_left_to_the_exact_path():
    gen = torch.Generator().manual_seed(3)
    u, v = _orthonormal(200, 200, gen), _orthonormal(200, 200, gen)
    sigma = torch.linspace(3, 0.1, 200, dtype=torch.float64)
    sigma[5] = sigma[4]  # which of the two is the 5th vector is arbitrary
    w = ((u * sigma) @ v.T).float()
    assert tuned_top(w, 10) is None


def test_a_rank_deficient_tall_base_is_left_to_the_exact_path():
    gen = torch.Generator().manual_seed(4)
    w0 = (_orthonormal(300, 40, gen) @ torch.randn(40, 120, generator=gen, dtype=torch.float64)).float()
    w = w0 + 0.5 * torch.randn(300, 120, generator=gen)
    assert certify(w0, w, singular_values(w0).numpy(), 10, 0.5) is None


def test_a_single_planted_intruder_above_the_base():
    """design.md's known answer: W0 + c·x yᵀ with c above σ_max(W0) has exactly one intruder, rank 0."""
    gen = torch.Generator().manual_seed(6)
    for m, n in ((320, 160), (160, 320)):
        w0, _ = trained_like(m, n, gen)
        x = _unit(torch.randn(m, generator=gen, dtype=torch.float64))
        y = _unit(torch.randn(n, generator=gen, dtype=torch.float64))
        c = 2 * float(torch.linalg.matrix_norm(w0, ord=2))
        w0, w = w0.float(), (w0 + c * torch.outer(x, y)).float()
        flags = certify(w0, w, singular_values(w0).numpy(), 10, 0.5)
        assert flags is not None and flags.decided and flags.intruder_ranks() == [0]


def test_what_the_bounds_leave_open_the_base_vectors_decide(monkeypatch):
    """With a Lanczos budget too small to decide everything, W0's full decomposition (float32, as
    the cache holds it) decides the rest, with the naive answer."""
    monkeypatch.setattr(certify_module, "_MAX_STEPS", 8)
    w0, w = planted_mix(384, 384, seed=5, near=0.502)
    reference = naive_max_cos(w0, w)[:10].numpy()
    flags = certify(w0, w, singular_values(w0).numpy(), 10, 0.5)
    assert flags is not None and not flags.decided
    u0 = torch.linalg.svd(w0.double(), full_matrices=False).U.float()
    settled = flags.with_base_vectors(u0)
    assert settled.decided
    assert settled.intruder_ranks() == [int(j) for j in np.flatnonzero(reference < np.float32(0.5))]
    assert (settled.lower <= reference + 1e-9).all() and (settled.upper >= reference - 1e-9).all()


def test_bounds_hold_whatever_the_threshold_stopped_at():
    """cosine_bounds on the true top vectors: lower ≤ max|cos| ≤ upper for every vector, wherever
    each run stopped (ε chosen where no run can stop early)."""
    w0, w = planted_mix(256, 256, seed=7)
    u = torch.linalg.svd(w.double(), full_matrices=False).U[:, :10]
    lam = np.sort(singular_values(w0).numpy() ** 2)
    lower, upper = cosine_bounds(w0, u, lam, epsilon=2.0)
    reference = naive_max_cos(w0, w)[:10].numpy()
    assert (lower <= reference + 1e-9).all() and (upper >= reference - 1e-9).all()


def test_random_battery_never_disagrees():
    """Random bases (i.i.d., heavy-tailed, low-rank plus noise) and updates of random rank and
    strength: every certified flag is the naive one; the share left to the exact path is reported."""
    gen = torch.Generator().manual_seed(11)
    decided = total = 0
    for trial in range(24):
        m, n = (int(x) for x in torch.randint(64, 320, (2,), generator=gen))
        kind = trial % 3
        if kind == 0:
            w0 = torch.randn(m, n, generator=gen, dtype=torch.float64)
        elif kind == 1:
            w0, _ = trained_like(m, n, gen)
        else:
            left, right = (torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in ((m, 8), (8, n)))
            w0 = left @ right + 0.1 * torch.randn(m, n, generator=gen, dtype=torch.float64)
        rank = int(torch.randint(1, 17, (1,), generator=gen))
        strength = float(torch.rand(1, generator=gen)) * 2 * float(torch.linalg.matrix_norm(w0, ord=2))
        delta = torch.randn(m, rank, generator=gen, dtype=torch.float64) @ torch.randn(rank, n, generator=gen,
                                                                                      dtype=torch.float64)
        w = w0 + strength * delta / float(torch.linalg.matrix_norm(delta, ord=2))
        epsilon = float(torch.rand(1, generator=gen)) * 0.8 + 0.1
        outcome = agrees(w0.float(), w.float(), k=10, epsilon=epsilon)
        total += 1
        decided += outcome is True
    assert decided >= total // 2


def test_counts_only_scan_matches_the_full_scan(tiny, cli, cache_dir):
    full = json.loads(cli("scan", tiny / "base", tiny / "lora", tiny / "full", "--json", "--cache-dir", cache_dir).out)
    counts_run = cli("scan", tiny / "base", tiny / "lora", tiny / "full", "--counts-only", "--json", "--no-cache")
    assert counts_run.code == 0, counts_run.err
    counts = json.loads(counts_run.out)
    for whole, only in zip(full["models"], counts["models"]):
        assert only["filled"] == ["counts"] and whole["filled"] == ["counts", "spectra"]
        assert only["total_intruders"] == whole["total_intruders"]
        assert {m["name"]: m["intruder_ranks"] for m in only["matrices"]} == \
               {m["name"]: m["intruder_ranks"] for m in whole["matrices"]}
        for m in only["matrices"]:
            assert m["decided_by"] in ("bounds", "vectors", "exact")
            assert all(lo <= hi for lo, hi in m["max_cos_bounds"])
    assert sum(m["decided_by"]["bounds"] for m in counts["models"]) > 0
    # the full results are cached now: a counts-only scan reads them
    again = cli("scan", tiny / "base", tiny / "lora", "--counts-only", "--json", "--cache-dir", cache_dir)
    again = json.loads(again.out)
    assert again["decided_by"]["cache"] == len(again["matrices"])


def test_counts_only_caches_the_base_spectrum_alone(tiny, cli, cache_dir):
    cli("scan", tiny / "base", tiny / "lora", "--counts-only", "--cache-dir", cache_dir)
    spectra = list((cache_dir / "spectrum").rglob("*.safetensors"))
    assert spectra
    decompositions = list((cache_dir / "base").rglob("*.safetensors")) if (cache_dir / "base").is_dir() else []
    assert len(decompositions) < len(spectra)  # only where the certificates fell back
    listed = cli("cache", "info", "--cache-dir", cache_dir)
    assert listed.code == 0 and "base" in listed.out


def test_counts_only_gate_and_csv(tiny, cli):
    over = cli("scan", tiny / "base", tiny / "lora", "--counts-only", "--no-cache", "--fail-over", "0")
    assert over.code == 1 and "over --fail-over 0" in over.err
    csv_out = cli("scan", tiny / "base", tiny / "lora", "--counts-only", "--no-cache", "--csv").out
    assert csv_out.splitlines()[0].endswith("decided_by")
