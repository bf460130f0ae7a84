"""LoHa (PEFT `tuners/loha/layer.py`): ΔW = ((W1a W1b) ⊙ (W2a W2b)) · α/r, the Hadamard product of
two rank-r products; convolutions with `use_effective_conv2d` use the CP form with hada_t1/t2.

Per-module r and α come from `rank_pattern` / `alpha_pattern` as PEFT's `get_pattern_key` finds
them. ΔW = B·A with B (out × r²) and A (r² × in), the face-splitting products of the factors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from spectui.checkpoint.tuners.base import Module, Plan, fmt, prod
from spectui.checkpoint.tuners.lycoris import LycorisAdapter


@dataclass(frozen=True, eq=False, kw_only=True)
class LohaPlan(Plan):
    rank: int
    scaling: float
    cp: bool  # Tucker/CP form of an effective conv (hada_t1, hada_t2)


class LohaAdapter(LycorisAdapter):
    peft_type = "LOHA"
    kind = "LoHa"
    parts = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")

    def plan(self, module: Module, base_name: str, shape: tuple[int, ...]) -> LohaPlan:
        self.require(module, "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        r, alpha = self.rank_alpha(module)
        cp = "hada_t1" in module.keys
        if cp:
            self.require(module, "hada_t2")
        s = {p: self.part_shape(module, p) for p in module.keys}
        detail = ", ".join(f"{p.removeprefix('hada_')} {fmt(v)}" for p, v in s.items())
        if cp:  # t (r, r, k1, k2), w_a (r, out), w_b (r, in): ΔW (out, in, k1, k2)
            fits = len(shape) in (3, 4)
            if fits:
                kernel = (*shape[2:], 1) if len(shape) == 3 else shape[2:]
                want = {"hada_t1": (r, r, *kernel), "hada_t2": (r, r, *kernel), "hada_w1_a": (r, shape[0]),
                        "hada_w2_a": (r, shape[0]), "hada_w1_b": (r, shape[1]), "hada_w2_b": (r, shape[1])}
                fits = all(s[p] == v for p, v in want.items())
        else:  # w_a (out, r), w_b (r, in) with convolutions flattened to (out, in·k1·k2)
            out_dim, in_dim = shape[0], prod(shape[1:])
            want = {"hada_w1_a": (out_dim, r), "hada_w2_a": (out_dim, r), "hada_w1_b": (r, in_dim),
                    "hada_w2_b": (r, in_dim)}
            fits = len(shape) >= 2 and all(s[p] == v for p, v in want.items())
        if not fits:
            raise self.misfit(module, shape, f"{detail}, r={r}")
        return LohaPlan(module=module, base_name=base_name, shape=shape, rank=r, scaling=alpha / r, cp=cp)

    def delta(self, plan: LohaPlan) -> torch.Tensor:
        """`make_weight` / `make_weight_cp` of PEFT's LoHa, reshaped to the base weight."""
        import torch

        w1a, w1b, w2a, w2b = (self.tensor(plan, p) for p in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"))
        scale = torch.tensor(plan.scaling)
        if plan.cp:
            t1, t2 = self.tensor(plan, "hada_t1"), self.tensor(plan, "hada_t2")
            rebuild1 = torch.einsum("i j k l, j r, i p -> p r k l", t1, w1b, w1a)
            rebuild2 = torch.einsum("i j k l, j r, i p -> p r k l", t2, w2b, w2a)
            weight = rebuild1 * rebuild2 * scale
        else:
            weight = ((w1a @ w1b) * (w2a @ w2b)) * scale
        return weight.reshape(plan.shape)

    def merge(self, plan: LohaPlan, w0: torch.Tensor) -> torch.Tensor:
        return w0 + self.delta(plan)

    def factors(self, plan: LohaPlan) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(W1a W1b) ⊙ (W2a W2b) = B A with B[i, (p,q)] = W1a[i,p] W2a[i,q], A[(p,q), j] = W1b[p,j] W2b[q,j]."""
        r = plan.rank
        if plan.cp or r * r >= min(plan.shape):
            return None
        w1a, w1b, w2a, w2b = (self.tensor(plan, p) for p in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"))
        b = (w1a[:, :, None] * w2a[:, None, :]).reshape(plan.shape[0], r * r) * plan.scaling
        a = (w1b[:, None, :] * w2b[None, :, :]).reshape(r * r, plan.shape[1])
        return b, a

