"""AdaLoRA (PEFT `tuners/adalora/`): ΔW = P Λ Q as B · (A ⊙ E) · scaling / (ranknum + 1e-5), with
lora_B = P (out × r), lora_E = Λ (r × 1), lora_A = Q (r × in); scaling = lora_alpha (or r when
lora_alpha ≤ 0); transposed for GPT-2 Conv1D (`fan_in_fan_out`).

The rank budget runs from init_r down to target_r on average. When the config carries the
`rank_pattern` the budget chose (one boolean per initial rank and module), PEFT saved only the
kept ranks; ranknum, which PEFT does not save, stays init_r for those modules (PEFT copies it back
after resizing) and the scaling uses the kept rank when lora_alpha ≤ 0. ΔW's factors are kept, so
its spectrum costs O(r²).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from spectui.checkpoint.files import CheckpointError
from spectui.checkpoint.tuners.base import Module, Plan, TunerAdapter, fmt
from spectui.validate import integer, number, text


@dataclass(frozen=True, eq=False, kw_only=True)
class AdaloraPlan(Plan):
    rank: int  # ranks saved
    ranknum: float
    scaling: float


class AdaloraAdapter(TunerAdapter):
    peft_type = "ADALORA"
    kind = "AdaLoRA"
    parts = ("lora_A", "lora_B", "lora_E")

    def read_config(self) -> None:
        file, config = self.config_file, self.config
        self.init_r = integer(config.get("init_r", 12), file, "init_r", minimum=1, error=CheckpointError)
        self.target_r = integer(config.get("target_r", 8), file, "target_r", minimum=0, error=CheckpointError)
        self.alpha = number(config.get("lora_alpha", 8), file, "lora_alpha", error=CheckpointError)
        self.fan_in_fan_out = self.flag("fan_in_fan_out")
        pattern = config.get("rank_pattern") or {}
        if not isinstance(pattern, dict):
            raise CheckpointError(file, "rank_pattern must be a table of module names")
        self.rank_pattern: dict[str, list[bool]] = {}
        for key, mask in pattern.items():
            text(key, file, "a rank_pattern key", CheckpointError)
            if not isinstance(mask, list) or not all(isinstance(b, bool) for b in mask) or len(mask) != self.init_r:
                raise CheckpointError(file, f"rank_pattern[{key!r}] must be a list of {self.init_r} (init_r) true or "
                                            "false values")
            # PEFT's keys are parameter names (…q_proj.lora_E, the adapter's name stripped): the module is the rest
            self.rank_pattern[key.rpartition(".")[0]] = mask

    @property
    def description(self) -> str:
        return f"AdaLoRA budget {self.init_r}→{self.target_r}"

    def prepare(self, plans: list[Plan]) -> list[Plan]:
        unknown = set(self.rank_pattern) - {plan.module.path for plan in plans}
        if unknown:
            raise CheckpointError(self.config_file, f"rank_pattern names {min(unknown)}, which the adapter does not "
                                                    "adapt")
        return plans

    def plan(self, module: Module, base_name: str, shape: tuple[int, ...]) -> AdaloraPlan:
        self.require(module, "lora_A", "lora_B", "lora_E")
        mask = self.rank_pattern.get(module.path)
        rank = self.init_r if mask is None else sum(mask)
        a, b, e = (self.part_shape(module, p) for p in ("lora_A", "lora_B", "lora_E"))
        plan = AdaloraPlan(module=module, base_name=base_name, shape=shape, rank=rank,
                           fan_in_fan_out=self.fan_in_fan_out and len(shape) == 2,
                           ranknum=float(self.init_r) if rank else 0.0,
                           scaling=self.alpha if self.alpha > 0 else float(rank))
        out_dim, in_dim = plan.out_in if len(shape) >= 2 else (-1, -1)
        if a != (rank, in_dim) or b != (out_dim, rank) or e != (rank, 1):
            kept = f"{rank} of {self.init_r} ranks kept" if mask is not None else f"init_r={self.init_r}"
            raise self.misfit(module, shape, f"B {fmt(b)}, E {fmt(e)}, A {fmt(a)}; {kept}")
        return plan

    def factors(self, plan: AdaloraPlan) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(B · scaling / (ranknum + 1e-5), A ⊙ E) in (out, in) orientation."""
        import torch

        if len(plan.shape) != 2:
            return None
        b = self.tensor(plan, "lora_B")
        a = self.tensor(plan, "lora_A") * self.tensor(plan, "lora_E")
        return b * plan.scaling / (torch.tensor([plan.ranknum]) + 1e-5), a

    def delta(self, plan: AdaloraPlan) -> torch.Tensor:
        """PEFT's `SVDLinear.get_delta_weight` (and SVDConv2d's, reshaped), in the base's orientation."""
        import torch

        b, a, e = (self.tensor(plan, p) for p in ("lora_B", "lora_A", "lora_E"))
        delta = b @ (a * e)
        if plan.fan_in_fan_out:
            delta = delta.T
        delta = delta * plan.scaling / (torch.tensor([plan.ranknum]) + 1e-5)
        return delta.reshape(plan.shape)

    def merge(self, plan: AdaloraPlan, w0: torch.Tensor) -> torch.Tensor:
        return w0 + self.delta(plan)
