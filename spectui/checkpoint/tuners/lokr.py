"""LoKr (PEFT `tuners/lokr/layer.py`): ΔW = (W1 ⊗ W2) · α/r, each Kronecker factor stored whole
(lokr_w1, lokr_w2) or as a rank-r product (lokr_w1_a @ lokr_w1_b, lokr_w2_a @ lokr_w2_b), and for
effective convolutions W2 in CP form with lokr_t2.

(L1 R1) ⊗ (L2 R2) = (L1 ⊗ L2)(R1 ⊗ R2), so ΔW = B·A with inner size the product of the factors'
inner sizes (a whole factor contributes the smaller of its sides): kept when that is below
min(out, in), as for a rank-r W2 beside a small W1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from spectui.checkpoint.tuners.base import Module, Plan, fmt, prod
from spectui.checkpoint.tuners.lycoris import LycorisAdapter


@dataclass(frozen=True, eq=False, kw_only=True)
class LokrPlan(Plan):
    rank: int
    scaling: float


class LokrAdapter(LycorisAdapter):
    peft_type = "LOKR"
    kind = "LoKr"
    parts = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")

    def plan(self, module: Module, base_name: str, shape: tuple[int, ...]) -> LokrPlan:
        r, alpha = self.rank_alpha(module)
        keys = module.keys
        s = {p: self.part_shape(module, p) for p in keys}
        detail = ", ".join(f"{p.removeprefix('lokr_')} {fmt(v)}" for p, v in s.items()) + f", r={r}"
        if "lokr_w1" in keys:
            w1 = s["lokr_w1"]
            fits = len(w1) == 2
        else:
            self.require(module, "lokr_w1_a", "lokr_w1_b")
            a, b = s["lokr_w1_a"], s["lokr_w1_b"]
            fits = len(a) == len(b) == 2 and a[1] == b[0] == r
            w1 = (a[0], b[-1])
        if "lokr_w2" in keys:
            w2 = s["lokr_w2"]
        elif "lokr_t2" in keys:  # t2 (r, r, k1, k2), w2_a (r, b), w2_b (r, d) → (b, d, k1, k2)
            self.require(module, "lokr_w2_a", "lokr_w2_b")
            t, a, b = s["lokr_t2"], s["lokr_w2_a"], s["lokr_w2_b"]
            fits = fits and len(t) == 4 and len(a) == len(b) == 2 and t[:2] == (r, r) and a[0] == b[0] == r
            w2 = (a[-1], b[-1], *t[2:])
        else:
            self.require(module, "lokr_w2_a", "lokr_w2_b")
            a, b = s["lokr_w2_a"], s["lokr_w2_b"]
            fits = fits and len(a) == len(b) == 2 and a[1] == b[0] == r
            w2 = (a[0], b[-1])
        kron = _kron_shape(w1, w2)
        fits = fits and kron is not None and prod(kron) == prod(shape) and kron[0] == shape[0]
        if not fits or (len(shape) == 2 and kron != shape):
            raise self.misfit(module, shape, detail)
        return LokrPlan(module=module, base_name=base_name, shape=shape, rank=r, scaling=alpha / r)

    def _w1(self, plan: LokrPlan) -> torch.Tensor:
        if "lokr_w1" in plan.module.keys:
            return self.tensor(plan, "lokr_w1")
        return self.tensor(plan, "lokr_w1_a") @ self.tensor(plan, "lokr_w1_b")

    def _w2(self, plan: LokrPlan) -> torch.Tensor:
        import torch

        keys = plan.module.keys
        if "lokr_w2" in keys:
            return self.tensor(plan, "lokr_w2")
        if "lokr_t2" in keys:  # PEFT's lokr make_weight_cp
            return torch.einsum("i j k l, i p, j r -> p r k l", self.tensor(plan, "lokr_t2"),
                                self.tensor(plan, "lokr_w2_a"), self.tensor(plan, "lokr_w2_b"))
        return self.tensor(plan, "lokr_w2_a") @ self.tensor(plan, "lokr_w2_b")

    def delta(self, plan: LokrPlan) -> torch.Tensor:
        """PEFT's `make_kron(w1, w2, scaling)`, reshaped to the base weight."""
        import torch

        w1, w2 = self._w1(plan), self._w2(plan)
        if len(w2.shape) == 4:
            w1 = w1.unsqueeze(2).unsqueeze(2)
        return (torch.kron(w1, w2.contiguous()) * plan.scaling).reshape(plan.shape)

    def merge(self, plan: LokrPlan, w0: torch.Tensor) -> torch.Tensor:
        return w0 + self.delta(plan)

    def factors(self, plan: LokrPlan) -> tuple[torch.Tensor, torch.Tensor] | None:
        import torch

        keys = plan.module.keys
        if "lokr_t2" in keys:
            return None
        sides = [_sides(self, plan, "lokr_w1", keys), _sides(self, plan, "lokr_w2", keys)]
        inner = sides[0][0].shape[1] * sides[1][0].shape[1]
        if inner >= min(plan.shape):
            return None
        (l1, r1), (l2, r2) = sides
        return torch.kron(l1, l2) * plan.scaling, torch.kron(r1, r2)


def _sides(adapter: LokrAdapter, plan: LokrPlan, name: str, keys) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, R) with L @ R the Kronecker factor, inner size r or the smaller side of a whole factor."""
    import torch

    if name in keys:
        w = adapter.tensor(plan, name)
        rows, cols = w.shape
        return (torch.eye(rows), w) if rows <= cols else (w, torch.eye(cols))
    return adapter.tensor(plan, f"{name}_a"), adapter.tensor(plan, f"{name}_b")


def _kron_shape(w1: tuple[int, ...], w2: tuple[int, ...]) -> tuple[int, ...] | None:
    """torch.kron's result shape after PEFT's make_kron (w1 widened for a 4-D w2)."""
    if len(w1) != 2 or len(w2) not in (2, 3, 4):
        return None
    if len(w2) == 4:
        w1 = (*w1, 1, 1)
    left = (1,) * (len(w2) - len(w1)) + tuple(w1)
    return tuple(x * y for x, y in zip(left, w2))
