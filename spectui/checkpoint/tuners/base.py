"""What every non-LoRA PEFT kind shares: its config, its tensors indexed by module, the check that
each module fits the base, and the weight source that merges it on read.

A kind (one small module beside this one) says which tensor names mark an adapted module, checks
its config fields, resolves each module against its base weight into a `Plan`, and merges one
module at a time exactly as PEFT's layer code does. Nothing here builds a model; tensors are read
lazily from the adapter's files, one module at a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # torch is imported where tensors are touched: listing stays instant
    import torch

    from spectui.checkpoint.experts import ExpertIndex

from spectui.checkpoint.adapters import ADAPTER_CONFIG, PEFT_PREFIX
from spectui.checkpoint.files import CheckpointError, TensorStore, weight_files
from spectui.checkpoint.names import MatrixSpec, normalise
from spectui.validate import boolean, text

# modules_to_save copies carry their adapter's name: `….modules_to_save.<name>.weight`
_SAVED_COPY = re.compile(r"\.modules_to_save\.[^.]+\.")


@dataclass(frozen=True, eq=False)
class Module:
    """One adapted module as saved: its path in the model and its tensors' keys by part name."""

    path: str  # as PEFT names it, e.g. model.layers.0.self_attn.q_proj
    keys: dict[str, str]  # part (hada_w1_a, oft_R, …) → key in the adapter's files


@dataclass(frozen=True, eq=False, kw_only=True)
class Plan:
    """One adapted module resolved against its base weight: all its merge needs, checked."""

    module: Module
    base_name: str
    shape: tuple[int, ...]  # the base weight as stored
    fan_in_fan_out: bool = False  # stored (in, out), as GPT-2 Conv1D
    unsupported: str | None = None  # why this module's weight cannot be rebuilt (load refuses it)
    bias: str | None = None  # a base bias the merge also changes (IA³ on outputs)

    @property
    def out_in(self) -> tuple[int, int]:
        """(out, in) of a 2-D weight whatever its storage: the orientation of ΔW and of the scan."""
        rows, cols = self.shape[0], prod(self.shape[1:])
        return (cols, rows) if self.fan_in_fan_out else (rows, cols)


class TunerAdapter:
    """A PEFT adapter directory of one non-LoRA kind: config checked, tensors indexed, merged on read."""

    peft_type: ClassVar[str] = ""
    kind: ClassVar[str] = ""  # as a person writes it: "LoHa", "IA³"
    parts: ClassVar[tuple[str, ...]] = ()  # tensor names that mark an adapted module
    shared_parts: ClassVar[tuple[str, ...]] = ()  # adapter-wide tensors (VeRA's projections)

    def __init__(self, path: Path, config: dict):
        self.path = path
        self.config_file = path / ADAPTER_CONFIG
        self.config = config
        self.store = TensorStore(path, weight_files(path), {})
        base = config.get("base_model_name_or_path")
        self.base_reference = None if base in (None, "") else text(base, self.config_file, "base_model_name_or_path",
                                                                      CheckpointError)
        self.read_config()
        self.modules: dict[str, Module] = {}  # module path → its tensors
        self.shared: dict[str, str] = {}  # shared part → key
        self.replacements: dict[str, str] = {}  # tensor name → key (modules_to_save copies, trained biases)
        self.ignored: list[str] = []  # keys of no known meaning
        self._index_keys()

    # -- what a kind provides ---------------------------------------------------------------------
    def read_config(self) -> None:
        """Check the config fields the merge uses and keep them as attributes."""

    @property
    def description(self) -> str:
        return self.kind

    def plan(self, module: Module, base_name: str, shape: tuple[int, ...]) -> Plan:
        """The module resolved against its base weight; CheckpointError when it cannot fit."""
        raise NotImplementedError

    def prepare(self, plans: list[Plan]) -> list[Plan]:
        """Anything that needs every module at once (VeRA's shared projections); the plans, or
        replacements of some that cannot be rebuilt after all."""
        return plans

    def merge(self, plan: Plan, w0: torch.Tensor) -> torch.Tensor:
        """The tuned weight in the base's stored orientation, as PEFT's merge computes it."""
        raise NotImplementedError

    def factors(self, plan: Plan) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(B, A) with ΔW = B @ A in (out, in) orientation, when the kind has low-rank factors that
        make ΔW's spectrum cheaper than ΔW itself; None otherwise."""
        return None

    def merge_bias(self, plan: Plan, b0: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- shared machinery -------------------------------------------------------------------------
    def weights(self, base: TensorStore) -> TunerWeights:
        return TunerWeights(base, self)

    def module_index(self, base: TensorStore) -> dict[str, Module]:
        """The adapted modules, by path; the general path needs the base to tell them apart."""
        return self.modules

    def warnings(self) -> list[str]:
        if not self.ignored:
            return []
        more = f" and {len(self.ignored) - 1} more" if len(self.ignored) > 1 else ""
        return [f"{self.store.path}: ignores tensor {self.ignored[0]}{more}, which a {self.peft_type} adapter "
                "does not have"]

    def _index_keys(self) -> None:
        names = "|".join(re.escape(p) for p in sorted(self.parts, key=len, reverse=True))
        pattern = re.compile(rf"^(?P<module>.+)\.(?P<part>{names})(?:\.[^.]+)*$")
        for key in self.store.names():
            name = key.removeprefix(PEFT_PREFIX)
            match = pattern.match(name) if self.parts else None
            if match:
                self.modules.setdefault(match["module"], Module(match["module"], {})).keys[match["part"]] = key
            elif key.removeprefix("base_model.") in self.shared_parts:
                self.shared[key.removeprefix("base_model.")] = key
            elif name.endswith((".weight", ".bias")):  # modules_to_save copies, trained biases
                self.replacements[_SAVED_COPY.sub(".", name).replace(".base_layer.", ".")] = key
            else:
                self.ignored.append(key)
        if self.parts and not self.modules:
            raise CheckpointError(self.store.path, f"holds no {self.kind} tensors ({', '.join(self.parts)}), "
                                                   f"though {ADAPTER_CONFIG} says peft_type {self.peft_type}")

    def tensor(self, plan: Plan, part: str) -> torch.Tensor:
        """One of the module's tensors, as float32."""
        return self.store.load(plan.module.keys[part]).float()

    def part_shape(self, module: Module, part: str) -> tuple[int, ...]:
        return self.store.shape(module.keys[part])

    def require(self, module: Module, *parts: str) -> None:
        missing = [p for p in parts if p not in module.keys]
        if missing:
            raise CheckpointError(self.store.path, f"lacks {missing[0]} for {module.path}, which a "
                                                   f"{self.kind} module needs")

    def misfit(self, module: Module, shape: tuple[int, ...], detail: str) -> CheckpointError:
        return CheckpointError(self.store.path, f"{self.kind} tensors for {module.path} ({detail}) do not fit the "
                                                f"base weight {fmt(shape)}; the adapter was made for another base "
                                                "model")

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.config.get(name)
        return default if value is None else boolean(value, self.config_file, name, CheckpointError)


class TunerWeights:
    """The tuned weights a non-LoRA adapter stands for: base tensors, merged on read, one at a time."""

    is_adapter = True

    def __init__(self, base: TensorStore, adapter: TunerAdapter):
        self.base = base
        self.adapter = adapter
        self.path = adapter.path
        by_norm = {normalise(n): n for n in base.names()}
        plans = []
        for module in adapter.module_index(base).values():
            base_name = by_norm.get(normalise(f"{module.path}.weight"))
            if base_name is None:
                raise CheckpointError(adapter.store.path, f"adapts {module.path}, which the base {base.path} does "
                                                          "not have; the adapter was made for another base model")
            plans.append(adapter.plan(module, base_name, base.shape(base_name)))
        plans = adapter.prepare(plans)
        self._plans: dict[str, Plan] = {plan.base_name: plan for plan in plans}
        self._biases: dict[str, Plan] = {}
        for plan in plans:
            bias = by_norm.get(normalise(plan.bias)) if plan.bias is not None else None
            if bias is not None and base.shape(bias) == (plan.out_in[0],):
                self._biases[bias] = plan
        self._replaced = {by_norm.get(normalise(name), name): key for name, key in adapter.replacements.items()}

    @property
    def label(self) -> str:
        return self.path.name

    @property
    def config(self) -> dict:
        return self.base.config

    @property
    def description(self) -> str:
        return self.adapter.description

    @property
    def is_classifier(self) -> bool:
        return self.adapter.config.get("task_type") == "SEQ_CLS"

    @property
    def layout(self) -> TensorStore:
        return self.base

    def warnings(self) -> list[str]:
        return self.adapter.warnings()

    def refittable(self) -> None:
        """None: only LoRA's ΔW = B·A can be re-fitted to rank r; mitigation writes these merged."""
        return None

    def unscannable(self) -> dict[str, str]:
        """Base weights the adapter changes but that cannot be rebuilt here, with the reason."""
        return {name: plan.unsupported for name, plan in self._plans.items() if plan.unsupported}

    def names(self) -> list[str]:
        return self.base.names() + [n for n in self._replaced if n not in self.base]

    def __contains__(self, name: str) -> bool:
        return name in self.base or name in self._replaced

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self._replaced:
            return self.adapter.store.shape(self._replaced[name])
        return self.base.shape(name)

    def changes(self, name: str) -> bool:
        return name in self._plans or name in self._replaced or name in self._biases

    def experts(self) -> ExpertIndex:
        return self.base.experts()

    def unreadable(self, name: str) -> str | None:
        return None if name in self._replaced else self.base.unreadable(name)

    def load(self, name: str) -> torch.Tensor:
        """A saved replacement stands in for the base weight; the adapter, if any, applies on top."""
        replaced = name in self._replaced
        w = self.adapter.store.load(self._replaced[name]) if replaced else self.base.load(name)
        if name in self._biases:
            return self.adapter.merge_bias(self._biases[name], w.float())
        plan = self._plans.get(name)
        if plan is None:
            return w
        if plan.unsupported:
            raise CheckpointError(self.adapter.store.path, f"cannot rebuild {plan.module.path}: {plan.unsupported}")
        return self.adapter.merge(plan, w.float())

    def delta_factors(self, spec: MatrixSpec) -> tuple[torch.Tensor, torch.Tensor] | None:
        plan = self._plans.get(spec.name)
        if plan is None or plan.unsupported or spec.name in self._replaced or len(plan.shape) != 2:
            return None
        return self.adapter.factors(plan)


def fmt(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def prod(dims) -> int:
    total = 1
    for d in dims:
        total *= d
    return total
