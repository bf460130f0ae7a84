"""Intruder flags at one (k, ε) without the base's singular vectors (design.md §1, "Exact shortcuts
must stay exact").

u_j is an intruder iff every squared cosine c_i² = (u0_iᵀ u_j)² is below ε². Those squared cosines
are the weights of the spectral measure μ_j of G0 = W0 W0ᵀ seen from u_j, whose atoms sit at the
base's eigenvalues λ_i = σ_i² — known cheaply (`spectral.singular_values`, or the cache), unlike its
vectors. A Lanczos run on G0 from u_j gives μ_j's orthonormal polynomials p_0 … p_K, and for every
polynomial q of degree ≤ K with q(λ) = 1, μ_j({λ}) ≤ ∫ q² dμ_j; the best such q gives the Christoffel
function Λ_K(λ) = 1 / Σ_t p_t(λ)². So every c_i² ≤ Λ_K(λ_i) (`_atom_bounds`): once all of these are
below ε², u_j is a certified intruder. The other way, a Ritz vector x of G0 close to one eigenvector
(residual ρ, and the known spectrum puts one eigenvalue within ρ and the next δ away) is within
sin∠ ≤ ρ/δ of it (Davis–Kahan), so |x ᵀ u_j| − ρ/δ ≤ max|c_i|: at or above ε it certifies a match. That
residual is measured in float64 on W0 itself, so the match does not rest on the float32 products that
drive the search.

A tall W0 (m > n) has only n left singular vectors; the rest of the output space (eigenvalue 0 of
G0) is no base vector, so the measure is taken on Wᵀ0 W0 from y_j = W0ᵀ u_j instead, whose atoms are
λ_i c_i²: c_i² ≤ ‖y_j‖² Λ_K(λ_i) / λ_i. Dividing by λ_i magnifies rounding near the smallest
singular values, so those products are float64; the others are float32 (their rounding, ~1e-7 of
‖W0‖², is far below the _ROUNDING allowance added to each bound).

The tuned side needs only its top k vectors: block Krylov with Rayleigh–Ritz, each vector's error
bounded by its float64 residual over its gap to the other Ritz values, and every bound above widened
by it. A LoRA's search runs in W0's reduced coordinates when the counts reduce W0 anyway (a cold
scan): its Gram is then the band plus a correction of rank 2r (`low_rank_gram`).

Two routes use these bounds. With W0's spectrum cached (a second tuned model), `certify` runs on
products with W0 alone. Otherwise, or where that leaves a vector open, `certify_reduced` works on W0's
Gram reduced to a narrow band — which the spectrum needs anyway — where a product costs O(n kd) and
the few atoms the bounds cannot place below ε are measured exactly, by inverse iteration on the band
matrix. Only tuned vectors that are not separated, a vector within ~1e-12 of ε, or atoms at repeated
or too closely spaced eigenvalues go to the exact path (W0's full decomposition).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from spectui.defaults import HEAD_VECTORS
from spectui.eigen import Reduction

_BLOCK_EXTRA = 8  # Krylov block = k + this: the vectors just below the top k converge with them
_TUNED_ERROR = 1e-4  # stop refining the tuned vectors once each is this close (‖ũ − u‖)
_MAX_BASIS = 24  # Krylov blocks before the tuned vectors are taken as they are
_SAME_MATRIX = 1e-6  # a search on W0 + b a agrees with W's own quotients this well (× σ_1²): float32 merging
_MAX_STEPS = 48  # Lanczos steps on W0 before a vector is left open (to the reduction)
_FIRST_CHECK, _CHECK_EVERY = 8, 4  # bounds are read after these Lanczos steps (each read costs a little)
_ROUNDING = 1e-4  # added to each Christoffel bound on c²: the float32 products the search runs on
_REDUCED_STEPS = 96  # Lanczos steps on the band matrix B (cheap: O(n kd) a product; the re-orthogonalisation is not)
_REDUCED_CHECK = 24  # the bounds are read every this many steps, and the runs stop once they leave
_FEW_MEASURED = 64  # at most this many atoms to measure exactly
_REDUCED_ROUNDING = 1e-8  # the same allowance as _ROUNDING, for runs in float64 on B
_MAX_MEASURED = 1024  # atoms measured exactly per matrix before the exact path is cheaper
_FLOAT32_VECTORS = 1e-6  # ‖u − fl32(u)‖ for a unit vector, rounded up: a cached head vector
_TRUSTED_HEAD = 1e-3  # head vectors known at least this well stand for their atoms
_CHUNK_ROWS = 2048  # rows of W converted to float64 at a time in a float64 product


@dataclass(frozen=True)
class TunedTop:
    """The top k left singular vectors of W (float64), and a bound on ‖ũ_j − u_j‖ for each (signs
    aligned; inf where the vector is not separated from its neighbours)."""

    u: torch.Tensor
    error: np.ndarray


@dataclass(frozen=True)
class Flags:
    """Bounds on max|cos| of each of the top k tuned vectors of one matrix pair, read at ε."""

    lower: np.ndarray  # max_i |u0_iᵀ u_j| ≥ lower[j]
    upper: np.ndarray  # max_i |u0_iᵀ u_j| ≤ upper[j]
    epsilon: float  # as every reader compares it: float32 (intruders.py)

    @property
    def decided(self) -> bool:
        return not ((self.upper >= self.epsilon) & (self.lower < self.epsilon)).any()

    def intruder_ranks(self) -> list[int]:
        return [int(j) for j in np.flatnonzero(self.upper < self.epsilon)]


def certify(w0: torch.Tensor, tuned: TunedTop, base_sigma: np.ndarray, epsilon: float,
            gram: torch.Tensor | None = None, head: tuple[np.ndarray, np.ndarray] | None = None) -> Flags | None:
    """Bounds on the tuned top vectors' max|cos| of W0 → W from products with W0 alone, each run
    until it decides the flag at ε or gives up (near ε, clustered spectra: `Flags.decided`; then
    `certify_reduced`); None when W0 is tall and rank-deficient (the exact path then). `gram`: W0's
    (`eigen.full_gram`) where it is at hand; a tall W0 needs it. `head`: W0's top vectors and their
    errors (`base_head`), which measure the head's atoms exactly."""
    m, n = w0.shape
    epsilon = float(np.float32(epsilon))
    lam = np.sort(np.asarray(base_sigma, dtype=np.float64)[: min(m, n)] ** 2)
    if m > n and not lam[0] > 1e-10 * lam[-1]:
        return None  # a zero σ of a tall W0: its left vector is any null vector, so no bound holds
    lower, upper = cosine_bounds(w0.to(torch.float32), tuned.u, lam, epsilon, tuned.error, gram, head)
    return Flags(lower=lower, upper=upper, epsilon=epsilon)


# -- products with W, on blocks of row vectors (x @ W is the fast form in every BLAS tried) -----

def _times(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x W in float64 for rows x (b×m, float64) and W (m×n, any float dtype), W converted a chunk of
    rows at a time (bounded memory)."""
    out = torch.zeros(x.shape[0], w.shape[1], dtype=torch.float64)
    for i in range(0, w.shape[0], _CHUNK_ROWS):
        out += x[:, i: i + _CHUNK_ROWS] @ w[i: i + _CHUNK_ROWS].to(torch.float64)
    return out


def _times_t(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x Wᵀ in float64 for rows x (b×n, float64) and W (m×n)."""
    return torch.cat([x @ w[i: i + _CHUNK_ROWS].to(torch.float64).T for i in range(0, w.shape[0], _CHUNK_ROWS)], 1)


def _gram_op(w: torch.Tensor, left: bool):
    """Rows x ↦ x W Wᵀ (left) or x Wᵀ W, in W's precision, float64 in and out: what the searches
    run on."""
    if left:
        return lambda x: ((x.to(w.dtype) @ w) @ w.T).to(torch.float64)
    return lambda x: ((x.to(w.dtype) @ w.T) @ w).to(torch.float64)


# -- the tuned side ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ReducedGram:
    """The short-side Gram of W = W0 + b a (a rank-r update, scan orientation) in the coordinates of
    W0's reduction G0 = Q B Qᵀ: B plus a correction of rank 2r, so a product costs O(n kd + n r)
    instead of two passes over W (`low_rank_gram`)."""

    reduction: Reduction
    left: torch.Tensor  # Qᵀ L (short side × r)
    right: torch.Tensor  # Qᵀ C: the correction is C Lᵀ + L Cᵀ + L core Lᵀ
    core: torch.Tensor

    def times(self, x: torch.Tensor) -> torch.Tensor:
        """Ĝ x for columns x (float64)."""
        lx = self.left.T @ x
        return (torch.from_numpy(self.reduction.times(x.numpy())) + self.right @ lx
                + self.left @ (self.right.T @ x + self.core @ lx))


def low_rank_gram(reduction: Reduction, w0: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> ReducedGram:
    """`ReducedGram` for W = W0 + b a. Wide or square: W Wᵀ = G0 + C bᵀ + b Cᵀ + b (a aᵀ) bᵀ, so
    L = b and C = W0 aᵀ; tall: Wᵀ W = G0 + C a + aᵀ Cᵀ + aᵀ (bᵀ b) a, so L = aᵀ and C = Wᵀ0 b. C
    costs one float64 pass over W0."""
    b, a = b.to(torch.float64), a.to(torch.float64)
    if w0.shape[0] <= w0.shape[1]:
        left, right, core = b, _times_t(a, w0).T, a @ a.T
    else:
        left, right, core = a.T, _times(b.T.contiguous(), w0).T, b.T @ b
    return ReducedGram(reduction, *(torch.from_numpy(reduction.to_reduced(x.numpy())) for x in (left, right)),
                       core)


def tuned_top(w: torch.Tensor, k: int, reduced: ReducedGram | None = None) -> TunedTop | None:
    """W's top k left singular vectors by block Krylov on the Gram of its short side, refined until
    each is within _TUNED_ERROR (or the space is exhausted). None when one is not separated from the
    next (a repeated or clustered σ_j: which vector is the j-th is then the exact solver's choice).
    `reduced`: that Gram in W0's reduced coordinates, where the search then runs (W0 plus a low-rank
    update, W0's reduction at hand); either way the bounds come from residuals on W itself."""
    m, n = w.shape
    w32 = w.to(torch.float32)
    left = m <= n
    dim = min(m, n)
    k = min(k, dim)
    block = min(dim, k + _BLOCK_EXTRA)
    rows = _gram_op(w32, left)

    def apply(x):
        return reduced.times(x) if reduced is not None else rows(x.T).T

    gen = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(dim, block, generator=gen, dtype=torch.float64)).Q
    basis, images = q, apply(q)
    while True:
        h = basis.T @ images
        theta, s = torch.linalg.eigh((h + h.T) / 2)
        theta, s = theta.flip(0), s.flip(1)
        rho = (images @ s[:, :k] - (basis @ s[:, :k]) * theta[:k]).norm(dim=0)
        error = _angle_bounds(theta, rho, k)
        if basis.shape[1] >= min(dim, _MAX_BASIS * block) or (error <= _TUNED_ERROR).all():
            break
        z = images[:, -q.shape[1]:]
        for _ in range(2):
            z = z - basis @ (basis.T @ z)
        q = torch.linalg.qr(z[:, : min(block, dim - basis.shape[1])]).Q
        q = torch.linalg.qr(q - basis @ (basis.T @ q)).Q  # z may have lost rank: stay orthogonal
        basis, images = torch.cat([basis, q], 1), torch.cat([images, apply(q)], 1)
    y = basis @ s[:, :k]
    if reduced is not None:
        y = torch.from_numpy(reduced.reduction.from_reduced(y.numpy()))
    u = y if left else _times_t(y.T, w32).T
    u = u / u.norm(dim=0)
    # the bound that counts: u's own residual on W Wᵀ, in float64 (the zero eigenvalues of a tall W
    # are neighbours too)
    image = _times_t(_times(u.T, w32), w32).T
    theta_u = (u * image).sum(0)
    rho_u = (image - u * theta_u).norm(dim=0)
    if reduced is not None and ((theta_u - theta[:k]).abs() > rho_u + _SAME_MATRIX * theta[0]).any():
        return None  # the search's Gram is not W's (a merge other than W0 + b a): its gaps say nothing
    others = theta.clone()
    others[:k] = theta_u
    if not left:
        others = torch.cat([others, torch.zeros(1, dtype=torch.float64)])
    error = _angle_bounds(others, rho_u, k)
    if not np.isfinite(error).all():
        return None
    return TunedTop(u=u, error=error)


def _angle_bounds(theta: torch.Tensor, rho: torch.Tensor, k: int) -> np.ndarray:
    """‖ũ_j − u_j‖ ≤ √2 sin∠ ≤ √2 ρ_j / gap_j, the gap to the nearest other Ritz value less ρ_j
    (inf when the residual is not small against the gap)."""
    theta, rho = theta.numpy(), rho.numpy()
    out = np.empty(k)
    for j in range(k):
        gap = np.delete(np.abs(theta - theta[j]), j).min(initial=np.inf) - rho[j]
        out[j] = math.sqrt(2) * rho[j] / gap if gap > 2 * rho[j] else np.inf
    return out


# -- the base side -----------------------------------------------------------------------------

def cosine_bounds(w0: torch.Tensor, u: torch.Tensor, lam: np.ndarray, epsilon: float,
                  tuned_error: np.ndarray | None = None, gram: torch.Tensor | None = None,
                  head: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds on max_i |u0_iᵀ u_j| for each column u_j of `u`, from Lanczos runs on
    W0's Gram (`lam`: its eigenvalues, ascending), each run stopped once its bounds leave ε on one
    side (or after _MAX_STEPS). `tuned_error` widens them by how far each u_j may be from the true.
    The runs multiply by `gram` (W0's short-side Gram, float64) where given, else by W0 and W0ᵀ in
    float32; a tall W0's bound divides by λ_i, which would magnify float32's rounding near its
    smallest singular values, so its Gram is formed when not given. `head` as for `certify`."""
    m, n = w0.shape
    tall = m > n
    b = u.shape[1]
    slack = np.zeros(b) if tuned_error is None else np.asarray(tuned_error, dtype=np.float64)
    if tall:  # Wᵀ0 W0 from y_j = W0ᵀ u_j: atoms λ_i c_i², total ‖y_j‖²
        start = _times(u.T, w0).T
        mass = start.pow(2).sum(0).numpy()
        start = start / start.norm(dim=0).clamp_min(1e-300)
        scale = mass[None, :] / lam[:, None]  # c_i² = ‖y‖² · atom_i / λ_i
    else:
        start, mass = u.clone(), np.ones(b)
        scale = np.ones((lam.size, b))
    dim = start.shape[0]
    steps_max = min(_MAX_STEPS, dim)
    if gram is None and tall:
        from spectui.eigen import full_gram

        gram = full_gram(w0)
    if gram is not None:
        g = gram.to(torch.float64)

        def apply(x):
            return x @ g
    else:
        apply = _gram_op(w0.to(torch.float32), left=True)
    blur = _blur(w0.shape, lam, torch.float64 if gram is not None else torch.float32)
    known, head_lo, head_hi = _head_atoms(head, u, lam.size)
    lower, upper = np.maximum(head_lo - slack, 0.0), np.ones(b)
    basis = torch.zeros(b, steps_max + 1, dim, dtype=torch.float64)
    basis[:, 0] = start.T
    alpha, beta = np.zeros((b, steps_max)), np.zeros((b, steps_max))
    active = np.arange(b)
    for t in range(steps_max):
        if active.size == 0:
            break
        norms = _lanczos_step(apply, basis, alpha, beta, active, t)
        exhausted = norms <= 1e-12 * max(float(lam[-1]), 1e-300)
        if not (exhausted.any() or t + 1 == steps_max or (t + 1 >= _FIRST_CHECK and (t + 1) % _CHECK_EVERY == 0)):
            continue
        checked, candidates = [], []
        for c in active:
            atoms = scale[:, c] * _atom_bounds(alpha[c, : t + 1], beta[c, : t + 1], lam, blur)
            atoms[known] = 0.0
            upper[c] = min(1.0, max(math.sqrt(float(atoms.max()) + _ROUNDING), head_hi[c]) + slack[c])
            if upper[c] >= epsilon and lower[c] < epsilon:
                x = _candidate(alpha[c, : t + 1], beta[c, : t + 1], basis[c, : t + 1], tall, lam, mass[c],
                               epsilon + slack[c])
                if x is not None:
                    checked.append(c)
                    candidates.append(x)
        if candidates:  # one float64 pass over W0 for all of them
            found = _verified(torch.stack(candidates), w0, tall, lam, u[:, checked]) - slack[checked]
            lower[checked] = np.maximum(lower[checked], found)
        undecided = (upper[active] >= epsilon) & (lower[active] < epsilon) & ~exhausted
        active = active[undecided] if t + 1 < steps_max else active[:0]
    return lower, upper


def certify_reduced(w0: torch.Tensor, reduction: Reduction, lam: np.ndarray, tuned: TunedTop,
                    epsilon: float) -> Flags | None:
    """The same flags from W0's Gram reduced to a band, G0 = Q B Qᵀ (`eigen.reduce`): the measure of
    G0 seen from x_j (u_j, or y_j = W0ᵀ u_j for a tall W0) is B's seen from t_j = Qᵀ x_j, and a
    product with B costs O(n kd). Lanczos runs on B bound every atom (`_atom_bounds`); the atoms
    whose bound could reach ε are then measured exactly: B's eigenvectors for those eigenvalues by
    inverse iteration, each within √2 (ρ + blur) / gap of the true one (Davis–Kahan, its residual ρ
    measured, the gap from the known spectrum). Nothing here multiplies by W0 but y_j: the cost is
    the reduction, which the spectrum needs anyway. None where a W0 is tall and
    rank-deficient (the exact path then)."""
    m, n = w0.shape
    tall = m > n
    epsilon = float(np.float32(epsilon))
    if tall and not lam[0] > 1e-10 * lam[-1]:
        return None
    x = _times(tuned.u.T, w0).T if tall else tuned.u
    t = torch.from_numpy(reduction.to_reduced(x.numpy()))
    size = t.norm(dim=0)  # ‖y_j‖ (tall) or 1
    scale = (size.numpy() ** 2)[None, :] / lam[:, None] if tall else np.ones((lam.size, t.shape[1]))

    def apply(rows):  # rows ↦ rows B (B is symmetric)
        return torch.from_numpy(reduction.times(rows.numpy().T).T)

    runs, dim = t.shape[1], t.shape[0]
    steps = min(_REDUCED_STEPS, dim)
    basis = torch.zeros(runs, steps + 1, dim, dtype=torch.float64)
    basis[:, 0] = (t / size.clamp_min(1e-300)).T
    alpha, beta = np.zeros((runs, steps)), np.zeros((runs, steps))
    active, length = np.arange(runs), np.full(runs, steps)
    blur = _blur(w0.shape, lam)
    slack = tuned.error
    for step in range(steps):
        norms = _lanczos_step(apply, basis, alpha, beta, active, step)
        exhausted = norms <= 1e-12 * max(float(lam[-1]), 1e-300)  # an invariant subspace: the run ends
        length[active[exhausted]] = step + 1
        active = active[~exhausted]
        length[active] = step + 1
        if active.size and step + 1 < steps and (step + 1) % _REDUCED_CHECK:
            continue
        bounds = [_atom_bounds(alpha[j, : length[j]], beta[j, : length[j]], lam, blur) for j in range(runs)]
        atoms = np.sqrt(np.stack(bounds, 1) * scale + _REDUCED_ROUNDING)
        measured = np.flatnonzero((atoms + slack >= epsilon).any(axis=1))
        if measured.size <= _FEW_MEASURED or not active.size:
            break
    if measured.size > _MAX_MEASURED:
        return None
    cosines, errors = _measured_atoms(reduction, lam, measured, t.numpy(), blur)
    if tall:
        cosines, errors = cosines / np.sqrt(lam[measured])[:, None], errors / np.sqrt(lam[measured])[:, None]
    atoms[measured] = np.minimum(cosines + errors, 1.0)
    lower = np.maximum((cosines - errors).max(axis=0, initial=0.0) - slack, 0.0)
    upper = np.minimum(atoms.max(axis=0) + slack, 1.0)
    return Flags(lower=lower, upper=upper, epsilon=epsilon)


def _reduced_pairs(reduction: Reduction, lam: np.ndarray, chosen: np.ndarray,
                   blur: float) -> tuple[np.ndarray | None, np.ndarray]:
    """B's eigenvectors z_i (columns) at the `chosen` eigenvalues by inverse iteration, and for each
    a bound on ‖z̃_i − z_i‖ (signs aligned): √2 (ρ + blur) / gap, its residual measured, the gap from
    the known spectrum; inf where the gap does not pin it down. (None, inf) where one failed."""
    z = reduction.vectors(lam[chosen]) if chosen.size else np.zeros((lam.size, 0))
    if z is None:
        return None, np.full(chosen.size, np.inf)
    rho = np.linalg.norm(reduction.times(z) - z * lam[chosen], axis=0) + blur
    neighbours = np.abs(lam[None, :] - lam[chosen][:, None])
    neighbours[np.arange(chosen.size), chosen] = np.inf
    gap = neighbours.min(axis=1, initial=np.inf) - 2 * rho
    return z, np.where(gap > 2 * rho, math.sqrt(2) * rho / np.maximum(gap, 1e-300), np.inf)


def _measured_atoms(reduction: Reduction, lam: np.ndarray, measured: np.ndarray, t: np.ndarray,
                    blur: float) -> tuple[np.ndarray, np.ndarray]:
    """|z_iᵀ t_j| at the `measured` eigenvalues, and a bound on each one's error."""
    z, angle = _reduced_pairs(reduction, lam, measured, blur)
    if z is None:
        return np.zeros((measured.size, t.shape[1])), np.full((measured.size, t.shape[1]), np.inf)
    return np.abs(z.T @ t), angle[:, None] * np.linalg.norm(t, axis=0)[None, :]


def base_head(w0: torch.Tensor, reduction: Reduction, lam: np.ndarray,
              count: int = HEAD_VECTORS) -> tuple[np.ndarray, np.ndarray]:
    """W0's top `count` left singular vectors (float32 columns, descending) from its reduction, and a
    bound on each one's error: what a second tuned model's bounds (`certify`) measure the head of
    the spectrum with, where Lanczos converges slowest for a vector matched to it. A tall W0's
    u_i = W0 v_i / σ_i magnifies v_i's error by at most σ_1 / σ_i."""
    m, n = w0.shape
    size = lam.size
    chosen = np.arange(size - min(count, size), size)[::-1]
    chosen = chosen[lam[chosen] > 1e-10 * max(float(lam[-1]), 1e-300)]
    blur = _blur(w0.shape, lam)
    z, angle = _reduced_pairs(reduction, lam, np.sort(chosen), blur)
    if z is None or not chosen.size:
        return np.zeros((m, 0), dtype=np.float32), np.zeros(0)
    v, angle = torch.from_numpy(reduction.from_reduced(z)).flip(1), angle[::-1]
    if m > n:
        sigma = np.sqrt(lam[chosen])
        v = _times_t(v.T.contiguous(), w0).T / torch.from_numpy(sigma)
        angle = angle * sigma[0] / sigma
    return v.to(torch.float32).numpy(), angle.copy()


def _blur(shape, lam: np.ndarray, dtype: torch.dtype = torch.float64) -> float:
    """How far rounding in products at `dtype` may move the measure's atoms: a generous multiple of
    √(long side) units of the precision, times ‖W0‖² (the largest eigenvalue)."""
    return 4 * math.sqrt(max(shape)) * torch.finfo(dtype).eps * float(lam[-1])


def _lanczos_step(apply, basis: torch.Tensor, alpha: np.ndarray, beta: np.ndarray, active: np.ndarray,
                  t: int) -> np.ndarray:
    """Step t of the Lanczos runs `active` (rows of `basis`, runs × steps + 1 × dim), fully
    re-orthogonalised; fills α_t, β_t and the next basis vector, returns the β_t."""
    q = basis[active, t]  # one row per active run
    z = apply(q)
    a = (q * z).sum(1)
    z = z - q * a[:, None]
    if t > 0:
        z = z - basis[active, t - 1] * torch.from_numpy(beta[active, t - 1])[:, None]
    # active × (t+1) × dim: a view when every run is active (a gathered copy costs as much as the step)
    own = basis[:, : t + 1] if active.size == basis.shape[0] else basis[active, : t + 1]
    for _ in range(2):  # full re-orthogonalisation, each run against its own vectors
        z = z - torch.bmm(torch.bmm(own, z[:, :, None]).transpose(1, 2), own)[:, 0]
    alpha[active, t] = a.numpy()
    norms = z.norm(dim=1)
    beta[active, t] = norms.numpy()
    basis[active, t + 1] = z / norms.clamp_min(1e-300)[:, None]
    return norms.numpy()


def _head_atoms(head: tuple[np.ndarray, np.ndarray] | None, u: torch.Tensor,
                size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The atoms of W0's trusted head vectors (indices into the ascending spectrum), and bounds on the
    largest |u0_iᵀ u_j| among them."""
    b = u.shape[1]
    if head is None:
        return np.zeros(0, dtype=int), np.zeros(b), np.zeros(b)
    vectors, errors = head
    error = np.asarray(errors) + _FLOAT32_VECTORS
    trusted = np.flatnonzero(error <= _TRUSTED_HEAD)
    if not trusted.size:
        return np.zeros(0, dtype=int), np.zeros(b), np.zeros(b)
    cosines = (torch.from_numpy(np.ascontiguousarray(vectors[:, trusted])).to(torch.float64).T @ u).abs().numpy()
    lo = (cosines - error[trusted, None]).max(axis=0)
    hi = (cosines + error[trusted, None]).max(axis=0)
    return size - 1 - trusted, lo, hi


def _atom_bounds(alpha: np.ndarray, beta: np.ndarray, lam: np.ndarray, blur: float) -> np.ndarray:
    """An upper bound on the mass of the measure's atom at each λ_i after K Lanczos steps (α_1…α_K,
    β_1…β_K): the Christoffel function Λ(λ_i), the largest atom at λ_i among all measures with the
    moments seen. Λ peaks at each Gauss node θ_l, where it equals the weight w_l, and the peak of a
    converged node is as narrow as its residual β_K |s_Kl|; `blur` is how far rounding may have moved
    the atoms, so within 100 blurs of a node converged to less than that, the node's weight bounds
    the atom too (the peak may have moved off λ_i)."""
    k = len(alpha)
    tri = np.diag(alpha) + np.diag(beta[: k - 1], 1) + np.diag(beta[: k - 1], -1)
    theta, s = np.linalg.eigh(tri)
    first, last = s[0], s[k - 1]
    distance = theta[None, :] - lam[:, None]
    on_node = distance == 0
    distance[on_node] = np.inf
    inverse = 1.0 / distance
    # Λ(x) = 1 / Σ_{t<K} p_t(x)²; the three-term recurrence is unstable near converged nodes, so
    # from T_K's eigenpairs: (p_t(x))_t ∝ (T_K − x)⁻¹ e_K, hence
    # Λ(x) = (Σ_l s_Kl s_1l / (θ_l − x))² / Σ_l s_Kl² / (θ_l − x)²
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        bound = (inverse @ (first * last)) ** 2 / ((inverse**2) @ (last**2))
    bound[~np.isfinite(bound)] = 1.0
    converged = np.abs(beta[k - 1] * last) <= 100 * blur
    near = (np.abs(distance) <= 100 * blur) & converged[None, :] | on_node
    bound = np.maximum(bound, (near * first**2).max(axis=1))
    return np.minimum(1.01 * bound, 1.0)


def _candidate(alpha, beta, basis, tall, lam, mass, epsilon) -> torch.Tensor | None:
    """The run's heaviest Ritz vector (a left vector to be, on the v side of a tall W0), when its
    weight and estimated residual suggest it reaches ε: only those are worth a float64 check."""
    t = len(alpha)
    tri = np.diag(alpha) + np.diag(beta[: t - 1], 1) + np.diag(beta[: t - 1], -1)
    theta, s = np.linalg.eigh(tri)
    # the squared cosine each Ritz pair stands for (on the v side of a tall W0, weight ‖y‖² / θ)
    cos2 = s[0] ** 2 * (mass / np.maximum(theta, 1e-300) if tall else 1.0)
    best = int(np.argmax(cos2))
    distance = np.sort(np.abs(lam - theta[best]))
    estimate = abs(beta[t - 1] * s[t - 1, best])
    if distance.size < 2 or math.sqrt(cos2[best]) - estimate / max(distance[1], 1e-300) < epsilon:
        return None
    return torch.from_numpy(s[:, best]) @ basis


def _verified(x: torch.Tensor, w0: torch.Tensor, tall: bool, lam: np.ndarray, u: torch.Tensor) -> np.ndarray:
    """For Ritz vectors x (rows) and the tuned vectors u (matching columns): lower bounds on
    max_i |u0_iᵀ u_j|, each x's residual measured in float64 on W0 and the known spectrum putting
    exactly one eigenvalue within it (Davis–Kahan: sin∠ ≤ ρ / gap); 0 where that fails."""
    if tall:  # right vectors: their left ones are W0 x, up to scale
        x = _times_t(x, w0)
    x = x / x.norm(dim=1, keepdim=True)
    image = _times_t(_times(x, w0), w0)
    quotients = (x * image).sum(1)
    residuals = (image - quotients[:, None] * x).norm(dim=1).numpy()
    cosines = (x * u.T).sum(1).abs().numpy()
    out = np.zeros(len(x))
    for r, (quotient, rho) in enumerate(zip(quotients.numpy(), residuals)):
        distance = np.abs(lam - quotient)
        near = np.flatnonzero(distance <= rho)
        if near.size != 1:
            continue
        gap = float(np.delete(distance, near[0]).min(initial=np.inf))
        if tall:
            gap = min(gap, abs(float(quotient)))  # the null space of W0 W0ᵀ is the other neighbour
        if gap > rho:
            out[r] = max(0.0, cosines[r] - rho / gap)
    return out
