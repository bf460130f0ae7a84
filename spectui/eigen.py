"""Gram matrices and their eigen-solvers, in float64: every eigenpair (a base matrix), or every
eigenvalue with only the top eigenvectors (a tuned matrix).

The second is why this module exists. A full eigen-decomposition spends most of its time on
eigenvectors; a tuned matrix needs all its eigenvalues but only its top TOP_VECTORS vectors. On the
CPU this is LAPACK (`spectui.lapack`): one blocked reduction to a narrow band (BLAS 3; a tridiagonal
one where the library lacks the two-stage routines), all eigenvalues from it, the top eigenvectors
of the band matrix by inverse iteration, and the reflectors applied to those alone. That costs about
what the eigenvalues alone cost, and much less than torch's eigh followed by eigvalsh. On a GPU,
or where SciPy's LAPACK cannot be called as declared, torch's solvers are used. Eigenvalues come in
ascending order, as LAPACK gives them; the solvers read only the lower triangle of a Gram matrix,
which is all `gram` fills on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from spectui import lapack

BAND = 48  # half-width of the band a Gram matrix is reduced to (bench/README.md: 16 to 64 measured)
_TOGETHER = 1e-3  # eigenvalues closer than this times ‖B‖ get vectors kept orthogonal to each other (as dstein)
_MAX_ITERATIONS = 5  # inverse iteration steps per vector at most (dstein's MAXITS)
_CONVERGED = 1e3  # a vector's residual ‖B z − λ z‖ at most this × n ε ‖B‖₁ (else: None, not a guess)


def gram(w: torch.Tensor, minus: torch.Tensor | None = None) -> torch.Tensor:
    """W Wᵀ or Wᵀ W (float64), whichever is smaller: its eigenvalues are the squared singular values
    of W. On the CPU W stays in its own precision, converted a slab at a time. With `minus`, the
    Gram of W − minus (a dense ΔW), on the CPU without a matrix-sized difference."""
    m, n = w.shape
    if not _on_lapack(w):
        w = w.to(torch.float64) - (0 if minus is None else minus.to(torch.float64))
        return w @ w.T if m <= n else w.T @ w
    return torch.from_numpy(lapack.gram_lower(_slabbed(w), minus=None if minus is None else _slabbed(minus)))


def _slabbed(w: torch.Tensor):
    """What `lapack.gram_lower` reads slabs of: a numpy view, or the tensor itself where numpy has no
    such type (bfloat16)."""
    return w.numpy() if w.dtype in (torch.float32, torch.float64, torch.float16) else w


def full_gram(w: torch.Tensor) -> torch.Tensor:
    """`gram` with both triangles filled, for products with it (the counts' Lanczos runs)."""
    g = gram(w)
    if _on_lapack(g):
        a = g.numpy()
        for start in range(0, a.shape[0], 512):  # upper from lower, a block of columns at a time
            block = slice(start, start + 512)
            a[:start, block] = a[block, :start].T
            a[block, block] = np.tril(a[block, block]) + np.tril(a[block, block], -1).T
    return g


def eigh(gram: torch.Tensor, scratch: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Every eigenvalue and eigenvector (columns). `scratch`: the Gram matrix is a temporary that
    LAPACK may overwrite, which saves a copy of it (a matrix's memory peak)."""
    if not _on_lapack(gram):
        return torch.linalg.eigh(gram)
    lam, vecs = lapack.syevd(_lapack_copy(gram, scratch))
    return torch.from_numpy(lam), torch.from_numpy(vecs)


def eigvalsh(gram: torch.Tensor, scratch: bool = False) -> torch.Tensor:
    """Every eigenvalue (`scratch` as for `eigh`), from the band reduction: at 4096² 1.9–2.1 s on one
    thread against 2.5–2.9 s for LAPACK's own two-stage solver, whose band is wider."""
    reduced = reduce(gram, scratch)
    return torch.linalg.eigvalsh(gram) if reduced is None else torch.from_numpy(reduced.eigenvalues())


def eigh_top(gram: torch.Tensor, count: int, scratch: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Every eigenvalue, and the eigenvectors of the `count` largest (columns, ascending like the
    eigenvalues; `scratch` as for `eigh`)."""
    n = gram.shape[0]
    # when most vectors are wanted, the full solver is as fast
    if 2 * count < n and (reduced := reduce(gram, scratch)) is not None:
        lam = reduced.eigenvalues()
        z = reduced.vectors(lam[n - count:])
        if z is not None:
            return torch.from_numpy(lam), torch.from_numpy(reduced.from_reduced(z))
    lam, vecs = eigh(gram, scratch)
    return lam, vecs[:, n - count:]


@dataclass
class Reduction:
    """A Gram matrix G reduced to a symmetric band B of half-width kd, G = Q B Qᵀ: the first stage of
    LAPACK's two-stage solver (BLAS 3), or dsytrd's tridiagonal (kd = 1) where the library lacks it.
    B in LAPACK's lower band storage, Q as reflectors below the kd-th subdiagonal of `reflectors`. Its
    eigenvalues cost O(n² kd) from here, any chosen eigenvectors O(n kd²) each, and a vector moves
    between G's and B's coordinates in O(n²): what the counts need of a base matrix without its full
    decomposition (certify.py)."""

    band: np.ndarray
    tau: np.ndarray
    reflectors: np.ndarray

    @property
    def kd(self) -> int:
        return self.band.shape[0] - 1

    def eigenvalues(self) -> np.ndarray:
        """Every eigenvalue, ascending."""
        d, e = (self.band[0], self.band[1, :-1]) if self.kd == 1 else lapack.band_tridiagonal(self.band)
        return lapack.sterf(d, e)

    def vectors(self, eigenvalues: np.ndarray) -> np.ndarray | None:
        """B's eigenvectors (columns) for some of its eigenvalues (ascending) by inverse iteration on
        LU factors of B − λ, each kept orthogonal to those of eigenvalues near it and iterated until
        its residual is at rounding level; None where one does not get there."""
        kd, n = self.kd, self.band.shape[1]
        general = np.zeros((3 * kd + 1, n), order="F")  # dgbtrf's storage: B from row kd, room for fill-in
        general[2 * kd:] = self.band
        for r in range(1, kd + 1):
            general[2 * kd - r, r:] = self.band[r, : n - r]
        norm = float(np.abs(general).sum(axis=0).max())  # ‖B‖₁ (B is symmetric: column sums)
        rounding = np.finfo(np.float64).eps * max(norm, np.finfo(np.float64).tiny)
        start = np.random.default_rng(0).uniform(-1, 1, n)
        z = np.zeros((n, len(eigenvalues)), order="F")
        first = 0  # of the run of eigenvalues within _TOGETHER of their neighbours
        for i, lam in enumerate(eigenvalues):
            if i and eigenvalues[i] - eigenvalues[i - 1] > _TOGETHER * norm:
                first = i
            factors = general.copy(order="F")
            factors[2 * kd] -= lam
            pivots = lapack.band_lu(factors, kd)
            diagonal = factors[2 * kd]  # U's: an exact eigenvalue leaves zeros there, as dstein's pivots
            small = np.abs(diagonal) < rounding
            diagonal[small] = np.where(diagonal[small] < 0, -rounding, rounding)
            x = start.copy()
            for _ in range(_MAX_ITERATIONS):
                x = lapack.band_solve(factors, kd, pivots, x.reshape(n, 1, order="F"))[:, 0]
                near = z[:, first:i]
                for _ in range(2):
                    x -= near @ (near.T @ x)
                size = np.linalg.norm(x)
                if not np.isfinite(size) or size == 0:
                    return None
                x /= size
                if np.linalg.norm(self.times(x[:, None])[:, 0] - lam * x) <= _CONVERGED * n * rounding:
                    break
            else:
                return None
            z[:, i] = x
        return z

    def times(self, x: np.ndarray) -> np.ndarray:
        """B x for columns x (float64)."""
        out = self.band[0][:, None] * x
        for r in range(1, self.kd + 1):
            diagonal = self.band[r, : len(x) - r][:, None]
            out[r:] += diagonal * x[:-r]
            out[:-r] += diagonal * x[r:]
        return out

    def from_reduced(self, z: np.ndarray) -> np.ndarray:
        """Q z: B's coordinates to G's."""
        return self._apply(z, transpose=False)

    def to_reduced(self, x: np.ndarray) -> np.ndarray:
        """Qᵀ x: G's coordinates to B's."""
        return self._apply(x, transpose=True)

    def _apply(self, x: np.ndarray, transpose: bool) -> np.ndarray:
        kd, n = self.kd, self.band.shape[1]
        rest = np.array(x[kd:], dtype=np.float64, order="F")
        lapack.apply_reflectors(self.reflectors[kd:, : n - kd], self.tau, rest, transpose)
        return np.vstack([x[:kd], rest])


def reduce(gram: torch.Tensor, scratch: bool = False) -> Reduction | None:
    """G's band reduction (`scratch` as for `eigh`), or None off the CPU's LAPACK."""
    if not _on_lapack(gram) or gram.shape[0] < 2:
        return None
    reflectors = _lapack_copy(gram, scratch)
    if lapack.two_stage():
        band, tau = lapack.band_reduce(reflectors, min(BAND, gram.shape[0] - 1))
    else:
        d, e, tau = lapack.sytrd(reflectors)
        band = np.asfortranarray(np.vstack([d, np.append(e, 0.0)]))
    return Reduction(band, tau, reflectors)


def _on_lapack(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and lapack.usable()


def _lapack_copy(gram: torch.Tensor, scratch: bool = False) -> np.ndarray:
    """A column-major float64 array LAPACK may overwrite: a copy, or with `scratch` the Gram
    matrix's own memory where it is already laid out so (as `gram` makes it)."""
    array = gram.to(torch.float64).numpy()
    return np.asfortranarray(array) if scratch else np.array(array, order="F")
