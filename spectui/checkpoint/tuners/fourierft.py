"""FourierFT (PEFT `tuners/fourierft/`): each module trains n spectral coefficients at positions
drawn once from `random_loc_seed`; ΔW = Re(IFFT2(F)) · scaling where F (out × in) is zero but for
the coefficients. PEFT's `get_delta_weight`, transposed for GPT-2 Conv1D (`fan_in_fan_out`); per-module
n from `n_frequency_pattern`, matched as PEFT's FourierFT matches it (`.*\\.{key}$`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from spectui.checkpoint.adapters import PATTERN_TIMEOUT_S, _patterns
from spectui.checkpoint.files import CheckpointError
from spectui.checkpoint.tuners.base import Module, Plan, TunerAdapter, fmt
from spectui.checkpoint.tuners.vera import _SEED_MAX, _SEED_MIN
from spectui.validate import integer, number


@dataclass(frozen=True, eq=False, kw_only=True)
class FourierPlan(Plan):
    n_frequency: int


class FourierFTAdapter(TunerAdapter):
    peft_type = "FOURIERFT"
    kind = "FourierFT"
    parts = ("fourierft_spectrum",)

    def read_config(self) -> None:
        file, config = self.config_file, self.config
        self.n_frequency = integer(config.get("n_frequency", 1000), file, "n_frequency", minimum=1,
                                   error=CheckpointError)
        self.scaling = number(config.get("scaling", 150.0), file, "scaling", error=CheckpointError)
        self.seed = integer(config.get("random_loc_seed", 777), file, "random_loc_seed", error=CheckpointError)
        if not _SEED_MIN <= self.seed <= _SEED_MAX:
            raise CheckpointError(file, f"random_loc_seed {self.seed} is outside the range a seed can take")
        self.n_pattern = _patterns(config, "n_frequency_pattern", file,
                                   lambda v, f: integer(v, file, f, 1, CheckpointError))
        self.fan_in_fan_out = self.flag("fan_in_fan_out")

    @property
    def description(self) -> str:
        return f"FourierFT n={self.n_frequency} scaling={self.scaling:g}"

    def n_for(self, path: str) -> int:
        """PEFT's FourierFT `_create_and_replace`: the first key with `.*\\.{key}$` matching the path."""
        import regex

        for key, value in self.n_pattern.items():
            try:
                if regex.match(rf".*\.{key}$", path, timeout=PATTERN_TIMEOUT_S):
                    return value
            except regex.error as err:
                raise CheckpointError(self.config_file, f"n_frequency_pattern key {key!r} is not a valid pattern "
                                                        f"({err})") from None
            except TimeoutError:
                raise CheckpointError(self.config_file, f"n_frequency_pattern key {key!r} takes too long to match; "
                                                        "refusing it") from None
        return self.n_frequency

    def plan(self, module: Module, base_name: str, shape: tuple[int, ...]) -> FourierPlan:
        n = self.n_for(module.path)
        stored = self.part_shape(module, "fourierft_spectrum")
        if len(shape) != 2:
            return FourierPlan(module=module, base_name=base_name, shape=shape, n_frequency=n,
                               unsupported=f"FourierFT on a {len(shape)}-D weight is not supported")
        if stored != (n,) or n > shape[0] * shape[1]:
            raise self.misfit(module, shape, f"spectrum {fmt(stored)}, n_frequency={n}")
        return FourierPlan(module=module, base_name=base_name, shape=shape, n_frequency=n,
                           fan_in_fan_out=self.fan_in_fan_out)

    def delta(self, plan: FourierPlan) -> torch.Tensor:
        """PEFT's `FourierFTLayer.get_delta_weight`, in (out, in) orientation."""
        import torch

        out_dim, in_dim = plan.out_in
        indices = torch.randperm(out_dim * in_dim, generator=torch.Generator().manual_seed(self.seed))[
            : plan.n_frequency]
        indices = torch.stack([indices // in_dim, indices % in_dim], dim=0)
        spectrum = self.tensor(plan, "fourierft_spectrum")
        dense = torch.zeros(out_dim, in_dim)
        dense[indices[0, :], indices[1, :]] = spectrum.float()
        return torch.fft.ifft2(dense).real * self.scaling

    def merge(self, plan: FourierPlan, w0: torch.Tensor) -> torch.Tensor:
        delta = self.delta(plan)
        return w0 + (delta.T if plan.fan_in_fan_out else delta)
