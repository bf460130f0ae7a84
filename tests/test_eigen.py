"""The LAPACK path of the Gram eigen-solvers against numpy's full solver, where shortcuts go wrong:
decaying and clustered spectra, a matrix that splits into blocks, a rank-deficient one."""

import numpy as np
import pytest
import torch

from spectui import eigen

N, COUNT = 300, 64


def gram_with(eigenvalues: np.ndarray, seed: int = 0) -> torch.Tensor:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigenvalues),) * 2))
    g = (q * eigenvalues) @ q.T
    return torch.from_numpy((g + g.T) / 2)


SPECTRA = {
    "decaying": np.logspace(0, -8, N),  # ill-conditioned, like trained weights
    "clustered": np.concatenate([np.linspace(1, 0.999, 80), np.full(N - 80, 1e-3)]),
    "rank-deficient": np.concatenate([np.logspace(0, -2, 100), np.zeros(N - 100)]),
}


def assert_same_top_pairs(lam, vecs, reference_lam, reference_vecs, count):
    np.testing.assert_allclose(lam.numpy(), reference_lam, rtol=1e-9, atol=1e-12 * reference_lam[-1])
    assert vecs.shape == (len(reference_lam), count)
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(count), atol=1e-10)
    # each vector spans the same eigenspace as the reference's (signs and rotations within exact
    # ties are arbitrary): its residual against the Gram matrix is at rounding level
    cos = np.abs(np.sum(vecs.numpy() * reference_vecs[:, -count:], axis=0))
    gaps = np.diff(reference_lam[-count - 1:])  # below each of the top values, then above
    isolated = (gaps > 1e-9 * reference_lam[-1]) & (np.append(gaps[1:], np.inf) > 1e-9 * reference_lam[-1])
    assert isolated.any() and cos[isolated].min() > 1 - 1e-9


@pytest.mark.parametrize("two_stage", [True, False], ids=["band", "tridiagonal"])
@pytest.mark.parametrize("kind", SPECTRA)
def test_top_vectors_and_all_values_match_a_full_solve(kind, two_stage, monkeypatch):
    """Top vectors by inverse iteration on the reduced matrix: LAPACK's two-stage band, or dsytrd's
    tridiagonal where the library lacks it."""
    from spectui import lapack

    monkeypatch.setattr(lapack, "two_stage", lambda: two_stage)
    g = gram_with(SPECTRA[kind])
    reference_lam, reference_vecs = np.linalg.eigh(g.numpy())
    with monkeypatch.context() as patch:  # no quiet fallback on the full solver
        patch.setattr(eigen, "eigh", None)
        lam, vecs = eigen.eigh_top(g.clone(), COUNT)
    assert_same_top_pairs(lam, vecs, reference_lam, reference_vecs, COUNT)
    np.testing.assert_allclose((g.numpy() @ vecs.numpy()) / lam.numpy()[-COUNT:], vecs.numpy(), atol=1e-8)
    np.testing.assert_allclose(eigen.eigvalsh(g.clone()).numpy(), reference_lam, rtol=1e-9,
                               atol=1e-12 * reference_lam[-1])


@pytest.mark.parametrize("two_stage", [True, False], ids=["band", "dsytrd"])
@pytest.mark.parametrize("kind", SPECTRA)
def test_every_eigenvalue_by_either_reduction_matches_a_full_solve(kind, two_stage, monkeypatch):
    """`eigvalsh` takes the two-stage solver's stages, found beside SciPy's exports; a library without
    them falls back on dsytrd and dsterf. Both agree with numpy's full solver to rounding."""
    from spectui import lapack

    assert lapack.two_stage(), "SciPy's OpenBLAS exports the two-stage routines: the fast path must be found"
    monkeypatch.setattr(lapack, "two_stage", lambda: two_stage)
    g = gram_with(SPECTRA[kind])
    reference = np.linalg.eigvalsh(g.numpy())
    np.testing.assert_allclose(eigen.eigvalsh(g.clone()).numpy(), reference, rtol=1e-9,
                               atol=1e-12 * reference[-1])


def test_a_library_without_the_routine_is_no_sibling(monkeypatch):
    from spectui import lapack

    monkeypatch.setitem(lapack._SIBLINGS, "dnosuch", lapack._SIBLINGS["dsytrd_sy2sb"])
    with pytest.raises(KeyError):
        lapack._sibling("dnosuch")


@pytest.mark.parametrize("two_stage", [True, False], ids=["band", "tridiagonal"])
def test_a_matrix_that_splits_into_blocks_is_solved_by_inverse_iteration(two_stage, monkeypatch):
    from spectui import lapack

    monkeypatch.setattr(lapack, "two_stage", lambda: two_stage)
    a, b = gram_with(np.logspace(0, -3, N // 2), 1).numpy(), gram_with(np.logspace(0.5, -2, N // 2), 2).numpy()
    g = torch.from_numpy(np.block([[a, np.zeros_like(a)], [np.zeros_like(b), b]]))
    reference_lam, reference_vecs = np.linalg.eigh(g.numpy())
    monkeypatch.setattr(eigen, "eigh", None)
    lam, vecs = eigen.eigh_top(g.clone(), COUNT)
    assert_same_top_pairs(lam, vecs, reference_lam, reference_vecs, COUNT)


@pytest.mark.parametrize("two_stage", [True, False], ids=["band", "tridiagonal"])
@pytest.mark.parametrize("n", [2, 3, 49, 50, 51, 97])
def test_a_reduction_is_similar_to_its_matrix_at_every_size(n, two_stage, monkeypatch):
    """G = Q B Qᵀ with B banded (half-width min(BAND, n − 1), or 1 by dsytrd) at the sizes where the
    band is the whole matrix, one short of it, or just narrower: B's product, Q's two directions and
    B's eigenpairs by inverse iteration, against dense linear algebra."""
    from spectui import lapack

    monkeypatch.setattr(lapack, "two_stage", lambda: two_stage)
    spectrum = np.logspace(0, -4, n)
    g = gram_with(spectrum, seed=n).numpy()
    reduction = eigen.reduce(torch.from_numpy(g.copy()))
    kd = reduction.kd
    assert kd == (min(eigen.BAND, n - 1) if two_stage else 1)
    b = reduction.times(np.eye(n))  # B, column by column
    assert np.allclose(b, b.T, atol=1e-14) and not np.triu(b, kd + 1).any()
    q = reduction.from_reduced(np.eye(n))
    np.testing.assert_allclose(q.T @ q, np.eye(n), atol=1e-13)
    np.testing.assert_allclose(q @ b @ q.T, g, atol=1e-13)
    np.testing.assert_allclose(reduction.to_reduced(q), np.eye(n), atol=1e-13)
    lam = reduction.eigenvalues()
    np.testing.assert_allclose(lam, np.sort(spectrum), rtol=1e-9, atol=1e-14)
    z = reduction.vectors(lam)
    np.testing.assert_allclose(b @ z, z * lam, atol=1e-12)
    np.testing.assert_allclose(z.T @ z, np.eye(n), atol=1e-10)


def test_a_scratch_gram_gives_the_same_answers():
    g = gram_with(SPECTRA["decaying"])
    lam, vecs = eigen.eigh_top(g.clone(), COUNT)
    scratch_lam, scratch_vecs = eigen.eigh_top(g.clone(), COUNT, scratch=True)
    assert torch.equal(lam, scratch_lam) and torch.equal(vecs, scratch_vecs)
    assert torch.equal(eigen.eigh(g.clone())[0], eigen.eigh(g.clone(), scratch=True)[0])
    assert torch.equal(eigen.eigvalsh(g.clone()), eigen.eigvalsh(g.clone(), scratch=True))


def test_full_gram_fills_both_triangles():
    w = torch.randn(700, 1300, dtype=torch.float64)
    for matrix in (w, w.T):
        expected = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
        torch.testing.assert_close(eigen.full_gram(matrix), expected, rtol=1e-12, atol=1e-9)


def test_the_input_is_not_overwritten():
    g = gram_with(SPECTRA["decaying"])
    before = g.clone()
    eigen.eigh_top(g, COUNT)
    eigen.eigh(g)
    eigen.eigvalsh(g)
    assert torch.equal(g, before)


def test_a_scipy_whose_lapack_is_declared_otherwise_is_refused(monkeypatch):
    from spectui import lapack

    lapack._routine.cache_clear()
    monkeypatch.setitem(lapack._SIGNATURES, "dsterf", (lapack._int, lapack._double, lapack._double))
    try:
        with pytest.raises(RuntimeError, match="dsterf is declared as"):
            lapack._routine("dsterf")
    finally:
        lapack._routine.cache_clear()


def test_without_a_usable_scipy_lapack_torch_solves_the_same(monkeypatch):
    """A SciPy refused above must not fail every matrix of a scan: torch's solvers take over."""
    from spectui import lapack

    g = gram_with(SPECTRA["decaying"])
    reference_lam, reference_vecs = np.linalg.eigh(g.numpy())
    monkeypatch.setattr(lapack, "usable", lambda: False)
    monkeypatch.setattr(lapack, "_routine", None)  # any LAPACK call now fails loudly
    lam, vecs = eigen.eigh_top(g.clone(), COUNT)
    assert_same_top_pairs(lam, vecs, reference_lam, reference_vecs, COUNT)
    np.testing.assert_allclose(eigen.eigvalsh(g.clone()).numpy(), reference_lam, rtol=1e-9,
                               atol=1e-12 * reference_lam[-1])
    w = torch.from_numpy(np.random.default_rng(3).standard_normal((40, 70)))
    np.testing.assert_allclose(eigen.gram(w).numpy(), (w @ w.T).numpy(), rtol=1e-12)


def test_a_refused_scipy_reads_unusable(monkeypatch):
    from spectui import lapack

    lapack._routine.cache_clear()
    lapack.usable.cache_clear()
    monkeypatch.setitem(lapack._SIGNATURES, "dsterf", (lapack._int, lapack._double, lapack._double))
    try:
        assert lapack.usable() is False
    finally:
        lapack._routine.cache_clear()
        lapack.usable.cache_clear()


@pytest.mark.parametrize("shape", [(300, 1100), (1100, 300)])
def test_the_gram_of_a_difference_is_that_of_the_difference_formed_whole(shape, monkeypatch):
    """A dense ΔW's Gram from W and W0 a slab at a time (no ΔW-sized temporary), on LAPACK and on
    torch's path, against the difference formed whole in float64."""
    from spectui import lapack

    rng = np.random.default_rng(5)
    w0 = torch.from_numpy(rng.standard_normal(shape)).to(torch.bfloat16)
    w = (w0.double() + 0.01 * torch.from_numpy(rng.standard_normal(shape))).to(torch.bfloat16)
    delta = w.double() - w0.double()
    expected = delta @ delta.T if shape[0] <= shape[1] else delta.T @ delta
    lower = eigen.gram(w, minus=w0).numpy()
    np.testing.assert_allclose(np.tril(lower), np.tril(expected.numpy()), rtol=1e-10, atol=1e-12)
    monkeypatch.setattr(lapack, "usable", lambda: False)
    np.testing.assert_allclose(eigen.gram(w, minus=w0).numpy(), expected.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(600, 1300), (1300, 600), (517, 517)])
def test_a_gram_in_slabs_of_any_stored_type_is_the_float64_product(shape, dtype):
    """Slabs of rows (tall W) or of columns (wide W, read in place), the last one short, converted
    from the type as stored: the float64 product of the same values."""
    w = torch.randn(shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    exact = w.double()
    expected = exact @ exact.T if shape[0] <= shape[1] else exact.T @ exact
    np.testing.assert_allclose(np.tril(eigen.gram(w).numpy()), np.tril(expected.numpy()), rtol=1e-12, atol=1e-10)
