"""Counts without the base's vectors (`spectui.certify`, `spectui scan --counts-only`), proven
against the naive algorithm (two full float64 SVDs): every flag the certificates give — from
products with W0 (`certify`) or on its band reduction (`certify_reduced`) — is the naive
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
from spectui import eigen
from spectui.certify import certify, certify_reduced, cosine_bounds, tuned_top
from spectui.spectral import singular_values

ROUTES = ["bounds", "reduced"]


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


def flags_of(w0, w, k=10, epsilon=0.5, route="bounds"):
    """The certificates' flags by one route, or None where they leave the matrix to the exact path."""
    tuned = tuned_top(w, k)
    if tuned is None:
        return None
    if route == "bounds":
        return certify(w0, tuned, singular_values(w0).numpy(), epsilon)
    reduction = eigen.reduce(eigen.gram(w0), scratch=True)
    return certify_reduced(w0, reduction, reduction.eigenvalues(), tuned, epsilon)


def agrees(w0, w, k=10, epsilon=0.5, route="bounds") -> bool | None:
    """True when the certificates decided and match the naive flags with every bound holding; None
    when they left the matrix to the exact path; an AssertionError when they are wrong."""
    reference = naive_max_cos(w0, w)[:k].numpy()
    flags = flags_of(w0, w, k, epsilon, route)
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
    assert decided.count(True) >= 2  # the near-ε vector (±0.02) may leave one open
    # on the reduction every one is decided: the near-ε vector's atom is measured exactly
    assert all(agrees(*planted_mix(*shape, seed, dense=dense), route="reduced") for seed in range(3))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("epsilon", [0.3, 0.7, 0.9])
def test_other_thresholds(epsilon, route):
    for seed in range(2):
        agrees(*planted_mix(256, 192, seed), epsilon=epsilon, route=route)


@pytest.mark.parametrize("offset", [-0.01, -0.002, 0.002, 0.01, -1e-5, 1e-5])
def test_near_threshold_vectors_are_right_or_left_to_the_exact_path(offset):
    for shape in ((256, 256), (384, 128), (128, 384)):
        agrees(*planted_mix(*shape, seed=5, near=0.5 + offset))
        assert agrees(*planted_mix(*shape, seed=5, near=0.5 + offset), route="reduced")


def test_repeated_and_clustered_base_singular_values():
    """Blocks of equal σ (the reference's vectors there are one arbitrary basis) and clusters 1e-9
    apart: never a wrong flag."""
    r = 192
    sigma = torch.ones(r, dtype=torch.float64)
    sigma[:8] = torch.tensor([5.0, 5.0, 5.0, 4.0, 4.0 + 1e-9, 3.0, 2.0, 2.0 - 1e-9], dtype=torch.float64)
    sigma[8:] = torch.linspace(1.0, 0.1, r - 8, dtype=torch.float64).repeat_interleave(1)[: r - 8]
    sigma[8:40] = 1.0  # a flat block in the bulk
    for route in ROUTES:
        results = [agrees(*planted_mix(r, r, seed, sigma=sigma), route=route) for seed in range(3)]
        results += [agrees(*planted_mix(2 * r, r, seed, sigma=sigma), route=route) for seed in range(2)]
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
    for route in ROUTES:
        assert flags_of(w0, w, route=route) is None


def test_a_single_planted_intruder_above_the_base():
    """design.md's known answer: W0 + c·x yᵀ with c above σ_max(W0) has exactly one intruder, rank 0."""
    gen = torch.Generator().manual_seed(6)
    for m, n in ((320, 160), (160, 320)):
        w0, _ = trained_like(m, n, gen)
        x = _unit(torch.randn(m, generator=gen, dtype=torch.float64))
        y = _unit(torch.randn(n, generator=gen, dtype=torch.float64))
        c = 2 * float(torch.linalg.matrix_norm(w0, ord=2))
        w0, w = w0.float(), (w0 + c * torch.outer(x, y)).float()
        for route in ROUTES:
            flags = flags_of(w0, w, route=route)
            assert flags is not None and flags.decided and flags.intruder_ranks() == [0]


def test_what_the_bounds_leave_open_the_reduction_decides(monkeypatch):
    """With a Lanczos budget too small for the bounds on W0 to decide, the reduction's exactly
    measured atoms do, with the naive answer; on the reduction too a short budget only means more
    atoms measured, never a wrong flag."""
    monkeypatch.setattr(certify_module, "_MAX_STEPS", 8)
    w0, w = planted_mix(384, 384, seed=5, near=0.502)
    flags = flags_of(w0, w)
    assert flags is not None and not flags.decided
    assert agrees(w0, w, route="reduced")
    monkeypatch.setattr(certify_module, "_REDUCED_STEPS", 4)
    assert agrees(w0, w, route="reduced")


@pytest.mark.parametrize("two_stage", [True, False], ids=["band", "tridiagonal"])
def test_a_split_reduction_is_decided_and_repeated_values_are_left_to_the_exact_path(two_stage, monkeypatch):
    """A block-diagonal W0 reduces to a matrix that splits into blocks: inverse iteration on LU factors
    needs no telling, and the flags are the naive ones. Two equal blocks repeat every singular value,
    so no atom there has one vector to measure; and a budget of measured atoms too small for the
    bounds: both undecided, never wrong. Both reductions: LAPACK's two-stage band, and dsytrd's
    tridiagonal where the library lacks it."""
    from spectui import lapack

    monkeypatch.setattr(lapack, "two_stage", lambda: two_stage)
    gen = torch.Generator().manual_seed(8)
    a, b = torch.randn(60, 90, generator=gen), torch.randn(60, 90, generator=gen)
    noise = 0.3 * torch.randn(120, 180, generator=gen)
    w0 = torch.block_diag(a, b)
    reduction = eigen.reduce(eigen.gram(w0))
    assert reduction.kd == (eigen.BAND if two_stage else 1)
    coupling = reduction.times(np.eye(120)[:, :60])[60:]  # B's block between the two halves
    assert np.abs(coupling).max() <= 1e-12 * np.abs(reduction.band).max()
    assert agrees(w0, w0 + noise, route="reduced") is True
    repeated = torch.block_diag(a, a)
    flags = flags_of(repeated, repeated + noise, route="reduced")
    assert flags is not None and not flags.decided
    assert agrees(repeated, repeated + noise, route="reduced") is None  # the bounds it gives still hold
    monkeypatch.setattr(certify_module, "_MAX_MEASURED", 0)
    assert flags_of(*planted_mix(256, 256, seed=1), route="reduced") is None


@pytest.mark.parametrize("two_stage", [True, False], ids=["band", "tridiagonal"])
@pytest.mark.parametrize("shape", [(256, 256), (128, 512), (512, 128)])
def test_a_low_rank_search_on_the_base_reduction_finds_the_top_vectors(shape, two_stage, monkeypatch):
    """A cold scan's LoRA search runs on W0's reduction (`low_rank_gram`): that operator is W's
    short-side Gram in the reduced coordinates, and the vectors it finds are the naive SVD's within
    the bounds measured on W itself, as the search on W finds them. Given the Gram of another
    update, the search finds W's quotients off its own and answers None."""
    from spectui import lapack

    monkeypatch.setattr(lapack, "two_stage", lambda: two_stage)
    m, n = shape
    gen = torch.Generator().manual_seed(11)
    w0 = trained_like(m, n, gen)[0].to(torch.bfloat16).float()
    scale = float(torch.linalg.matrix_norm(w0, ord=2)) / 4
    b, a = scale * torch.randn(m, 16, generator=gen), torch.randn(16, n, generator=gen) / math.sqrt(n)
    w = w0 + b @ a
    reduction = eigen.reduce(eigen.gram(w0), scratch=True)
    operator = certify_module.low_rank_gram(reduction, w0, b, a)
    x = torch.randn(min(m, n), 3, generator=gen, dtype=torch.float64)
    wd = w0.double() + b.double() @ a.double()
    g = wd @ wd.T if m <= n else wd.T @ wd
    expected = reduction.to_reduced((g @ torch.from_numpy(reduction.from_reduced(x.numpy()))).numpy())
    np.testing.assert_allclose(operator.times(x).numpy(), expected, atol=1e-10 * float(g.abs().max()))
    truth = torch.linalg.svd(w.double(), full_matrices=False).U[:, :10]
    for tuned in (tuned_top(w, 10, operator), tuned_top(w, 10)):
        signs = torch.sign((truth * tuned.u).sum(0))
        distance = (truth * signs - tuned.u).norm(dim=0).numpy()
        assert (tuned.error < 1e-3).all() and (distance <= tuned.error + 1e-9).all()
    assert tuned_top(w, 10, certify_module.low_rank_gram(reduction, w0, 1.1 * b, a)) is None


def test_a_cold_counts_scan_searches_a_lora_on_the_base_reduction(tiny, cli, monkeypatch):
    """The engine takes that route for every adapted matrix of a cold scan (nothing cached), and the
    flags are those of a plain scan."""
    from spectui import engine

    searched = []
    real = engine.low_rank_gram
    monkeypatch.setattr(engine, "low_rank_gram", lambda *args: searched.append(args[1].shape) or real(*args))
    counts = json.loads(cli("scan", tiny / "base", tiny / "lora", "--counts-only", "--no-cache", "--json").out)
    full = json.loads(cli("scan", tiny / "base", tiny / "lora", "--no-cache", "--json").out)
    adapted = [m for m in counts["matrices"] if m["decided_by"] != "unchanged"]
    assert adapted and len(searched) == len(adapted)
    assert {m["name"]: m["intruder_ranks"] for m in counts["matrices"]} == {
        m["name"]: m["intruder_ranks"] for m in full["matrices"]}


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
    decided = reduced = total = 0
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
        total += 1
        decided += agrees(w0.float(), w.float(), k=10, epsilon=epsilon) is True
        reduced += agrees(w0.float(), w.float(), k=10, epsilon=epsilon, route="reduced") is True
    assert decided >= total // 2
    assert reduced >= total - 2  # only unseparated tuned vectors or rank-deficient tall bases are left


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
            assert m["decided_by"] in ("reduction", "exact")  # a cold scan reduces every W0
            assert all(lo <= hi for lo, hi in m["max_cos_bounds"])
    assert sum(m["decided_by"]["reduction"] for m in counts["models"]) > 0
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


@pytest.mark.parametrize("shape", [(384, 384), (512, 192), (192, 512)])
def test_the_head_vectors_are_within_their_error_bounds(shape):
    """base_head's vectors against a float64 SVD's, signs aligned, each within its stated error."""
    w0, _ = planted_mix(*shape, seed=2)
    reduction = eigen.reduce(eigen.gram(w0), scratch=True)
    head, error = certify_module.base_head(w0, reduction, reduction.eigenvalues())
    u0 = torch.linalg.svd(w0.double(), full_matrices=False).U[:, : head.shape[1]].numpy()
    signs = np.sign((u0 * head).sum(0))
    distance = np.linalg.norm(u0 * signs - head, axis=0)
    assert head.shape[1] == 32 and (distance <= error + 1e-6).all()
    assert (error < 1e-6).sum() > 16  # separated top values: known to rounding


@pytest.mark.parametrize("near", [0.51, 0.52])
def test_the_cached_head_decides_a_vector_matched_in_the_bulk(near):
    """A tuned vector matched with base vector 20 near ε is where Lanczos runs on W0 stay open (this
    seed: found by a search over seeds); the cached head vectors measure that atom and decide it,
    with the naive flags."""
    shape = (384, 384)
    w0, w = planted_mix(*shape, seed=4, near=near)
    reference = naive_max_cos(w0, w)[:10].numpy()
    reduction = eigen.reduce(eigen.gram(w0), scratch=True)
    lam = reduction.eigenvalues()
    head = certify_module.base_head(w0, reduction, lam)
    tuned = tuned_top(w, 10)
    sigma = np.sqrt(np.clip(lam, 0, None))[::-1]
    gram = eigen.full_gram(w0) if shape[0] > shape[1] else None
    assert not certify(w0, tuned, sigma, 0.5, gram).decided
    flags = certify(w0, tuned, sigma, 0.5, gram, head)
    assert flags.decided
    assert flags.intruder_ranks() == [int(j) for j in np.flatnonzero(reference < np.float32(0.5))]
    assert (flags.lower <= reference + 1e-9).all() and (flags.upper >= reference - 1e-9).all()
    # a head whose errors are not small stands for nothing: the bounds alone again
    untrusted = (head[0], np.full(head[1].shape, 1.0))
    assert not certify(w0, tuned, sigma, 0.5, gram, untrusted).decided


def test_a_second_model_on_a_cached_spectrum_is_certified_by_products_with_w0(tiny, cli, cache_dir):
    """The first counts-only scan reduces every W0 and caches its spectrum and head; a second tuned
    model's scan decides from products with W0 where it can; a spectrum entry that does not fit its
    matrix (a damaged or foreign cache) is not used. Flags stay the full scan's."""
    from safetensors.numpy import load_file

    from spectui.cache import Cache

    full = json.loads(cli("scan", tiny / "base", tiny / "full", "--json", "--no-cache").out)
    cli("scan", tiny / "base", tiny / "lora", "--counts-only", "--cache-dir", cache_dir)
    second = json.loads(cli("scan", tiny / "base", tiny / "full", "--counts-only", "--json",
                            "--cache-dir", cache_dir).out)
    assert second["decided_by"]["bounds"] > 0
    assert {m["name"]: m["intruder_ranks"] for m in second["matrices"]} == \
           {m["name"]: m["intruder_ranks"] for m in full["matrices"]}
    cache = Cache(cache_dir)
    for file in (cache_dir / "spectrum").rglob("*.safetensors"):
        arrays = load_file(file)
        rows, size = arrays["head"].shape[0], arrays["sigma"].size
        shape = (rows, size) if size < rows else (rows, 10**6)
        spectrum = cache.get_spectrum(file.stem, shape)
        assert spectrum.head.shape == arrays["head"].shape and spectrum.fits(shape)
        assert not spectrum.fits((rows + 1, shape[1])) and not spectrum.fits((rows, size - 1))
    assert cache.get_spectrum(file.stem, (rows + 1, shape[1])) is None and not file.exists()  # dropped


def test_a_spectrum_entry_that_does_not_fit_its_matrix_is_recomputed(tiny, cli, cache_dir):
    """A spectrum entry with a valid digest but another matrix's shape (a foreign or hand-made cache)
    is not used: the counts are the full scan's, and the entry is written again as it should be."""
    import numpy as np_

    from spectui.cache import Cache
    from spectui.spectral import BaseSpectrum

    full = json.loads(cli("scan", tiny / "base", tiny / "lora", "--json", "--no-cache").out)
    cli("scan", tiny / "base", tiny / "lora", "--counts-only", "--cache-dir", cache_dir)
    from safetensors.numpy import load_file

    cache = Cache(cache_dir)
    shapes = {}
    for file in (cache_dir / "spectrum").rglob("*.safetensors"):
        arrays = load_file(file)
        rows, size = arrays["head"].shape[0], arrays["sigma"].size
        shapes[file.stem] = (rows, size) if size < rows else (rows, 10**6)
    sizes = {}
    for key, shape in shapes.items():
        good = cache.get_spectrum(key, shape)
        sizes[key] = good.sigma.size
        cache.put_spectrum(key, BaseSpectrum(good.sigma[:-1], np_.zeros((3, 2), np_.float32), np_.zeros(2)))
    again = cli("scan", tiny / "base", tiny / "lora", "--counts-only", "--json", "--cache-dir", cache_dir)
    assert again.code == 0, again.err
    counts = json.loads(again.out)
    assert {m["name"]: m["intruder_ranks"] for m in counts["matrices"]} == \
           {m["name"]: m["intruder_ranks"] for m in full["matrices"]}
    assert counts["decided_by"]["reduction"] == len(counts["matrices"])  # none trusted the bad entries
    assert all(Cache(cache_dir).get_spectrum(key, shapes[key]).sigma.size == size for key, size in sizes.items())
