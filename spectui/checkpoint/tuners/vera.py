"""VeRA (PEFT `tuners/vera/`): one pair of frozen random projections A (r × in_max) and
B (out_max × r) shared by every module, and two trained vectors per module:
ΔW = (λ_b ⊙ B[:out]) · (λ_d ⊙ A[:, :in]), transposed for GPT-2 Conv1D (`fan_in_fan_out`).

The projections are read from the adapter when it saved them (`save_projection`, keys
base_model.vera_A / vera_B), else regenerated exactly as PEFT does: a CPU generator seeded with
`projection_prng_key` draws Kaiming-uniform A then B at the largest (out, in) of the adapted
modules. ΔW = B'·A' is rank r: its spectrum comes from the factors.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from spectui.checkpoint.files import CheckpointError
from spectui.checkpoint.tuners.base import Module, Plan, TunerAdapter, fmt
from spectui.validate import integer

# torch.Generator.manual_seed accepts exactly this range
_SEED_MIN, _SEED_MAX = -(2**63), 2**64 - 1


@dataclass(frozen=True, eq=False, kw_only=True)
class VeraPlan(Plan):
    pass


class VeraAdapter(TunerAdapter):
    peft_type = "VERA"
    kind = "VeRA"
    parts = ("vera_lambda_b", "vera_lambda_d")
    shared_parts = ("vera_A", "vera_B")

    def read_config(self) -> None:
        file = self.config_file
        self.r = integer(self.config.get("r", 256), file, "r", minimum=1, error=CheckpointError)
        self.seed = integer(self.config.get("projection_prng_key", 0), file, "projection_prng_key",
                            error=CheckpointError)
        if not _SEED_MIN <= self.seed <= _SEED_MAX:
            raise CheckpointError(file, f"projection_prng_key {self.seed} is outside the range a seed can take")
        self.save_projection = self.flag("save_projection", default=True)
        self.fan_in_fan_out = self.flag("fan_in_fan_out")
        self._projections: tuple[torch.Tensor, torch.Tensor] | None = None
        self._largest = (0, 0)
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        return f"VeRA r={self.r}"

    def plan(self, module: Module, base_name: str, shape: tuple[int, ...]) -> VeraPlan:
        self.require(module, "vera_lambda_b", "vera_lambda_d")
        b, d = self.part_shape(module, "vera_lambda_b"), self.part_shape(module, "vera_lambda_d")
        if len(shape) != 2:
            return VeraPlan(module=module, base_name=base_name, shape=shape,
                            unsupported=f"VeRA on a {len(shape)}-D weight is not supported")
        plan = VeraPlan(module=module, base_name=base_name, shape=shape, fan_in_fan_out=self.fan_in_fan_out)
        if b != (plan.out_in[0],) or d != (self.r,):
            raise self.misfit(module, shape, f"lambda_b {fmt(b)}, lambda_d {fmt(d)}, r={self.r}")
        return plan

    def prepare(self, plans: list[Plan]) -> list[Plan]:
        """PEFT's `_find_dim`: the projections are drawn at the largest (out, in) of the adapted modules."""
        sizes = [p.out_in for p in plans if not p.unsupported]
        largest = (max((o for o, _ in sizes), default=0), max((i for _, i in sizes), default=0))
        self._largest = largest
        saved = [name for name in self.shared_parts if name in self.shared]
        if saved and len(saved) != 2:
            raise CheckpointError(self.store.path, f"saves {saved[0]} but not the other VeRA projection")
        if saved:
            a, b = self.store.shape(self.shared["vera_A"]), self.store.shape(self.shared["vera_B"])
            if len(a) != 2 or len(b) != 2 or a[0] != self.r or b[1] != self.r or a[1] < largest[1] or b[0] < largest[0]:
                raise CheckpointError(self.store.path, f"VeRA projections A {fmt(a)} and B {fmt(b)} do not cover "
                                                       f"r={self.r} and the largest adapted weight (out, in) "
                                                       f"{fmt(largest)}; the adapter was made for another base model")
        elif self.save_projection:
            raise CheckpointError(self.store.path, f"lacks the VeRA projections vera_A and vera_B that "
                                                   f"{self.config_file.name} says it saved (save_projection)")
        return plans

    def projections(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) once, read or regenerated; shared by every module and worker."""
        with self._lock:
            if self._projections is None:
                if "vera_A" in self.shared:
                    a = self.store.load(self.shared["vera_A"]).float()
                    b = self.store.load(self.shared["vera_B"]).float()
                else:
                    a, b = _regenerate(self.seed, self.r, *self._largest)
                self._projections = (a, b)
            return self._projections

    def factors(self, plan: VeraPlan) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(λ_b ⊙ B[:out], λ_d ⊙ A[:, :in]) in (out, in) orientation, when r is below min(out, in)."""
        return self._factors(plan) if self.r < min(plan.out_in) else None

    def _factors(self, plan: VeraPlan) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.projections()
        out_dim, in_dim = plan.out_in
        lambda_b = self.tensor(plan, "vera_lambda_b").unsqueeze(-1)
        lambda_d = self.tensor(plan, "vera_lambda_d").unsqueeze(-1)
        return lambda_b * b[:out_dim, :], lambda_d * a[:, :in_dim]

    def merge(self, plan: VeraPlan, w0: torch.Tensor) -> torch.Tensor:
        left, right = self._factors(plan)
        delta = left @ right
        return w0 + (delta.T if plan.fan_in_fan_out else delta)


def _regenerate(seed: int, r: int, out_dim: int, in_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's `VeraModel._init_vera_A_vera_B`: A then B from one CPU generator, Kaiming-uniform."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    return _kaiming_init((r, in_dim), generator), _kaiming_init((out_dim, r), generator)


def _kaiming_init(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """PEFT's vera `_kaiming_init`: uniform in ±√3·√2/√fan_in, fan_in = shape[1]."""
    import torch

    tensor = torch.empty(shape)
    bound = math.sqrt(3.0) * (math.sqrt(2) / math.sqrt(shape[1]))
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)
