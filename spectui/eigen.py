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

from dataclasses import dataclass

import numpy as np
import torch

from spectui import lapack


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
    """Every eigenvalue (`scratch` as for `eigh`)."""
    if not _on_lapack(gram):
        return torch.linalg.eigvalsh(gram)
    return torch.from_numpy(lapack.eigenvalues(_lapack_copy(gram, scratch)))


def eigh_top(gram: torch.Tensor, count: int, scratch: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Every eigenvalue, and the eigenvectors of the `count` largest (columns, ascending like the
    eigenvalues; `scratch` as for `eigh`)."""
    n = gram.shape[0]
    # when most vectors are wanted, the full solver is as fast
    if 2 * count < n and (reduced := reduce(gram, scratch)) is not None:
        lam = reduced.eigenvalues()
        z = reduced.tridiagonal_vectors(lam[n - count:])
        if z is not None:
            return torch.from_numpy(lam), torch.from_numpy(reduced.from_tridiagonal(z))
    lam, vecs = eigh(gram, scratch)
    return lam, vecs[:, n - count:]


@dataclass
class Reduction:
    """A Gram matrix G reduced to tridiagonal form, G = Q T Qᵀ (dsytrd): T's diagonal `d` and
    off-diagonal `e`, Q as reflectors. Its eigenvalues cost O(n²) from here, any chosen eigenvectors
    O(n) each, and a vector moves between G's and T's coordinates in O(n²): what the counts need of a
    base matrix without its full decomposition (certify.py)."""

    d: np.ndarray
    e: np.ndarray
    tau: np.ndarray
    reflectors: np.ndarray  # below the diagonal of [1:, :n-1]: Q = diag(1, Q')

    def eigenvalues(self) -> np.ndarray:
        """Every eigenvalue, ascending."""
        return lapack.sterf(self.d, self.e)

    def tridiagonal_vectors(self, eigenvalues: np.ndarray) -> np.ndarray | None:
        """T's eigenvectors (columns) for some of its eigenvalues (ascending) by inverse iteration,
        or None where that does not serve: a T that splits into blocks (dstein would have to be told
        them), or a vector that did not converge."""
        if not self.e.all():
            return None
        try:
            return lapack.stein(self.d, self.e, eigenvalues)
        except np.linalg.LinAlgError:
            return None

    def times(self, x: np.ndarray) -> np.ndarray:
        """T x for columns x (float64)."""
        out = self.d[:, None] * x
        out[:-1] += self.e[:, None] * x[1:]
        out[1:] += self.e[:, None] * x[:-1]
        return out

    def from_tridiagonal(self, z: np.ndarray) -> np.ndarray:
        """Q z: T's coordinates to G's."""
        return self._apply(z, transpose=False)

    def to_tridiagonal(self, x: np.ndarray) -> np.ndarray:
        """Qᵀ x: G's coordinates to T's."""
        return self._apply(x, transpose=True)

    def _apply(self, x: np.ndarray, transpose: bool) -> np.ndarray:
        n = len(self.d)
        rest = np.array(x[1:], dtype=np.float64, order="F")
        lapack.apply_reflectors(self.reflectors[1:, : n - 1], self.tau, rest, transpose)
        return np.vstack([x[:1], rest])


def reduce(gram: torch.Tensor, scratch: bool = False) -> Reduction | None:
    """G's tridiagonal reduction (`scratch` as for `eigh`), or None off the CPU's LAPACK."""
    if not _on_lapack(gram) or gram.shape[0] < 2:
        return None
    reflectors = _lapack_copy(gram, scratch)
    d, e, tau = lapack.sytrd(reflectors)
    return Reduction(d, e, tau, reflectors)


def _on_lapack(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and lapack.usable()


def _lapack_copy(gram: torch.Tensor, scratch: bool = False) -> np.ndarray:
    """A column-major float64 array LAPACK may overwrite: a copy, or with `scratch` the Gram
    matrix's own memory where it is already laid out so (as `gram` makes it)."""
    array = gram.to(torch.float64).numpy()
    return np.asfortranarray(array) if scratch else np.array(array, order="F")
