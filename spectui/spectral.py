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
from spectui.compact import CompactBase
from spectui.defaults import DEFAULT_EPSILON, DEFAULT_K, SIMILARITY_SIZE, TOP_VECTORS
from spectui.intruders import count_intruders, intruder_ranks

ALGORITHM_VERSION = 5
# The never-trained test (`marchenko_pastur_distance`). A spectrum is random-like when it sits where the
# Marchenko–Pastur law fitted to its bulk puts it, as rigidly as random matrices do: nothing beyond a
# soft edge by more than EDGE_MARGIN Tracy–Widom units, and eigenvalues on average within
# DISPLACEMENT_LIMIT positions of their MP locations. Random Gaussian, uniform, truncated-normal and
# Kaiming matrices of 16 to 4096 rows reached at most 4.3 and 1.2 (2,574 of them); trained ones exceed
# one or both (the least structured matrix of SmolLM2-135M, a v projection: 5.0 and 1.55; the bundled
# base's: 14 and 4.5). tests/test_random_like.py holds both sides.
EDGE_MARGIN = 4.5
DISPLACEMENT_LIMIT = 1.3
RANDOM_LIKE_MIN_SIZE = 16  # smaller spectra are too short to tell
_FIT_WINDOW = (0.1, 0.7)  # quantiles of the spectrum the MP scale is fitted on: below spikes and heavy tails
_LOWER_EDGE_MAX_RATIO = 0.8  # short/long side above which MP's lower edge is hard (near 0): not tested
_FLAT = 1e-2  # σ_max/σ_min − 1 below this: orthogonal or identity initialisation


@dataclass
class Decomposition:
    """Singular values (descending, float64) and left singular vectors (columns, float32): the top
    TOP_VECTORS of a tuned matrix, or all of a base matrix whose compact form (`decompose_base`)
    left a flag open (the engine decomposes it again)."""

    sigma: torch.Tensor
    u: torch.Tensor
    needs_w0 = False

    @property
    def head(self) -> torch.Tensor:
        return self.u

    def max_cos(self, tuned_u: torch.Tensor, w0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """max_i |u_jᵀ u0_i| and its i for each tuned vector u_j (columns of `tuned_u`)."""
        return (tuned_u.T @ self.u.to(tuned_u.device)).abs().max(dim=1)


@dataclass
class BaseSpectrum:
    """What the counts keep of a base matrix (certify.py): every singular value (descending), its top
    left singular vectors (float32 columns) and a bound on each one's error."""

    sigma: np.ndarray
    head: np.ndarray
    head_error: np.ndarray

    def fits(self, shape: tuple[int, int]) -> bool:
        """Whether it can be a matrix of this shape's (a cache entry is checked before use)."""
        s = self.sigma
        return (s.shape == (min(shape),) and bool(np.isfinite(s).all()) and bool((s >= 0).all())
                and self.head.shape[0] == shape[0] and self.head_error.shape == (self.head.shape[1],)
                and bool(np.isfinite(self.head).all()) and not bool((self.head_error < 0).any()))


def decompose(w: torch.Tensor, vectors: int | None = None) -> Decomposition:
    """All singular values and the first `vectors` (default all) left singular vectors of W, via
    the eigen-decomposition of the Gram matrix of its short side, in float64: a float32 solve would
    rotate the small-σ vectors within their clusters and blur the smallest singular values. A tuned
    matrix needs only its top vectors, which `eigen.eigh_top` finds for little more than the cost of
    the eigenvalues."""
    sigma, vecs = _gram_eigen(w, vectors)
    return Decomposition(sigma=sigma.cpu(), u=_left_vectors(w, vecs, sigma))


def decompose_base(w0: torch.Tensor) -> CompactBase:
    """W0's full decomposition in the form the cache keeps, which a cold scan compares with too (one
    answer, cold or cached). Of a tall W0 only the top left vectors are formed: all of them, W0 V0
    Σ0⁻¹, would be an m×n×n float64 product (a 14336×4096 matrix: ~10 CPU-s and 235 MB) that the
    compact form does without."""
    sigma, vecs = _gram_eigen(w0, None)
    return CompactBase.of(sigma.cpu(), _left_vectors(w0, vecs[:, :TOP_VECTORS], sigma), vecs)


def _gram_eigen(w: torch.Tensor, vectors: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """W's singular values (descending) and the first `vectors` (None: all) eigenvectors of its
    short side's Gram, in that order (float64, on W's device)."""
    m, n = w.shape
    if vectors is None:
        lam, vecs = eigen.eigh(eigen.gram(w), scratch=True)
    else:
        lam, vecs = eigen.eigh_top(eigen.gram(w), min(vectors, m, n), scratch=True)
    return lam.flip(0).clamp_min(0).sqrt(), vecs.flip(1).to(w.device)


def _left_vectors(w: torch.Tensor, vecs: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The left singular vectors (float32) for the leading Gram eigenvectors `vecs`."""
    if w.shape[0] <= w.shape[1]:
        return vecs.to(torch.float32)
    return _left_from_right(w, vecs, sigma[: vecs.shape[1]].to(w.device))


# Above this σ_i/σ_max, u_i = W v_i / σ_i is orthonormal to ~1e-16 (σ_max/σ_i)² ≤ 1e-6 as it stands.
_ORTHONORMAL_FLOOR = 1e-5
_ROWS = 2048  # rows of a tall W turned into left vectors at a time, in float64


def _left_from_right(w: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Left singular vectors u_i = W v_i / σ_i (float32) of a tall W from its right ones (float64),
    computed in float64 a slab of rows at a time, so neither W nor U is ever held in float64. Those
    of tiny σ_i would be spoilt by rounding: they are re-orthonormalised against the rest, in order
    (QR keeps the span of each leading set of columns)."""
    head = int((sigma > _ORTHONORMAL_FLOOR * sigma[0]).sum()) if sigma[0] > 0 else 0
    u = torch.empty(w.shape[0], v.shape[1], dtype=torch.float32, device=w.device)
    tail = None if head == v.shape[1] else torch.empty(w.shape[0], v.shape[1] - head, dtype=torch.float64,
                                                        device=w.device)
    for start in range(0, w.shape[0], _ROWS):
        y = w[start: start + _ROWS].to(torch.float64) @ v
        u[start: start + _ROWS, :head] = (y[:, :head] / sigma[:head]).to(torch.float32)
        if tail is not None:
            tail[start: start + _ROWS] = y[:, head:]
    if tail is None:
        return u
    top = u[:, :head].to(torch.float64)
    tail = tail - top @ (top.T @ tail)
    q, r = torch.linalg.qr(tail)
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1
    u[:, head:] = (q * signs).to(torch.float32)
    return u


def singular_values(w: torch.Tensor, minus: torch.Tensor | None = None) -> torch.Tensor:
    """All singular values (of W − `minus` where given), descending; float64 so the tail of a
    low-rank ΔW stays near zero."""
    return singular_values_of_gram(eigen.gram(w, minus), scratch=True)


def singular_values_of_gram(gram: torch.Tensor, scratch: bool = False) -> torch.Tensor:
    """The same from W's Gram matrix (`eigen.gram`), left as it is unless `scratch`."""
    return eigen.eigvalsh(gram, scratch=scratch).clamp_min(0).sqrt().flip(0).cpu()


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


@dataclass(frozen=True)
class BulkFit:
    """A spectrum against the Marchenko–Pastur law of an i.i.d. matrix of its shape, the scale fitted
    on the bulk. `edge_excess`: how far the largest eigenvalue lies above MP's upper edge, or the
    smallest below its lower edge (a soft edge only: short/long side < 0.8), in Tracy–Widom units
    (Johnstone 2001; Ma 2012), the larger of the two; `displacement`: the mean distance, in
    positions, of the eigenvalues of the central 90% from their MP locations; `spikes`: eigenvalues
    above the upper edge by more than EDGE_MARGIN."""

    edge_excess: float
    displacement: float
    spikes: int


def marchenko_pastur_fit(sigma: np.ndarray, shape: tuple[int, int]) -> BulkFit | None:
    """The squared singular values λ of an m×n W (p = min, N = max, q = p/N) against MP(q): the
    scale s is fitted so that λ_i/s matches N·γ_i over the _FIT_WINDOW quantiles, γ_i being MP's
    quantile at (i + ½)/p. None where the spectrum is too short or zero in that window."""
    p, n = min(shape), max(shape)
    lam = np.sort(np.asarray(sigma, dtype=np.float64)[:p] ** 2)
    if lam.size < RANDOM_LIKE_MIN_SIZE or lam.size != p:
        return None
    gamma = _mp_classical(p, n) * n
    lo, hi = int(_FIT_WINDOW[0] * p), int(_FIT_WINDOW[1] * p)
    scale = lam[lo:hi].sum() / gamma[lo:hi].sum()
    if not scale > 0:
        return None
    t = lam / scale
    a, b = math.sqrt(n - 1), math.sqrt(p)
    top_centre, top_width = (a + b) ** 2, (a + b) * (1 / a + 1 / b) ** (1 / 3)
    above = (t - top_centre) / top_width
    excess = float(above[-1])
    if p / n < _LOWER_EDGE_MAX_RATIO:
        a, b = math.sqrt(n - 0.5), math.sqrt(p - 0.5)
        excess = max(excess, float(((a - b) ** 2 - t[0]) / ((a - b) * (1 / b - 1 / a) ** (1 / 3))))
    grid, cdf = _mp_cdf(p, n)
    displaced = p * np.interp(t / n, grid, cdf) - (np.arange(p) + 0.5)
    central = displaced[int(0.05 * p): int(0.95 * p)]
    return BulkFit(edge_excess=excess, displacement=float(np.abs(central).mean()),
                   spikes=int((above > EDGE_MARGIN).sum()))


def marchenko_pastur_distance(sigma: np.ndarray, shape: tuple[int, int]) -> float:
    """How far a spectrum is from a never-trained (i.i.d. random) matrix's, in units of what
    randomness allows: max(edge_excess / EDGE_MARGIN, displacement / DISPLACEMENT_LIMIT) of
    `marchenko_pastur_fit`. Below 1: random-like, as a never-trained matrix is; 1 and above: it has
    structure (spikes above the bulk, or a bulk shaped otherwise). A flat spectrum (every σ equal:
    orthogonal or identity initialisation) is 0; a spectrum too short or degenerate to tell is
    infinite (not random-like)."""
    sigma = np.asarray(sigma, dtype=np.float64)
    p = min(shape)
    if sigma.size >= RANDOM_LIKE_MIN_SIZE and sigma[:p].min() > 0 and sigma[:p].max() <= (1 + _FLAT) * sigma[:p].min():
        return 0.0
    fit = marchenko_pastur_fit(sigma, shape)
    if fit is None:
        return math.inf
    return max(fit.edge_excess / EDGE_MARGIN, fit.displacement / DISPLACEMENT_LIMIT)


@lru_cache(maxsize=64)
def _mp_cdf(p: int, n: int, points: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """The Marchenko–Pastur CDF for q = p/n (mean 1), on a grid of its support."""
    q = p / n
    lo, hi = (1 - math.sqrt(q)) ** 2, (1 + math.sqrt(q)) ** 2
    # Chebyshev-spaced grid resolves the square-root edges of the density.
    t = (1 - np.cos(np.linspace(0, math.pi, points))) / 2
    x = lo + (hi - lo) * t
    density = np.sqrt(np.clip((hi - x) * (x - lo), 0, None)) / (2 * math.pi * q * np.maximum(x, 1e-12))
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(x))])
    return x, cdf / cdf[-1]


@lru_cache(maxsize=64)
def _mp_classical(p: int, n: int) -> np.ndarray:
    """MP's quantiles at (i + ½)/p, i < p: where the i-th smallest eigenvalue of a random matrix lies."""
    grid, cdf = _mp_cdf(p, n)
    return np.interp((np.arange(p) + 0.5) / p, cdf, grid)


@dataclass
class MatrixResult:
    """Everything the views need for one (base, tuned) matrix pair; small enough to cache.

    Besides the paper's figures, what the follow-up literature measures, kept so that
    any k ≤ TOP_VECTORS (and ε) is answered without a new decomposition: `overlap` = U[:, :T]ᵀ U0[:, :T]
    (signed; T = TOP_VECTORS or the rank) for principal angles; ‖u0_iᵀ ΔW‖² and ‖u_jᵀ ΔW‖² for the
    top base and tuned left singular vectors, for the shares of ‖ΔW‖²_F along them. A result built
    without them (W = W0: `engine.unchanged_result`) gets what W = W0 gives: Uᵀ U0 = I, ΔW = 0."""

    shape: tuple[int, int]
    sigma_base: np.ndarray
    sigma_tuned: np.ndarray
    sigma_delta: np.ndarray
    max_cos: np.ndarray  # for the top TOP_VECTORS tuned left singular vectors, in singular-value order
    best_base: np.ndarray  # index of the base vector that attains it
    similarity: np.ndarray  # |U[:, :K]ᵀ U0[:, :K]|, K = SIMILARITY_SIZE
    delta_rel_norm: float
    base_mp_distance: float  # `marchenko_pastur_distance` of the base spectrum: < 1 looks never trained
    overlap: np.ndarray | None = None  # U[:, :T]ᵀ U0[:, :T], signed, T = len(max_cos)
    delta_energy_base: np.ndarray | None = None  # ‖u0_iᵀ ΔW‖², i < T
    delta_energy_tuned: np.ndarray | None = None  # ‖u_jᵀ ΔW‖², j < T

    def __post_init__(self):
        top = len(self.max_cos)
        if self.overlap is None:
            self.overlap = np.eye(top, dtype=np.float32)
        if self.delta_energy_base is None:
            self.delta_energy_base = np.zeros(self.overlap.shape[1])
        if self.delta_energy_tuned is None:
            self.delta_energy_tuned = np.zeros(top)

    @property
    def unchanged(self) -> bool:
        """ΔW is exactly zero: every singular value of W − W0 is 0 (the engine records a pair whose
        matrices are equal so, without decomposing W; a non-zero ΔW has a positive singular value)."""
        return not self.sigma_delta.any()

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
        return self.base_mp_distance < 1

    @property
    def base_spikes(self) -> int | None:
        """Eigenvalues of W0 W0ᵀ above the fitted MP bulk edge by more than EDGE_MARGIN (None: too small)."""
        fit = marchenko_pastur_fit(self.sigma_base, self.shape)
        return None if fit is None else fit.spikes

    # -- the follow-up literature's metrics ------------------------------------------------------
    # Principal-subspace rotation and spectral drift: "RL Is Neither a Panacea Nor a Mirage" (arXiv
    # 2508.16546: SFT and RL turn singular vectors and barely move singular values) and "The
    # Path Not Taken" (Zhu et al., arXiv 2511.08567: RLVR keeps spectral drift and principal-subspace
    # rotation small, SFT does not). The share of ΔW in the base's top-k subspace: OPLoRA's question
    # (Xiong & Xie, arXiv 2510.13003: updates interfering with the dominant singular directions), asked
    # of the left subspace as a share of ‖ΔW‖²_F.
    def principal_cosines(self, r: int = DEFAULT_K) -> np.ndarray:
        """Cosines of the principal angles between span(U[:, :r]) and span(U0[:, :r]): the singular
        values of U[:, :r]ᵀ U0[:, :r], descending (r is capped at the vectors kept). The vectors are
        float32, so angles below about 0.03° read as 0."""
        r = min(r, *self.overlap.shape)
        return np.clip(np.linalg.svd(self.overlap[:r, :r].astype(np.float64), compute_uv=False), 0.0, 1.0)

    def principal_angles(self, r: int = DEFAULT_K) -> np.ndarray:
        """The principal angles in degrees, ascending."""
        return np.degrees(np.arccos(self.principal_cosines(r)))

    def max_principal_angle(self, r: int = DEFAULT_K) -> float:
        """The largest principal angle in degrees: how far the dominant subspace turned at worst."""
        angles = self.principal_angles(r)
        return float(angles[-1]) if angles.size else 0.0

    def subspace_rotation(self, r: int = DEFAULT_K) -> float:
        """Mean sin² of the principal angles, 1 − ‖U[:, :r]ᵀ U0[:, :r]‖²_F / r: 0 when the top-r
        subspace stayed, 1 when it turned orthogonal."""
        r = min(r, *self.overlap.shape)
        if r == 0:
            return 0.0
        return float(min(max(1.0 - (self.overlap[:r, :r].astype(np.float64) ** 2).sum() / r, 0.0), 1.0))

    @property
    def delta_energy(self) -> float:
        """‖ΔW‖²_F."""
        return float((self.sigma_delta.astype(np.float64) ** 2).sum())

    def base_subspace_share(self, k: int = DEFAULT_K) -> float | None:
        """‖U0[:, :k]ᵀ ΔW‖²_F / ‖ΔW‖²_F: the share of the update inside the base's top-k left singular
        subspace (OPLoRA's alignment); None where ΔW = 0."""
        total = self.delta_energy
        return float(min(self.delta_energy_base[:k].sum() / total, 1.0)) if total > 0 else None

    def intruder_share(self, k: int = DEFAULT_K, epsilon: float = DEFAULT_EPSILON) -> float | None:
        """The share of ‖ΔW‖²_F along the intruders at (k, ε): Σ_j ‖u_jᵀ ΔW‖² over intruders u_j (an
        orthonormal set, so this is ‖P ΔW‖² for the projector P on their span) / ‖ΔW‖²_F; None where
        ΔW = 0."""
        total = self.delta_energy
        if total <= 0:
            return None
        ranks = self.intruder_ranks(k, epsilon)
        return float(min(self.delta_energy_tuned[ranks].sum() / total, 1.0)) if ranks else 0.0

    def spectral_drift(self, k: int = DEFAULT_K) -> np.ndarray:
        """(σ_j(W) − σ_j(W0)) / σ_j(W0) for j < k, singular values matched by rank; NaN where σ_j(W0) = 0."""
        k = min(k, self.sigma_base.size, self.sigma_tuned.size)
        base, tuned = self.sigma_base[:k].astype(np.float64), self.sigma_tuned[:k].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(base > 0, (tuned - base) / base, np.nan)

    def mean_abs_drift(self, k: int = DEFAULT_K) -> float | None:
        """Mean |spectral drift| over the top k (None where no σ_j(W0) is positive)."""
        drift = self.spectral_drift(k)
        drift = drift[~np.isnan(drift)]
        return float(np.abs(drift).mean()) if drift.size else None

    ARRAYS = ("sigma_base", "sigma_tuned", "sigma_delta", "max_cos", "best_base", "similarity", "overlap",
              "delta_energy_base", "delta_energy_tuned")

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
    base: Decomposition | CompactBase,
    w0: torch.Tensor | None,
    w: torch.Tensor,
    delta_factors: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> MatrixResult | None:
    """The paper's per-matrix analysis of W0 → W, given W0's decomposition (or its cached compact
    form), and the follow-up metrics' ingredients (a T×T block of Uᵀ U0 and ‖ΔW‖² along 2T vectors: a
    few matrix-vector products beside the decomposition). W0 itself is read for a dense ΔW = W − W0
    and a tall W0's compact form (`needs_w0`); else it may be None (one matrix less in memory). None
    when the compact form leaves a flag open (`CompactBase.max_cos`): decompose W0 then."""
    tuned = decompose(w, vectors=TOP_VECTORS)
    found = base.max_cos(tuned.u, w0)
    if found is None:
        return None
    max_cos, best = found
    top = tuned.u.shape[1]
    head = base.head[:, :top].to(tuned.u.device)
    cos = (tuned.u[:, :SIMILARITY_SIZE].T @ head[:, :SIMILARITY_SIZE]).abs()
    overlap = (tuned.u.double().T @ head.double()).to(torch.float32)
    basis = torch.cat([head, tuned.u], dim=1)  # the vectors ‖·ᵀ ΔW‖² is wanted along
    size = min(w.shape)
    if delta_factors is not None:
        sigma_delta = low_rank_singular_values(*delta_factors, size=size)
        energy = _low_rank_energies(basis, *delta_factors)
    else:
        sigma_delta = singular_values(w, minus=w0)
        energy = _dense_energies(basis, w, w0)
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
        similarity=cos.cpu().numpy(),
        delta_rel_norm=delta_norm / base_norm if base_norm > 0 else 0.0,
        base_mp_distance=marchenko_pastur_distance(sigma_base, (w.shape[0], w.shape[1])),
        overlap=overlap.cpu().numpy(),
        delta_energy_base=energy[:top].numpy(),
        delta_energy_tuned=energy[top:].numpy(),
    )


_DELTA_ROWS = 2048  # rows of a dense ΔW = W − W0 formed at a time


def _dense_energies(basis: torch.Tensor, w: torch.Tensor, w0: torch.Tensor) -> torch.Tensor:
    """‖bᵀ ΔW‖² for each column b of `basis` (float64 on the CPU), ΔW a slab of rows at a time. The
    difference and product are float32 whatever the matrices are held in (a relative error ~1e-6 of
    ‖ΔW‖², far below what the shares are read at)."""
    basis = basis.to(w.device)
    projected = sum(basis[i: i + _DELTA_ROWS].T @ (w[i: i + _DELTA_ROWS].float() - w0[i: i + _DELTA_ROWS].float())
                    for i in range(0, w.shape[0], _DELTA_ROWS))
    return projected.double().pow(2).sum(dim=1).cpu()


def _low_rank_energies(basis: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """‖xᵀ B A‖² = xᵀ B (A Aᵀ) Bᵀ x for each column x of `basis`, without forming B A."""
    b, a = b.double().cpu(), a.double().cpu()
    projected = basis.double().cpu().T @ b
    return ((projected @ (a @ a.T)) * projected).sum(dim=1).clamp_min(0)


# -- the similarity of two updates --------------------------------------------------------------

Update = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # ΔW dense, or (B, A) with ΔW = B @ A
_CHUNK = 1 << 22  # float64 elements per chunk of a dense product (32 MB): memory stays bounded


def update_inner(x: Update, y: Update) -> float:
    """⟨X, Y⟩_F = tr(Xᵀ Y) in float64, for dense updates or low-rank factors, without forming B A:
    ⟨B1 A1, B2 A2⟩ = tr((B1ᵀ B2)(A2 A1ᵀ)), an r1×r2 computation; ⟨D, B A⟩ = Σ (D Aᵀ) ∘ B."""
    if isinstance(x, tuple) and isinstance(y, tuple):
        (b1, a1), (b2, a2) = ((b.double().cpu(), a.double().cpu()) for b, a in (x, y))
        return float(((b1.T @ b2) * (a1 @ a2.T)).sum())
    if isinstance(x, tuple) or isinstance(y, tuple):
        (b, a), dense = (x, y) if isinstance(x, tuple) else (y, x)
        b, a = b.double().to(dense.device), a.double().to(dense.device)
        if dense.shape != (b.shape[0], a.shape[1]):
            raise ValueError(f"updates of shapes {tuple(dense.shape)} and {(b.shape[0], a.shape[1])}")
        rows = max(1, _CHUNK // max(dense.shape[1], 1))
        return float(sum(((dense[i: i + rows].double() @ a.T) * b[i: i + rows]).sum()
                         for i in range(0, dense.shape[0], rows)))
    if x.shape != y.shape:
        raise ValueError(f"updates of shapes {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.reshape(-1), y.to(x.device).reshape(-1)
    return float(sum(torch.dot(x[i: i + _CHUNK].double(), y[i: i + _CHUNK].double())
                     for i in range(0, x.numel(), _CHUNK)))


def update_norm2(x: Update) -> float:
    """‖X‖²_F; for B A, tr((Bᵀ B)(A Aᵀ))."""
    if isinstance(x, tuple):
        b, a = x[0].double().cpu(), x[1].double().cpu()
        return float(((b.T @ b) * (a @ a.T)).sum())
    return update_inner(x, x)


def update_cosine(x: Update, y: Update) -> float | None:
    """⟨ΔW1, ΔW2⟩_F / (‖ΔW1‖_F ‖ΔW2‖_F): 1 when two fine-tunes moved the weights the same way, 0
    when orthogonally, −1 when oppositely; None when either update is zero."""
    norms = update_norm2(x) * update_norm2(y)
    if not norms > 0:
        return None
    return max(-1.0, min(1.0, update_inner(x, y) / math.sqrt(norms)))
