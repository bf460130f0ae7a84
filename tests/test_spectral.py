import numpy as np
import pytest
import torch
from naive import naive_intruders, naive_max_cos

from spectui.spectral import (
    compare,
    decompose,
    effective_rank,
    low_rank_singular_values,
    singular_values,
)

SHAPES = [(48, 48), (40, 96), (96, 40)]
# wide enough (short side > 2 × TOP_VECTORS) that a tuned matrix takes the top-vectors-only solver
WIDE_SHAPES = [(160, 300), (300, 160)]


def structured(m, n, seed=0):
    """A base with a decaying spectrum, like trained weights (not random-looking)."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=gen))
    r = min(m, n)
    s = torch.linspace(1, 0.05, r) ** 2 * 10
    return (u[:, :r] * s) @ v[:, :r].T


def unit(n, gen):
    x = torch.randn(n, generator=gen)
    return x / x.norm()


@pytest.mark.parametrize("shape", SHAPES)
def test_planted_intruder_is_found_at_rank_zero(shape):
    m, n = shape
    gen = torch.Generator().manual_seed(1)
    w0 = structured(m, n)
    sigma_max = torch.linalg.svdvals(w0)[0]
    w = w0 + 1.5 * sigma_max * torch.outer(unit(m, gen), unit(n, gen))
    result = compare(decompose(w0), w0, w)
    assert result.intruder_ranks() == [0]
    assert result.intruder_ranks() == naive_intruders(w0, w)


@pytest.mark.parametrize("shape", SHAPES + WIDE_SHAPES)
def test_small_full_rank_perturbation_has_no_intruders(shape):
    m, n = shape
    gen = torch.Generator().manual_seed(2)
    w0 = structured(m, n)
    w = w0 + 1e-3 * torch.randn(m, n, generator=gen)
    result = compare(decompose(w0), w0, w)
    assert result.intruders() == 0
    assert naive_intruders(w0, w) == []


@pytest.mark.parametrize("shape", SHAPES + WIDE_SHAPES)
def test_max_cos_and_spectra_match_full_svd(shape):
    m, n = shape
    gen = torch.Generator().manual_seed(3)
    w0 = structured(m, n)
    w = w0 + 0.3 * torch.randn(m, 3, generator=gen) @ torch.randn(3, n, generator=gen)
    result = compare(decompose(w0), w0, w)
    # Compare where the spectrum is not degenerate (a vector's max|cos| is basis-free there).
    np.testing.assert_allclose(result.max_cos[:10], naive_max_cos(w0, w)[:10].numpy(), atol=1e-6)
    # float64 Gram eigenvalues: relative error ~1e-16·(σ_max/σ_i)², here below 1e-10
    for ours, w_ in ((result.sigma_tuned, w), (result.sigma_base, w0)):
        exact = torch.linalg.svdvals(w_.double()).numpy()
        np.testing.assert_allclose(ours, exact, rtol=1e-9)
    delta = torch.linalg.svdvals((w - w0).double())
    base_norm = torch.linalg.svdvals(w0.double()).norm()
    assert result.delta_rel_norm == pytest.approx(float(delta.norm() / base_norm), rel=1e-5)
    assert result.delta_effective_rank == pytest.approx(effective_rank(delta.numpy()), rel=1e-4)


def test_left_vectors_are_orthonormal_for_rank_deficient_tall_matrix():
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(80, 4, generator=gen) @ torch.randn(4, 30, generator=gen)
    dec = decompose(w)
    eye = dec.u.T.double() @ dec.u.double()
    assert torch.allclose(eye, torch.eye(30, dtype=torch.float64), atol=1e-5)
    assert (dec.sigma[4:] < 1e-4 * dec.sigma[0]).all()


def test_low_rank_singular_values_equal_dense():
    gen = torch.Generator().manual_seed(5)
    b, a = torch.randn(40, 3, generator=gen), torch.randn(3, 70, generator=gen)
    fast = low_rank_singular_values(b, a, size=40)
    dense = singular_values(b @ a)
    np.testing.assert_allclose(fast.numpy(), dense.numpy(), atol=1e-4)


def test_effective_rank_counts_equal_directions():
    assert effective_rank(np.array([1.0, 1.0, 1.0, 0.0])) == pytest.approx(3.0)
    assert effective_rank(np.array([5.0, 0.0])) == pytest.approx(1.0)
    assert effective_rank(np.zeros(4)) == 0.0


@pytest.mark.parametrize("shape", [(32, 32), (128, 256), (300, 120)])
def test_random_matrix_looks_random_and_structured_does_not(shape):
    gen = torch.Generator().manual_seed(6)
    for w0, random_like in ((torch.randn(*shape, generator=gen), True), (structured(*shape), False)):
        w = w0 + 1e-3 * torch.randn(*shape, generator=gen)
        assert compare(decompose(w0), w0, w).base_random_like is random_like


def test_k_and_epsilon_change_counts_without_new_decomposition():
    gen = torch.Generator().manual_seed(7)
    w0 = structured(64, 64)
    sigma_max = torch.linalg.svdvals(w0)[0]
    first, second = torch.outer(unit(64, gen), unit(64, gen)), torch.outer(unit(64, gen), unit(64, gen))
    w = w0 + sigma_max * (1.5 * first + 0.3 * second)
    result = compare(decompose(w0), w0, w)
    for k in (1, 5, 10, 20):
        for eps in (0.1, 0.5, 0.9):
            assert result.intruder_ranks(k, eps) == naive_intruders(w0, w, k, eps)
