"""(IA)³ (PEFT `tuners/ia3/layer.py`): one learned vector l per module scales the weight — its inputs
for modules in `feedforward_modules` (l of shape (1, in)), its outputs otherwise (l of shape
(out, 1), and the bias with them). W = W0 ⊙ l, i.e. ΔW = W0 · (diag(l) − I) on the input side or
(diag(l) − I) · W0 on the output side; transposed for GPT-2 Conv1D (`fan_in_fan_out`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from spectui.checkpoint.adapters import PATTERN_TIMEOUT_S
from spectui.checkpoint.files import CheckpointError
from spectui.checkpoint.tuners.base import Module, Plan, TunerAdapter, fmt
from spectui.validate import text


@dataclass(frozen=True, eq=False, kw_only=True)
class Ia3Plan(Plan):
    feedforward: bool


class Ia3Adapter(TunerAdapter):
    peft_type = "IA3"
    kind = "IA³"
    parts = ("ia3_l",)

    def read_config(self) -> None:
        file = self.config_file
        modules = self.config.get("feedforward_modules")
        if modules is None:
            modules = []
        if isinstance(modules, list):
            modules = [text(m, file, "a feedforward_modules entry", CheckpointError) for m in modules]
        else:
            modules = text(modules, file, "feedforward_modules", CheckpointError)
        self.feedforward_modules: str | list[str] = modules
        self.fan_in_fan_out = self.flag("fan_in_fan_out")

    def is_feedforward(self, path: str) -> bool:
        """PEFT's `_check_target_module_feedforward`: a string is a full-match pattern, a list suffixes."""
        if isinstance(self.feedforward_modules, list):
            return any(path.endswith(suffix) for suffix in self.feedforward_modules)
        import regex

        try:
            return bool(regex.fullmatch(self.feedforward_modules, path, timeout=PATTERN_TIMEOUT_S))
        except regex.error as err:
            raise CheckpointError(self.config_file, f"feedforward_modules {self.feedforward_modules!r} is not a valid "
                                                    f"pattern ({err})") from None
        except TimeoutError:
            raise CheckpointError(self.config_file, "feedforward_modules takes too long to match; "
                                                    "refusing it") from None

    def plan(self, module: Module, base_name: str, shape: tuple[int, ...]) -> Ia3Plan:
        feedforward = self.is_feedforward(module.path)
        stored = self.part_shape(module, "ia3_l")
        if len(shape) != 2:
            return Ia3Plan(module=module, base_name=base_name, shape=shape, feedforward=feedforward,
                           unsupported=f"IA³ on a {len(shape)}-D weight is not supported")
        plan = Ia3Plan(module=module, base_name=base_name, shape=shape, feedforward=feedforward,
                       fan_in_fan_out=self.fan_in_fan_out, bias=None if feedforward else f"{module.path}.bias")
        out_dim, in_dim = plan.out_in
        if stored != ((1, in_dim) if feedforward else (out_dim, 1)):
            side = "inputs (a feedforward module)" if feedforward else "outputs"
            raise self.misfit(module, shape, f"ia3_l {fmt(stored)} scaling its {side}")
        return plan

    def merge(self, plan: Ia3Plan, w0: torch.Tensor) -> torch.Tensor:
        scale = self.tensor(plan, "ia3_l")
        return w0 * (scale.T if plan.fan_in_fan_out else scale)

    def merge_bias(self, plan: Ia3Plan, b0: torch.Tensor) -> torch.Tensor:
        return b0 * self.tensor(plan, "ia3_l").reshape(b0.shape)
