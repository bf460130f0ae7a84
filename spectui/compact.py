"""A base matrix's decomposition as the cache keeps it: under half of the checkpoint's bytes, and
still deciding every flag the results are read at exactly.

A cold scan compares with this form too (`spectral.decompose_base`), so a pair's values are the same
cold or cached, and a tall W0's left vectors beyond the head are never formed. The top TOP_VECTORS
left vectors stay float32: the similarity block, principal angles and energies read them. The other
vectors are kept as 16-bit integers, one scale per column, each entry within half a step s_i/2 of
the float64 vector (fixed point spends all sixteen bits on the mantissa: ~30× finer than float16
for a spread-out unit vector). Of a tall W0 (m > n) the right vectors are kept instead, n×n rather
than m×n, and u0_i = W0 v0_i / σ_i. So every cosine is known within a bound:

    square or wide:  |u_jᵀ u0_i − c̃_ij| ≤ (s_i/2) ‖u_j‖₁
    tall:            |u_jᵀ u0_i − c̃_ij| ≤ (s_i/2) ‖y_j‖₁ / σ_i + |c̃_ij| ρ_i + 2‖Ũ_h − U_h‖,

where y_j = W0ᵀ (I − Ũ_h Ũ_hᵀ) u_j: the head's part of u_j adds nothing (W0 v0_i = σ_i u0_i is
orthogonal to the head U_h), so y_j is what the rest of the spectrum makes of u_j, not σ_max's
share; the last term is what the float32 head's projector misses. ρ_i bounds σ_i's relative
rounding (float64 eigenvalues of the Gram). These are a few 1e-5 where
σ_i is not tiny. Where one leaves a flag open at an ε the results are read at (EPSILON_SWEEP, each
of the top TOP_VECTORS), or leaves max|cos| itself less sure than VALUE_TOLERANCE, `max_cos`
answers None and the caller decomposes W0 again, in full.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from spectui.defaults import EPSILON_SWEEP, TOP_VECTORS

STEPS = 32767  # the largest entry of each kept column, in steps
VALUE_TOLERANCE = 5e-3  # max|cos| is certified this close (its error is ~1e-5: the bounds are worst cases)
_COLUMNS = 512  # kept columns turned into and back from float64 at a time (4096 rows: 16 MB)
_ROWS = 2048  # rows of W0 turned into float64 at a time
_FLOAT32_ULP = 1e-7  # max|cos| is stored in float32 and compared with ε in float32 (intruders.py)
_HEAD_ERROR = 1e-6  # ‖ũ0_i − u0_i‖ for a float32 head vector, rounded up
_CHECKED = torch.tensor(sorted({float(np.float32(e)) for e in EPSILON_SWEEP}), dtype=torch.float64)


def quantize(vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int16 entries, float64 step per column) with every entry within step/2 of `vectors`; a few
    columns at a time in float64 (a 8192² base's vectors are 0.5 GB at that precision)."""
    entries = torch.empty(vectors.shape, dtype=torch.int16)
    step = torch.zeros(vectors.shape[1], dtype=torch.float64)
    for i in range(0, vectors.shape[1], _COLUMNS):
        part = vectors[:, i: i + _COLUMNS].to(torch.float64)
        step[i: i + _COLUMNS] = part.abs().amax(dim=0).cpu() / STEPS if part.shape[0] else 0
        safe = torch.where(step[i: i + _COLUMNS] > 0, step[i: i + _COLUMNS], 1.0).to(part.device)
        entries[:, i: i + _COLUMNS] = (part / safe).round().clamp(-STEPS, STEPS).to(torch.int16).cpu()
    return entries, step


@dataclass(frozen=True)
class CompactBase:
    """W0's singular values (float64, descending), its top left vectors (float32 columns) and the
    rest of its vectors quantized (`quantize`): left ones, or right ones for a tall W0."""

    sigma: torch.Tensor
    head: torch.Tensor
    rest: torch.Tensor
    step: torch.Tensor

    @classmethod
    def of(cls, sigma: torch.Tensor, u: torch.Tensor, gram_vectors: torch.Tensor) -> CompactBase:
        """From a full decomposition: σ, the left vectors U0 (float32) and the eigenvectors of the
        short side's Gram (float64: U0 itself, or V0 for a tall W0)."""
        kept = min(TOP_VECTORS, sigma.numel())
        rest, step = quantize(gram_vectors[:, kept:])
        return cls(sigma.cpu(), u[:, :kept].cpu().contiguous(), rest, step)

    @property
    def needs_w0(self) -> bool:
        """A tall W0's left vectors are products with it."""
        return self.head.shape[0] > self.sigma.numel()

    def fits(self, shape: tuple[int, int]) -> bool:
        """Whether it can be a matrix of this shape's (a cache entry is checked before use)."""
        m, n = shape
        dim = min(m, n)
        kept = min(TOP_VECTORS, dim)
        return (self.sigma.shape == (dim,) and self.head.shape == (m, kept)
                and self.rest.shape == (n if m > n else m, dim - kept) and self.step.shape == (dim - kept,)
                and self.rest.dtype == torch.int16
                and all(bool(torch.isfinite(t).all()) for t in (self.sigma, self.head, self.step))
                and not bool((self.sigma < 0).any()) and not bool((self.step < 0).any()))

    def max_cos(self, tuned_u: torch.Tensor, w0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """max_i |u_jᵀ u0_i| and its i for each tuned vector u_j (columns of `tuned_u`, float32), or
        None where the bounds leave a flag or the value open."""
        head, near, bound = self._cosines(tuned_u, w0)
        lower, upper = self._max_bounds(head, near, bound)
        checked = _CHECKED.to(tuned_u.device)
        open_flag = (lower[:, None] - _FLOAT32_ULP < checked) & (checked <= upper[:, None] + _FLOAT32_ULP)
        if bool(open_flag.any()) or bool((upper - lower > VALUE_TOLERANCE).any()):
            return None
        head_value, head_best = head.max(dim=1)
        if near.shape[1] == 0:
            return head_value, head_best
        rest_value, rest_best = near.clamp(max=1.0).max(dim=1)
        from_rest = rest_value > head_value.to(torch.float64)
        return (torch.where(from_rest, rest_value.to(torch.float32), head_value),
                torch.where(from_rest, rest_best + self.head.shape[1], head_best))

    def bounds(self, tuned_u: torch.Tensor, w0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower and upper bounds (float64) on each tuned vector's max|cos|."""
        return self._max_bounds(*self._cosines(tuned_u, w0))

    def count_bounds(self, tuned_u: torch.Tensor, tuned_error: np.ndarray,
                     w0: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
        """Bounds on max|cos| of tuned vectors known only within `tuned_error` (float64 columns, as
        `certify.tuned_top` finds them): the counts of a new tuned model on a cached base, from its
        products with the stored vectors alone. The head's cosines are float64 products of float32
        vectors, each within _HEAD_ERROR of W0's; |ũ_jᵀu0_i − u_jᵀu0_i| ≤ ‖ũ_j − u_j‖ widens all."""
        u = tuned_u.to(torch.float64)
        head = (u.T @ self.head.to(u.device).to(torch.float64)).abs()
        near, bound = self._rest_cosines(u, w0)
        lower, upper = self._max_bounds(head, near, bound, head_bound=_HEAD_ERROR + _FLOAT32_ULP)
        slack = torch.as_tensor(np.asarray(tuned_error, dtype=np.float64), device=u.device)
        return (lower - slack).clamp(min=0).cpu().numpy(), (upper + slack).clamp(max=1.0).cpu().numpy()

    def _cosines(self, tuned_u: torch.Tensor, w0: torch.Tensor | None):
        """|cosines| with the head (float32, as the full decomposition's own product), with the
        quantized vectors (float64) and the latter's bounds."""
        head = (tuned_u.T @ self.head.to(tuned_u.device)).abs()
        return (head, *self._rest_cosines(tuned_u.to(torch.float64), w0))

    @staticmethod
    def _max_bounds(head: torch.Tensor, near: torch.Tensor, bound: torch.Tensor,
                    head_bound: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """`head_bound`: how far the head's cosines may be off (0: they are the values themselves)."""
        top = head.max(dim=1).values.to(torch.float64)
        lower, upper = top - head_bound, top + head_bound
        if near.shape[1] == 0:
            return lower, upper
        lower = torch.maximum(lower, (near - bound).amax(dim=1))
        return lower, torch.maximum(upper, (near + bound).amax(dim=1)).clamp(max=1 + _FLOAT32_ULP)

    def _rest_cosines(self, t: torch.Tensor, w0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """|c̃_ij| for the quantized vectors i and their bounds (module docstring), float64; each bound
        also holds the float64 sums' rounding (γ_m = m 2⁻⁵² of the sums' magnitudes)."""
        device = t.device
        step = self.step.to(device)
        kept = self.head.shape[1]
        m = t.shape[0]
        if self.needs_w0:
            if w0 is None:
                raise ValueError("a tall base's cached vectors need W0")
            head = self.head.to(device).to(torch.float64)
            rest = t - head @ (head.T @ t)  # its head part adds nothing to y_jᵀ v0_i (module docstring)
            # y_jᵀ = rest_jᵀ W0, in that order: Wᵀ0 times a column-major rest took torch 6.6× as long
            probe = sum(rest[i: i + _ROWS].T @ w0[i: i + _ROWS].to(torch.float64) for i in range(0, m, _ROWS)).T
            sigma = self.sigma[kept:].to(device)
            scale = torch.where(sigma > 0, 1 / sigma, torch.full_like(sigma, float("inf")))
            rho = self.sigma.numel() * 2.0**-53 * (float(self.sigma[0]) * scale) ** 2
            rounding = (m + probe.shape[0]) * 2.0**-52 * float(self.sigma[0]) * rest.norm(dim=0) * probe.shape[0] ** 0.5
        else:
            probe, scale, rho = t, None, None
            rounding = m * 2.0**-52 * t.norm(dim=0)
        l1 = probe.abs().sum(dim=0)
        parts = []
        for i in range(0, self.rest.shape[1], _COLUMNS):
            vectors = self.rest[:, i: i + _COLUMNS].to(device).to(torch.float64) * step[i: i + _COLUMNS]
            parts.append(probe.T @ vectors)
        near = torch.cat(parts, dim=1).abs() if parts else torch.zeros(t.shape[1], 0, dtype=torch.float64,
                                                                         device=device)
        bound = (step / 2)[None, :] * l1[:, None] + rounding[:, None]
        if scale is not None:
            near = torch.nan_to_num(near * scale, nan=0.0, posinf=0.0)  # a zero σ: its bound is infinite
            projection = 2.01 * kept**0.5 * _HEAD_ERROR  # ‖(P − P̃)u_j‖ for the head's projector P
            bound = torch.nan_to_num(bound * scale + near * rho + projection, nan=float("inf"))
        return near, bound
