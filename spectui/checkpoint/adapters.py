"""PEFT LoRA adapters read as the tuned weights they stand for, without building any model.

The merge follows PEFT exactly: ΔW = scaling · B @ A with scaling = lora_alpha / r (or
/ sqrt(r) with rsLoRA), per-module r and alpha from `rank_pattern` / `alpha_pattern`, transposed
for `fan_in_fan_out` (GPT-2 Conv1D) and for embeddings, and DoRA's magnitude rescaling.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where tensors are touched: listing stays instant
    import torch

    from spectui.checkpoint.experts import ExpertIndex

from spectui.checkpoint.delta import plus_low_rank
from spectui.checkpoint.files import CheckpointError, TensorStore, read_json, weight_files
from spectui.checkpoint.names import MatrixSpec, normalise
from spectui.checkpoint.param_lora import ParamLoraSet, strip_base_layers, targeted
from spectui.validate import boolean, integer, number, text

ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
# Initialisations that rewrite the base weights: such an adapter is only relative to the original
# base when PEFT converted it at save time (which resets init_lora_weights to True).
BASE_CHANGING_INITS = ("pissa", "olora", "corda")
_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"(?:\.[^.]+)*$"
)
_SAVED_COPY = re.compile(r"\.modules_to_save\.[^.]+\.")


def is_adapter_dir(path: Path) -> bool:
    return path.is_dir() and (path / ADAPTER_CONFIG).is_file()


@dataclass(frozen=True)
class LoraModule:
    """One adapted weight: where its factors live and how they combine."""

    module: str
    a_key: str
    b_key: str
    scaling: float
    rank: int
    embedding: bool
    fan_in_fan_out: bool
    magnitude_key: str | None

    @property
    def weight_name(self) -> str:
        return f"{self.module}.weight"


class LoraAdapter:
    """A PEFT LoRA adapter directory: its config, its factors, and any full replacement weights."""

    def __init__(self, path: Path):
        self.path = path
        self.config_file = path / ADAPTER_CONFIG
        self.config = read_json(self.config_file)
        self.settings = LoraSettings.of(self.config, self.config_file)
        self.store = TensorStore(path, weight_files(path), {})
        self.modules: dict[str, LoraModule] = {}
        self.parameter_modules: dict[str, dict[int, dict[str, str]]] = {}  # target_parameters: module → depth → keys
        self.replacements: dict[str, str] = {}  # weight name → adapter key (modules_to_save etc.)
        self._index_keys()

    @property
    def base_reference(self) -> str | None:
        return self.settings.base

    @property
    def rank(self) -> int:
        return self.settings.r

    def weights(self, base: TensorStore) -> AdaptedModel:
        """The tuned weights this adapter stands for on `base` (every adapter kind offers this)."""
        return AdaptedModel(base, self)

    def warnings(self) -> list[str]:
        init = self.settings.init
        if init.startswith(BASE_CHANGING_INITS):
            return [
                f"{self.config_file}: init_lora_weights={init} changes the base weights and this adapter "
                "was not converted at save time, so it is relative to a modified base; its deltas "
                "against the original base are not what training did"
            ]
        return []

    def _index_keys(self) -> None:
        parts: dict[str, dict[str, str]] = {}
        for key in self.store.names():
            name = key.removeprefix(PEFT_PREFIX)
            match = _LORA_KEY.match(name)
            if match:
                parts.setdefault(match["module"], {})[match["part"]] = key
            elif name.endswith(".weight") and not name.endswith(".bias"):
                # modules_to_save copies, and embedding layers saved whole beside their LoRA
                self.replacements[_SAVED_COPY.sub(".", name).replace(".base_layer.", ".")] = key
        for module, found in parts.items():
            stem, depth = strip_base_layers(module)
            params = targeted(stem, self.settings.target_parameters)
            if self.settings.target_parameters and (depth or (params and params != ["weight"])):
                # a parameter wrapped whole (3-D experts): resolved against the base, which knows its shape
                self.parameter_modules.setdefault(stem, {})[depth] = found
            else:
                self.modules[f"{module}.weight"] = self._lora_module(module, found)

    def _lora_module(self, module: str, found: dict[str, str]) -> LoraModule:
        embedding = "lora_embedding_A" in found
        a_key = found.get("lora_embedding_A" if embedding else "lora_A")
        b_key = found.get("lora_embedding_B" if embedding else "lora_B")
        if a_key is None or b_key is None:
            raise CheckpointError(self.store.path, f"has only one of the two LoRA factors for {module}")
        a_shape, b_shape = self.store.shape(a_key), self.store.shape(b_key)
        settings, file = self.settings, self.config_file
        r = _pattern_value(settings.rank_pattern, module, settings.r, file, "rank_pattern")
        alpha = _pattern_value(settings.alpha_pattern, module, settings.alpha, file, "alpha_pattern")
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1] or a_shape[0] != r:
            raise CheckpointError(self.store.path, f"LoRA factors for {module} (B {_fmt(b_shape)}, A {_fmt(a_shape)}) "
                                                   f"do not have the rank r={r} that {file.name} gives")
        magnitude = found.get("lora_magnitude_vector")
        if magnitude is not None and len(self.store.shape(magnitude)) not in (1, 2):
            raise CheckpointError(self.store.path, f"has a malformed DoRA magnitude for {module}")
        scaling = alpha / math.sqrt(r) if settings.use_rslora else alpha / r
        return LoraModule(
            module=module, a_key=a_key, b_key=b_key, scaling=scaling, rank=r, embedding=embedding,
            fan_in_fan_out=settings.fan_in_fan_out and not embedding, magnitude_key=magnitude,
        )

    def adopt_linear_modules(self, in_base) -> None:
        """target_parameters names parameters by their ends (`down_proj`), so a module like
        `q_proj` can look targeted by name alone; where the base has the module's weight and none of
        those parameters, its LoRA is an ordinary module's."""
        for module, by_depth in list(self.parameter_modules.items()):
            params = targeted(module, self.settings.target_parameters)
            if list(by_depth) == [0] and in_base(f"{module}.weight") \
                    and not any(in_base(f"{module}.{p}") for p in params if p != "weight"):
                self.modules[f"{module}.weight"] = self._lora_module(module, by_depth[0])
                del self.parameter_modules[module]

    def parameter_rank(self, parameter: str) -> int:
        settings = self.settings
        return _pattern_value(settings.rank_pattern, parameter, settings.r, self.config_file, "rank_pattern")

    def parameter_scaling(self, parameter: str) -> float:
        settings, file = self.settings, self.config_file
        r = self.parameter_rank(parameter)
        alpha = _pattern_value(settings.alpha_pattern, parameter, settings.alpha, file, "alpha_pattern")
        return alpha / math.sqrt(r) if settings.use_rslora else alpha / r

    def check_fits(self, module: LoraModule, base_shape: tuple[int, ...]) -> None:
        """Refuse an adapter made for another base before any tensor is read."""
        out_dim, in_dim = _out_in(base_shape, module)
        b_shape, a_shape = self.store.shape(module.b_key), self.store.shape(module.a_key)
        if len(base_shape) != 2 or b_shape[0] != out_dim or a_shape[-1] != in_dim:
            raise CheckpointError(
                self.store.path,
                f"LoRA factors for {module.module} (B {_fmt(b_shape)}, A {_fmt(a_shape)}) do not fit "
                f"the base weight {_fmt(base_shape)}; the adapter was made for another base model",
            )

    def factors(self, module: LoraModule) -> tuple[torch.Tensor, torch.Tensor]:
        """(scaling·B, A) in float32, so that ΔW in (out, in) orientation is their product."""
        b = self.store.load(module.b_key).float()
        a = self.store.load(module.a_key).float()
        return module.scaling * b, a

    def merge(self, module: LoraModule, w0: torch.Tensor) -> torch.Tensor:
        """The tuned weight in the base's stored orientation, as PEFT's merge computes it."""
        import torch

        b, a = self.factors(module)
        transposed = module.embedding or module.fan_in_fan_out
        w = plus_low_rank(w0.T if transposed else w0, b, a)
        if module.magnitude_key is not None:
            magnitude = self.store.load(module.magnitude_key).float().reshape(-1, 1)
            w = w * (magnitude / torch.linalg.norm(w, dim=1, keepdim=True))
        return w.T if transposed else w


def _out_in(base_shape: tuple[int, ...], module: LoraModule) -> tuple[int, int]:
    if len(base_shape) != 2:
        return -1, -1
    rows, cols = base_shape
    return (cols, rows) if module.embedding or module.fan_in_fan_out else (rows, cols)


PATTERN_TIMEOUT_S = 0.1  # a pattern key is untrusted: matching it must not hang the scan


def _pattern_value(patterns: dict, module: str, default, file: Path, field: str):
    """PEFT's `get_pattern_key`: the first key that matches the end of the module path wins. Keys
    are matched with a time bound, so a catastrophically backtracking key is refused, not run."""
    import regex

    for key, value in patterns.items():
        try:
            if regex.match(rf"(.*\.)?({key})$", module, timeout=PATTERN_TIMEOUT_S):
                return value
        except regex.error as err:
            raise CheckpointError(file, f"{field} key {key!r} is not a valid pattern ({err})") from None
        except TimeoutError:
            raise CheckpointError(file, f"{field} key {key!r} takes too long to match; refusing it") from None
    return default


@dataclass(frozen=True)
class LoraSettings:
    """The values of adapter_config.json that the merge uses, each checked before use."""

    r: int
    alpha: float
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    use_rslora: bool
    fan_in_fan_out: bool
    use_dora: bool
    init: str  # init_lora_weights, lower case ("true", "pissa", …)
    base: str | None
    target_parameters: tuple[str, ...] = ()  # parameters wrapped whole (3-D experts), not modules

    @classmethod
    def of(cls, config: dict, file: Path) -> LoraSettings:
        peft_type = config.get("peft_type", "LORA")
        if not isinstance(peft_type, str) or peft_type.upper() != "LORA":
            raise CheckpointError(file, f"is a {peft_type} adapter; only LoRA adapters are supported")
        r = integer(config.get("r", 8), file, "r", minimum=1, error=CheckpointError)
        alpha = number(config.get("lora_alpha", r), file, "lora_alpha", error=CheckpointError)
        ranks = _patterns(config, "rank_pattern", file, lambda v, f: integer(v, file, f, 1, CheckpointError))
        alphas = _patterns(config, "alpha_pattern", file, lambda v, f: number(v, file, f, CheckpointError))
        flags = {name: boolean(config.get(name) or False, file, name, CheckpointError)
                 for name in ("use_rslora", "fan_in_fan_out", "use_dora")}
        init = config.get("init_lora_weights", True)
        if not isinstance(init, bool | str):
            raise CheckpointError(file, f"init_lora_weights must be true, false or a method name, not {init!r}")
        base = config.get("base_model_name_or_path")
        base = None if base in (None, "") else text(base, file, "base_model_name_or_path", CheckpointError)
        targets = config.get("target_parameters") or []
        if not isinstance(targets, list):
            raise CheckpointError(file, "target_parameters must be a list of parameter names")
        targets = tuple(text(t, file, "a target_parameters entry", CheckpointError) for t in targets)
        return cls(r=r, alpha=alpha, rank_pattern=ranks, alpha_pattern=alphas, init=str(init).lower(), base=base,
                   target_parameters=targets, **flags)


def _patterns(config: dict, field: str, file: Path, check) -> dict:
    patterns = config.get(field) or {}
    if not isinstance(patterns, dict):
        raise CheckpointError(file, f"{field} must be a table of module patterns")
    return {text(key, file, f"a {field} key", CheckpointError): check(value, f"{field}[{key!r}]")
            for key, value in patterns.items()}


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


class AdaptedModel:
    """The tuned weights a LoRA adapter stands for: base tensors, merged on read."""

    def __init__(self, base: TensorStore, adapter: LoraAdapter):
        self.base = base
        self.adapter = adapter
        self.path = adapter.path
        by_norm = {normalise(n): n for n in base.names()}
        self._modules: dict[str, LoraModule] = {}
        self._replaced: dict[str, str] = {}
        adapter.adopt_linear_modules(lambda name: normalise(name) in by_norm)
        for weight_name, module in adapter.modules.items():
            base_name = by_norm.get(normalise(weight_name))
            if base_name is None:
                raise CheckpointError(
                    adapter.store.path,
                    f"adapts {module.module}, which the base {base.path} does not have; "
                    "the adapter was made for another base model",
                )
            adapter.check_fits(module, base.shape(base_name))
            self._modules[base_name] = module
        for weight_name, key in adapter.replacements.items():
            base_name = by_norm.get(normalise(weight_name), weight_name)
            self._replaced[base_name] = key
        self._params = ParamLoraSet(adapter.store, adapter.store.path)  # target_parameters: experts
        for module, by_depth in adapter.parameter_modules.items():
            params = targeted(module, adapter.settings.target_parameters)
            self._params.resolve(module, by_depth, params, base, adapter.parameter_rank, adapter.parameter_scaling)

    @property
    def label(self) -> str:
        return self.path.name

    @property
    def config(self) -> dict:
        return self.base.config

    @property
    def description(self) -> str:
        settings = self.adapter.settings
        kind = "DoRA" if settings.use_dora else "rsLoRA" if settings.use_rslora else "LoRA"
        return f"{kind} r={settings.r} α={settings.alpha:g}"

    is_adapter = True

    @property
    def is_classifier(self) -> bool:
        return self.adapter.config.get("task_type") == "SEQ_CLS"

    @property
    def layout(self) -> TensorStore:
        return self.base

    def warnings(self) -> list[str]:
        return self.adapter.warnings()

    def refittable(self) -> LoraAdapter | None:
        """The adapter, unless it wraps parameters whole (experts): those are written merged."""
        return None if self._params else self.adapter

    def experts(self) -> ExpertIndex:
        return self.base.experts()

    def unreadable(self, name: str) -> str | None:
        return None if name in self._replaced else self.base.unreadable(name)

    def names(self) -> list[str]:
        extra = [n for n in self._replaced if n not in self.base]
        return self.base.names() + extra

    def __contains__(self, name: str) -> bool:
        return name in self.base or name in self._replaced

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self._replaced:
            return self.adapter.store.shape(self._replaced[name])
        return self.base.shape(name)

    def changes(self, name: str) -> bool:
        params = self._params
        return (name in self._modules or name in self._replaced or name in params.parts or name in params.params
                or name in params.two_d)

    def load(self, name: str) -> torch.Tensor:
        """A saved replacement stands in for the base weight; LoRA, if any, applies on top (as PEFT loads).
        An expert's matrix (out, in) gets its expert's ΔW; a parameter wrapped whole, every expert's."""
        params = self._params
        if name in params.parts:
            b, a = params.factors(name)
            return plus_low_rank(self.base.load(name), b, a)
        if name in params.params or name in params.two_d:
            return params.merged_parameter(name, self.base.load(name))
        replaced = name in self._replaced
        w = self.adapter.store.load(self._replaced[name]) if replaced else self.base.load(name)
        return self.adapter.merge(self._modules[name], w) if name in self._modules else w

    def delta_factors(self, spec: MatrixSpec) -> tuple[torch.Tensor, torch.Tensor] | None:
        """ΔW = B @ A in scan orientation for plain LoRA (not DoRA), so its spectrum costs O(r²)."""
        if spec.name in self._params.parts:
            return self._params.factors(spec.name)
        if spec.name in self._params.two_d and not spec.transposed:
            lora = self._params.two_d[spec.name]
            a, b = self.adapter.store.load(lora.a_key).float(), self.adapter.store.load(lora.b_key).float()
            return lora.scaling * b, a
        module = self._modules.get(spec.name)
        if module is None or module.magnitude_key is not None or spec.name in self._replaced:
            return None
        b, a = self.adapter.factors(module)
        # The scan orientation is (out, in) for linear layers and stored for embeddings.
        return (a.T, b.T) if module.embedding else (b, a)
