"""The paper's per-matrix figures, as pure functions on tensors.

Definitions (Shuttleworth et al., 2024; PEFT's `reduce_intruder_dimension`): with W0 = U0 S0 V0ᵀ and
W = U S Vᵀ, the j-th left singular vector u_j of W is an intruder iff max_i |u_jᵀ u0_i| < ε over
*all* left singular vectors of W0, for j among the top k. We keep max|cos| for every u_j, so any
(k, ε) is answered later without a new decomposition.

Speed: singular values and left singular vectors come from the eigen-decomposition of the smaller
Gram matrix, cheaper than an SVD (bench/README.md); for a tuned matrix only its top vectors are
computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from spectui import eigen
from spectui.defaults import DEFAULT_EPSILON, DEFAULT_K, SIMILARITY_SIZE, TOP_VECTORS
from spectui.intruders import count_intruders, intruder_ranks

ALGORITHM_VERSION = 4
# Kolmogorov–Smirnov distance to the Marchenko–Pastur law under which a spectrum looks random.
# Random matrices sit far closer than i.i.d. samples would (their eigenvalues are rigid), trained ones
# further (bench/README.md has the distances measured). Small matrices fluctuate more, hence the
# 3/rank floor.
RANDOM_LIKE_DISTANCE = 0.05


@dataclass
class Decomposition:
    """Singular values (descending, float64) and left singular vectors (columns, float32): all of
    them for a base matrix, the top TOP_VECTORS for a tuned one."""

    sigma: torch.Tensor
    u: torch.Tensor


def decompose(w: torch.Tensor, vectors: int | None = None) -> Decomposition:
    """All singular values and the first `vectors` (default all) left singular vectors of W, via
    the eigen-decomposition of the Gram matrix of its short side, in float64: a float32 solve would
    rotate the small-σ vectors within their clusters and blur the smallest singular values. A base
    matrix (decomposed once, cached) needs every vector; a tuned one only its top vectors, which
    `eigen.eigh_top` finds for little more than the cost of the eigenvalues."""
    m, n = w.shape
    w64 = w.to(torch.float64)
    if vectors is None:
        lam, vecs = eigen.eigh(eigen.gram(w64))
    else:
        lam, vecs = eigen.eigh_top(eigen.gram(w64), min(vectors, m, n))
    sigma = lam.flip(0).clamp_min(0).sqrt()
    vecs = vecs.flip(1).to(w.device)
    u = vecs if m <= n else _left_from_right(w64, vecs, sigma[: vecs.shape[1]].to(w.device))
    return Decomposition(sigma=sigma.cpu(), u=u.to(torch.float32))


# Above this σ_i/σ_max, u_i = W v_i / σ_i is orthonormal to ~1e-16 (σ_max/σ_i)² ≤ 1e-6 as it stands.
_ORTHONORMAL_FLOOR = 1e-5


def _left_from_right(w: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Left singular vectors u_i = W v_i / σ_i of a tall W from its right ones. Those of tiny σ_i
    would be spoilt by rounding: they are re-orthonormalised against the rest, in order (QR keeps
    the span of each leading set of columns)."""
    y = w @ v
    head = int((sigma > _ORTHONORMAL_FLOOR * sigma[0]).sum()) if sigma[0] > 0 else 0
    u = y[:, :head] / sigma[:head]
    if head == y.shape[1]:
        return u
    tail = y[:, head:] - u @ (u.T @ y[:, head:])
    q, r = torch.linalg.qr(tail)
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1
    return torch.cat([u, q * signs], dim=1)


def singular_values(w: torch.Tensor) -> torch.Tensor:
    """All singular values, descending; float64 so the tail of a low-rank ΔW stays near zero."""
    return eigen.eigvalsh(eigen.gram(w)).clamp_min(0).sqrt().flip(0).cpu()


def low_rank_singular_values(b: torch.Tensor, a: torch.Tensor, size: int) -> torch.Tensor:
    """Singular values of B @ A (rank r) from two thin QRs, padded with zeros to `size`."""
    _, rb = torch.linalg.qr(b.to(torch.float64))
    _, ra = torch.linalg.qr(a.T.to(torch.float64))
    core = torch.linalg.svdvals(rb @ ra.T).cpu()
    return torch.cat([core, torch.zeros(max(size - core.numel(), 0), dtype=torch.float64)])[:size]


def effective_rank(sigma: np.ndarray) -> float:
    """Roy & Vetterli (2007): exp of the entropy of the singular values normalised to sum 1."""
    total = float(sigma.sum())
    if total <= 0:
        return 0.0
    p = sigma[sigma > 0] / total
    return float(math.exp(-(p * np.log(p)).sum()))


def stable_rank(sigma: np.ndarray) -> float:
    """‖W‖_F² / ‖W‖₂²: how many directions carry the energy."""
    return float((sigma**2).sum() / sigma[0] ** 2) if sigma.size and sigma[0] > 0 else 0.0


def marchenko_pastur_distance(sigma: np.ndarray, shape: tuple[int, int]) -> float:
    """Kolmogorov–Smirnov distance between the squared spectrum and the Marchenko–Pastur law of
    an i.i.d. random matrix of the same shape and norm. Near 0 means "looks never trained"."""
    lam = np.sort(sigma**2)
    if lam.size < 8 or lam.mean() <= 0:
        return 1.0
    lam = lam / lam.mean()
    q = min(shape) / max(shape)
    grid, cdf = _mp_cdf(round(q, 3))
    model = np.interp(lam, grid, cdf)
    empirical_hi = np.arange(1, lam.size + 1) / lam.size
    empirical_lo = np.arange(0, lam.size) / lam.size
    return float(max(np.abs(empirical_hi - model).max(), np.abs(model - empirical_lo).max()))


@lru_cache(maxsize=64)
def _mp_cdf(q: float, points: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = (1 - math.sqrt(q)) ** 2, (1 + math.sqrt(q)) ** 2
    # Chebyshev-spaced grid resolves the square-root edges of the density.
    t = (1 - np.cos(np.linspace(0, math.pi, points))) / 2
    x = lo + (hi - lo) * t
    density = np.sqrt(np.clip((hi - x) * (x - lo), 0, None)) / (2 * math.pi * q * np.maximum(x, 1e-12))
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(x))])
    return x, cdf / cdf[-1]


@dataclass
class MatrixResult:
    """Everything the views need for one (base, tuned) matrix pair; small enough to cache."""

    shape: tuple[int, int]
    sigma_base: np.ndarray
    sigma_tuned: np.ndarray
    sigma_delta: np.ndarray
    max_cos: np.ndarray  # for the top TOP_VECTORS tuned left singular vectors, in singular-value order
    best_base: np.ndarray  # index of the base vector that attains it
    similarity: np.ndarray  # |U[:, :K]ᵀ U0[:, :K]|, K = SIMILARITY_SIZE
    delta_rel_norm: float
    base_mp_distance: float

    def intruder_ranks(self, k: int = DEFAULT_K, epsilon: float = DEFAULT_EPSILON) -> list[int]:
        return intruder_ranks(self.max_cos, k, epsilon)

    def intruders(self, k: int = DEFAULT_K, epsilon: float = DEFAULT_EPSILON) -> int:
        return count_intruders(self.max_cos, k, epsilon)

    @property
    def delta_effective_rank(self) -> float:
        return effective_rank(self.sigma_delta)

    @property
    def stable_rank_base(self) -> float:
        return stable_rank(self.sigma_base)

    @property
    def stable_rank_tuned(self) -> float:
        return stable_rank(self.sigma_tuned)

    @property
    def base_random_like(self) -> bool:
        return self.base_mp_distance < max(RANDOM_LIKE_DISTANCE, 3 / min(self.shape))

    ARRAYS = ("sigma_base", "sigma_tuned", "sigma_delta", "max_cos", "best_base", "similarity")

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        arrays = {name: np.ascontiguousarray(getattr(self, name)) for name in self.ARRAYS}
        meta = {"shape": f"{self.shape[0]},{self.shape[1]}", "delta_rel_norm": repr(self.delta_rel_norm),
                "base_mp_distance": repr(self.base_mp_distance)}
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, str]) -> MatrixResult:
        rows, cols = (int(x) for x in meta["shape"].split(","))
        return cls(shape=(rows, cols), delta_rel_norm=float(meta["delta_rel_norm"]),
                   base_mp_distance=float(meta["base_mp_distance"]),
                   **{name: arrays[name] for name in cls.ARRAYS})


def compare(
    base: Decomposition,
    w0: torch.Tensor,
    w: torch.Tensor,
    delta_factors: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> MatrixResult:
    """The paper's per-matrix analysis of W0 → W, given W0's (cached) decomposition."""
    tuned = decompose(w, vectors=TOP_VECTORS)
    cos = (tuned.u.T @ base.u.to(tuned.u.device)).abs()
    max_cos, best = cos.max(dim=1)
    size = min(w.shape)
    if delta_factors is not None:
        sigma_delta = low_rank_singular_values(*delta_factors, size=size)
    else:
        sigma_delta = singular_values(w - w0)
    base_norm = float(base.sigma.pow(2).sum().sqrt())
    delta_norm = float(sigma_delta.pow(2).sum().sqrt())
    sigma_base = base.sigma.numpy()
    return MatrixResult(
        shape=(w.shape[0], w.shape[1]),
        sigma_base=sigma_base,
        sigma_tuned=tuned.sigma.numpy(),
        sigma_delta=sigma_delta.numpy(),
        max_cos=max_cos.cpu().numpy(),
        best_base=best.cpu().numpy().astype(np.int32),
        similarity=cos[:SIMILARITY_SIZE, :SIMILARITY_SIZE].cpu().clone().numpy(),  # not a view: frees cos
        delta_rel_norm=delta_norm / base_norm if base_norm > 0 else 0.0,
        base_mp_distance=marchenko_pastur_distance(sigma_base, (w.shape[0], w.shape[1])),
    )
