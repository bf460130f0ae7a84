"""The follow-up literature's per-matrix metrics against direct computations: numpy
float64 SVDs and the definitions written out here, never spectui's own helpers."""

import json
import math

import numpy as np
import pytest
import torch

from spectui.cache import Cache
from spectui.checkpoint.comparison import open_comparison
from spectui.checkpoint.pairing import load_matrix
from spectui.engine import Scan, unchanged_result
from spectui.results import ScanResults
from spectui.spectral import MatrixResult, compare, decompose, update_cosine, update_inner, update_norm2

SHAPES = [(48, 48), (40, 96), (96, 40), (160, 300), (300, 160)]


def structured(m, n, seed=0):
    """A decaying, well separated spectrum, like trained weights."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, m)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    r = min(m, n)
    return (u[:, :r] * np.linspace(1, 0.05, r) ** 2 * 10) @ v[:, :r].T


def tuned_pair(m, n, seed=1, rank=3, scale=0.3):
    """W0, and W = W0 + B A with B A of the given rank (the factors returned too)."""
    rng = np.random.default_rng(seed)
    w0 = structured(m, n, seed)
    b, a = scale * rng.standard_normal((m, rank)), rng.standard_normal((rank, n))
    return w0, b, a


def left(w):
    """Left singular vectors (columns) and singular values, float64."""
    u, s, _ = np.linalg.svd(w, full_matrices=False)
    return u, s


def t(x):
    return torch.from_numpy(np.ascontiguousarray(x)).float()


def scanned(w0, w, factors=None) -> MatrixResult:
    w0_, w_ = t(w0), t(w)
    return compare(decompose(w0_), w0_, w_, None if factors is None else (t(factors[0]), t(factors[1])))


def as_float32(*arrays):
    """What spectui sees: the matrices rounded to float32."""
    return [a.astype(np.float32).astype(np.float64) for a in arrays]


# -- principal angles -------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_principal_angles_are_the_singular_values_of_the_top_blocks(shape):
    m, n = shape
    w0, b, a = tuned_pair(m, n)
    w0, w = as_float32(w0, w0 + b @ a)
    result = scanned(w0, w)
    u0, _ = left(w0)
    u, _ = left(w)
    for r in (1, 5, 10, 20, min(m, n, 64)):
        cosines = np.linalg.svd(u[:, :r].T @ u0[:, :r], compute_uv=False)  # descending
        cosines = np.clip(cosines, 0, 1)
        np.testing.assert_allclose(result.principal_cosines(r), cosines, atol=2e-6)
        angles = np.degrees(np.arccos(cosines))
        assert result.max_principal_angle(r) == pytest.approx(angles.max(), abs=0.05)
        assert result.subspace_rotation(r) == pytest.approx(np.mean(1 - cosines**2), abs=2e-6)
        np.testing.assert_allclose(result.principal_angles(r), np.sort(angles), atol=0.05)


def test_a_known_rotation_of_the_dominant_subspace_gives_its_angle():
    """W keeps W0's singular values and right vectors; its top left vector is u0_0 turned by θ towards
    u0_15: the top-10 subspaces have one principal angle θ, the others 0."""
    m, n, theta = 64, 80, math.radians(25)
    rng = np.random.default_rng(5)
    u0, _ = np.linalg.qr(rng.standard_normal((m, m)))
    v0, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = np.linspace(10, 1, m)
    w0 = (u0 * s) @ v0[:, :m].T
    u = u0.copy()
    u[:, 0] = math.cos(theta) * u0[:, 0] + math.sin(theta) * u0[:, 15]
    u[:, 15] = -math.sin(theta) * u0[:, 0] + math.cos(theta) * u0[:, 15]
    w = (u * s) @ v0[:, :m].T
    result = scanned(w0, w)
    assert result.max_principal_angle(10) == pytest.approx(25.0, abs=0.01)
    assert result.subspace_rotation(10) == pytest.approx(math.sin(theta) ** 2 / 10, abs=1e-6)
    np.testing.assert_allclose(result.principal_angles(10)[:9], 0, atol=0.05)


# -- shares of ‖ΔW‖² --------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("low_rank", [False, True])
def test_share_of_the_update_inside_the_base_top_k_subspace(shape, low_rank):
    m, n = shape
    w0, b, a = tuned_pair(m, n, seed=2)
    w0, b, a = as_float32(w0, b, a)
    w = w0 + b @ a
    result = scanned(w0, w, (b, a) if low_rank else None)
    delta = w - w0
    u0, _ = left(w0)
    for k in (1, 3, 10, 40):
        share = np.linalg.norm(u0[:, :k].T @ delta) ** 2 / np.linalg.norm(delta) ** 2
        assert result.base_subspace_share(k) == pytest.approx(share, abs=1e-5)


def planted(m, n, seed):
    """A structured W0 and a W with two planted directions of large singular value: intruders."""
    rng = np.random.default_rng(seed)
    w0 = structured(m, n, seed)
    top = np.linalg.svd(w0, compute_uv=False)[0]
    b = rng.standard_normal((m, 2))
    a = rng.standard_normal((2, n))
    b /= np.linalg.norm(b, axis=0)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b *= [1.5 * top, 0.6 * top]
    return w0, b, a


@pytest.mark.parametrize("shape", [(64, 64), (160, 300), (300, 160)])
@pytest.mark.parametrize("low_rank", [False, True])
def test_share_of_the_update_along_the_intruders_at_any_k_and_epsilon(shape, low_rank):
    m, n = shape
    w0, b, a = as_float32(*planted(m, n, seed=3))
    w = w0 + b @ a
    result = scanned(w0, w, (b, a) if low_rank else None)
    delta = w - w0
    u0, _ = left(w0)
    u, _ = left(w)
    max_cos = np.abs(u.T @ u0).max(axis=1)
    seen = set()
    for k in (1, 2, 5, 10, 30):
        for epsilon in (0.2, 0.5, 0.9):
            intruders = [j for j in range(k) if max_cos[j] < epsilon]
            assert result.intruder_ranks(k, epsilon) == intruders
            share = sum(np.linalg.norm(u[:, j] @ delta) ** 2 for j in intruders) / np.linalg.norm(delta) ** 2
            assert result.intruder_share(k, epsilon) == pytest.approx(share, abs=1e-5)
            seen.add(round(share, 3))
    assert len(seen) > 1  # the sweep went through different intruder sets


# -- spectral drift ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_spectral_drift_is_the_relative_change_of_matched_singular_values(shape):
    m, n = shape
    w0, b, a = tuned_pair(m, n, seed=4)
    w0, w = as_float32(w0, w0 + b @ a)
    result = scanned(w0, w)
    s0, s = np.linalg.svd(w0, compute_uv=False), np.linalg.svd(w, compute_uv=False)
    for k in (1, 10, 25):
        drift = (s[:k] - s0[:k]) / s0[:k]
        np.testing.assert_allclose(result.spectral_drift(k), drift, rtol=1e-8, atol=1e-10)
        assert result.mean_abs_drift(k) == pytest.approx(np.abs(drift).mean(), rel=1e-8)


def test_an_unchanged_matrix_has_no_rotation_no_drift_and_no_shares():
    w0 = t(structured(48, 40))
    full = compare(decompose(w0), w0, w0.clone())
    quick = unchanged_result(decompose(w0).sigma, (48, 40))
    for result in (full, quick):
        assert result.max_principal_angle() == pytest.approx(0, abs=0.05)
        assert result.subspace_rotation() == pytest.approx(0, abs=1e-6)
        assert result.mean_abs_drift() == pytest.approx(0, abs=1e-12)
        assert result.base_subspace_share() is None and result.intruder_share() is None


def test_the_metrics_survive_the_cache(tmp_path):
    w0, b, a = as_float32(*planted(96, 40, seed=6))
    result = scanned(w0, w0 + b @ a, (b, a))
    cache = Cache(tmp_path)
    cache.put_result("0" * 64, result)
    back = cache.get_result("0" * 64)
    assert back is not None
    for name in MatrixResult.ARRAYS:
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
    assert back.base_mp_distance == result.base_mp_distance
    assert back.intruder_share() == result.intruder_share() and back.subspace_rotation() == result.subspace_rotation()
    again = MatrixResult.from_arrays(*unchanged_result(torch.from_numpy(result.sigma_base), (96, 40)).to_arrays())
    assert again.subspace_rotation() == 0.0 and again.base_subspace_share() is None


# -- the similarity of two updates ------------------------------------------------------------------

def cosine(x, y):
    return float((x * y).sum() / (np.linalg.norm(x) * np.linalg.norm(y)))


@pytest.mark.parametrize("shape", [(40, 96), (96, 40), (64, 64)])
def test_update_cosine_from_low_rank_factors_equals_the_dense_one(shape):
    m, n = shape
    rng = np.random.default_rng(7)
    b1, a1 = rng.standard_normal((m, 2)), rng.standard_normal((2, n))
    b2, a2 = rng.standard_normal((m, 5)), rng.standard_normal((5, n))
    shared = rng.standard_normal((m, n))
    d1 = b1 @ a1
    d2 = b2 @ a2 + 0.5 * d1  # correlated with d1 on purpose: rank 7, as B = [b2, b1/2], A = [a2; a1]
    full = shared + d1
    f1 = (torch.from_numpy(b1), torch.from_numpy(a1))
    f2 = (torch.from_numpy(np.hstack([b2, 0.5 * b1])), torch.from_numpy(np.vstack([a2, a1])))
    dense1, dense2, dense_full = (torch.from_numpy(x) for x in (d1, d2, full))
    expected = cosine(d1, d2)
    assert update_cosine(f1, f2) == pytest.approx(expected, abs=1e-12)  # both low rank: r×r traces
    assert update_cosine(dense1, dense2) == pytest.approx(expected, abs=1e-12)  # both dense
    assert update_cosine(f1, dense2) == pytest.approx(expected, abs=1e-12)  # one of each
    assert update_cosine(dense2, f1) == pytest.approx(expected, abs=1e-12)
    assert update_cosine(f1, dense_full) == pytest.approx(cosine(d1, full), abs=1e-12)
    assert update_inner(f1, f2) == pytest.approx(float((d1 * d2).sum()), rel=1e-12)
    assert update_norm2(f2) == pytest.approx(float((d2**2).sum()), rel=1e-12)
    assert update_cosine(f1, f1) == pytest.approx(1.0, abs=1e-12)
    assert update_cosine(f1, (-f1[0], f1[1])) == pytest.approx(-1.0, abs=1e-12)
    assert update_cosine(f1, torch.zeros(m, n, dtype=torch.float64)) is None


def test_dense_inner_products_are_chunked_without_changing_them(monkeypatch):
    import spectui.spectral

    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((50, 70)), rng.standard_normal((50, 70))
    b, a = rng.standard_normal((50, 3)), rng.standard_normal((3, 70))
    monkeypatch.setattr(spectui.spectral, "_CHUNK", 64)
    assert update_inner(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(float((x * y).sum()), rel=1e-12)
    assert update_inner(torch.from_numpy(x), (torch.from_numpy(b), torch.from_numpy(a))) == pytest.approx(
        float((x * (b @ a)).sum()), rel=1e-12)


def test_update_similarity_of_a_lora_and_a_full_fine_tune_matches_the_dense_updates(tiny):
    """Per matrix and for the whole model, from the checkpoints: the LoRA's ΔW from its factors (never
    multiplied out by spectui), the full fine-tune's as W − W0; here both are formed densely."""
    comparison = open_comparison(str(tiny / "base"), [str(tiny / "lora"), str(tiny / "full"), str(tiny / "lora")])
    scan = Scan(comparison, Cache(None), device="cpu").run()
    similarity = ScanResults(comparison, scan.results, scan.errors).update_similarity()
    lora, full = comparison.tuned[0], comparison.tuned[1]
    deltas = {0: {}, 1: {}}
    for index, model in ((0, lora), (1, full)):
        for spec in model.pairing.matrices:
            w0 = load_matrix(comparison.base, spec.name, spec).double().numpy()
            w = load_matrix(model.source, spec.tuned_name, spec).double().numpy()
            deltas[index][spec.name] = w - w0
    both = sorted(set(deltas[0]) & set(deltas[1]))
    assert both and similarity.matrices(0, 1).keys() == set(both)
    for name in both:
        expected = cosine(deltas[0][name], deltas[1][name])
        assert similarity.matrices(0, 1)[name] == pytest.approx(expected, abs=1e-5)
    inner = sum(float((deltas[0][n] * deltas[1][n]).sum()) for n in both)
    norms = [sum(float((d**2).sum()) for d in deltas[i].values()) for i in (0, 1)]
    assert similarity.between(0, 1) == pytest.approx(inner / math.sqrt(norms[0] * norms[1]), abs=1e-5)
    assert similarity.between(0, 2) == pytest.approx(1.0, abs=1e-9)  # the same adapter twice
    assert similarity.cosine[1][1] == 1.0 and similarity.labels == [m.label for m in comparison.tuned]


def test_scan_json_carries_the_metrics_per_matrix_per_model_and_the_similarity(cli, tiny):
    ran = cli("scan", tiny / "base", tiny / "lora", tiny / "full", "--json", "--no-cache")
    assert ran.code == 0, ran.err
    data = json.loads(ran.out)
    for record in data["models"]:
        matrices = record["matrices"]
        for m in matrices:
            assert len(m["principal_angles_deg"]) == min(10, *m["shape"])
            assert m["max_principal_angle_deg"] == pytest.approx(max(m["principal_angles_deg"]))
            assert 0 <= m["subspace_rotation"] <= 1 and 0 <= m["delta_share_base_top_k"] <= 1
            assert 0 <= m["delta_share_intruders"] <= 1 and len(m["spectral_drift"]) == 10
            assert m["mean_abs_drift"] == pytest.approx(np.mean(np.abs(m["spectral_drift"])))
        medians = record["medians"]
        assert medians["max_principal_angle_deg"] == pytest.approx(
            float(np.median([m["max_principal_angle_deg"] for m in matrices])))
        assert medians["delta_share_intruders"] == pytest.approx(
            float(np.median([m["delta_share_intruders"] for m in matrices])))
    similarity = data["update_similarity"]
    assert similarity["models"] == [r["label"] for r in data["models"]]
    assert len(similarity["cosine"]) == 2 and similarity["cosine"][0][1] == similarity["cosine"][1][0]
    assert [(p["a"], p["b"]) for p in similarity["pairs"]] == [tuple(similarity["models"])]
    single = json.loads(cli("scan", tiny / "base", tiny / "lora", "--json", "--no-cache").out)
    assert "update_similarity" not in single and "medians" in single
