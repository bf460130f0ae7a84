"""Gram matrices and their eigen-solvers, in float64: every eigenpair (a base matrix), or every
eigenvalue with only the top eigenvectors (a tuned matrix).

The second is why this module exists. A full eigen-decomposition spends most of its time on
eigenvectors; a tuned matrix needs all its eigenvalues but only its top TOP_VECTORS vectors. On the
CPU this is LAPACK (`spectui.lapack`): one blocked reduction to tridiagonal form, all eigenvalues
from it, the top eigenvectors of the tridiagonal matrix by inverse iteration, and the reflectors
applied to those alone. That costs about what the eigenvalues alone cost, and much less than
torch's eigh followed by eigvalsh. On a GPU, or where SciPy's LAPACK cannot be called as declared,
torch's solvers are used. Eigenvalues come in ascending order, as LAPACK gives them; the solvers
read only the lower triangle of a Gram matrix, which is all `gram` fills on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch

from spectui import lapack


def gram(w: torch.Tensor) -> torch.Tensor:
    """W Wᵀ or Wᵀ W (float64), whichever is smaller: its eigenvalues are the squared singular values
    of W."""
    m, n = w.shape
    w = w.to(torch.float64)
    if not _on_lapack(w):
        return w @ w.T if m <= n else w.T @ w
    return torch.from_numpy(lapack.gram_lower(w.numpy()))


def eigh(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every eigenvalue and eigenvector (columns)."""
    if not _on_lapack(gram):
        return torch.linalg.eigh(gram)
    lam, vecs = lapack.syevd(_lapack_copy(gram))
    return torch.from_numpy(lam), torch.from_numpy(vecs)


def eigvalsh(gram: torch.Tensor) -> torch.Tensor:
    """Every eigenvalue."""
    if not _on_lapack(gram):
        return torch.linalg.eigvalsh(gram)
    d, e, _ = lapack.sytrd(_lapack_copy(gram))
    return torch.from_numpy(lapack.sterf(d, e))


def eigh_top(gram: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every eigenvalue, and the eigenvectors of the `count` largest (columns, ascending like the
    eigenvalues)."""
    n = gram.shape[0]
    if _on_lapack(gram) and 2 * count < n:  # when most vectors are wanted, the full solver is as fast
        reflectors = _lapack_copy(gram)
        d, e, tau = lapack.sytrd(reflectors)
        lam = lapack.sterf(d, e)
        z = _top_tridiagonal_vectors(d, e, lam[n - count:])
        if z is not None:
            # Q = diag(1, Q'), Q' being the orthogonal factor whose reflectors dsytrd left below
            # the diagonal of reflectors[1:, :n-1]
            rest = lapack.apply_reflectors(reflectors[1:, : n - 1], tau, np.asfortranarray(z[1:]))
            return torch.from_numpy(lam), torch.from_numpy(np.vstack([z[:1], rest]))
    lam, vecs = eigh(gram)
    return lam, vecs[:, n - count:]


def _on_lapack(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and lapack.usable()


def _top_tridiagonal_vectors(d: np.ndarray, e: np.ndarray, eigenvalues: np.ndarray) -> np.ndarray | None:
    """Inverse iteration's eigenvectors, or None where it does not serve: a matrix that splits into
    blocks (dstein would have to be told them), or a vector that did not converge."""
    if not e.all():
        return None
    try:
        return lapack.stein(d, e, eigenvalues)
    except np.linalg.LinAlgError:
        return None


def _lapack_copy(gram: torch.Tensor) -> np.ndarray:
    """A column-major float64 copy, which LAPACK overwrites."""
    return np.array(gram.to(torch.float64).numpy(), order="F")
