"""Any other PEFT kind that changes weights, through PEFT's own layer code, one module at a time.

A skeleton of the base — every 2-D weight as a linear, embedding or GPT-2 Conv1D module by its role,
on the meta device, in the order the base's model class defines them — gets PEFT's tuner layers
injected once, from the adapter's own config: PEFT decides which modules it adapts, numbers them,
and draws any shared state, as it does when it loads the adapter. The tensors PEFT's layers would
save are checked against the adapter's headers. A module's tuned weight is then its base weight put
in place, its saved tensors (and any adapter-wide ones) loaded with `set_peft_model_state_dict`, and
the layer's own `merge()`. A module PEFT cannot build here is skipped with PEFT's reason; an adapter
whose first module cannot be merged from the saved tensors alone is refused.
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from spectui.checkpoint.adapters import ADAPTER_CONFIG, PEFT_PREFIX
from spectui.checkpoint.files import CheckpointError, TensorStore
from spectui.checkpoint.names import normalise
from spectui.checkpoint.pairing import CONV1D_MODEL_TYPES, _role
from spectui.checkpoint.tuners.base import _SAVED_COPY, Module, Plan, TunerAdapter, fmt
from spectui.errors import one_line
from spectui.validate import is_int

ADAPTER_NAME = "default"


@dataclass(frozen=True, eq=False, kw_only=True)
class GeneralPlan(Plan):
    layer: str  # linear | embedding | conv1d: the module the skeleton holds


class GeneralAdapter(TunerAdapter):
    """A PEFT kind spectui does not special-case, merged by PEFT itself."""

    def __init__(self, path: Path, config: dict, peft_type: str):
        self.peft_type = peft_type
        self.kind = peft_type
        self._lock = threading.Lock()
        self._model = None
        self._layers: dict[str, object] = {}
        self._refused: dict[str, str] = {}
        self._order_known = True
        super().__init__(path, config)

    def read_config(self) -> None:
        """PEFT's own config class, built the way `PeftConfig.from_pretrained` builds it."""
        try:
            with _quiet():
                from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

                config_cls = PEFT_TYPE_TO_CONFIG_MAPPING.get(self.peft_type)
                if config_cls is None:
                    from peft import __version__

                    raise CheckpointError(self.config_file, f"is a {self.peft_type} adapter, a kind PEFT "
                                                            f"{__version__} does not know")
                config = config_cls.from_peft_type(**config_cls.check_kwargs(**self.config))
        except CheckpointError:
            raise
        except ImportError as err:
            raise CheckpointError(self.config_file, f"is a {self.peft_type} adapter; reading it needs the peft "
                                                    f"package ({one_line(err)})") from err
        except Exception as err:  # PEFT's own checks of an untrusted config, whatever they raise
            raise CheckpointError(self.config_file, f"is a {self.peft_type} adapter PEFT cannot read "
                                                    f"({one_line(err)})") from err
        config.inference_mode = True
        for aside in ("modules_to_save", "trainable_token_indices"):  # read here as replacement weights
            if hasattr(config, aside):
                setattr(config, aside, None)
        self.peft_config = config

    @property
    def description(self) -> str:
        r = self.config.get("r")
        return f"{self.peft_type}{f' r={r}' if is_int(r) else ''} (PEFT's merge)"

    def warnings(self) -> list[str]:
        if self._order_known or len(self.modules) < 2:
            return super().warnings()
        return [*super().warnings(), f"{self.config_file}: the base's model class could not be built to learn its "
                "module order, so PEFT numbers the adapted layers in name order; kinds that seed or group layers "
                "by that number may be rebuilt wrongly"]

    def _index_keys(self) -> None:
        """Deferred to `module_index`: which tensors belong to which module depends on the base."""

    def module_index(self, base: TensorStore) -> dict[str, Module]:
        """The modules PEFT adapts on this base (found by injecting its layers into the skeleton),
        and any module the adapter has tensors for, each with its saved tensors."""
        if self._model is not None:
            return self.modules
        self._base = base
        self._conv1d = str(base.config.get("model_type", "")) in CONV1D_MODEL_TYPES
        self._vocab = base.config.get("vocab_size")
        self._assign_keys(base)
        to_peft = self._peft_path(base)
        order = _model_order(base.config)
        self._order_known = order is not None
        skeleton = [(to_peft(n.removesuffix(".weight")), n, base.shape(n)) for n in base.names()
                    if n.endswith(".weight") and len(base.shape(n)) == 2]
        skeleton.sort(key=lambda m: (order.get(normalise(m[0]), len(order)),) if order else _natural(m[0]))
        self._skeleton = {path: (name, shape) for path, name, shape in skeleton}
        self._build([path for path, _, _ in skeleton])
        for path in self._layers:
            self.modules.setdefault(path, Module(path, {}))
        if not self.modules:
            raise CheckpointError(self.store.path, f"holds no tensor that adapts a weight of the base {base.path}; "
                                                   f"a {self.peft_type} adapter that changes no weight matrix has "
                                                   "nothing to compare")
        return self.modules

    def _assign_keys(self, base: TensorStore) -> None:
        """Each saved tensor to the longest module path the base has a weight for; the rest are
        adapter-wide (a vector bank, shared projections)."""
        weights = {normalise(n.removesuffix(".weight")) for n in base.names() if n.endswith(".weight")}
        for key in self.store.names():
            name = key.removeprefix(PEFT_PREFIX)
            if not key.startswith(PEFT_PREFIX):
                self.shared[key] = key
                continue
            if ".modules_to_save." in name:
                if name.endswith((".weight", ".bias")):
                    self.replacements[_SAVED_COPY.sub(".", name)] = key
                continue
            parts = name.split(".")
            for cut in range(len(parts) - 1, 0, -1):
                path, rest = ".".join(parts[:cut]), ".".join(parts[cut:])
                if normalise(path) in weights:
                    if rest in ("weight", "base_layer.weight", "bias", "base_layer.bias"):  # saved whole, trained
                        self.replacements[f"{path}.{rest.removeprefix('base_layer.')}"] = key
                    else:
                        self.modules.setdefault(path, Module(path, {})).keys[rest] = key
                    break
            else:
                self.shared[key] = key

    def _peft_path(self, base: TensorStore):
        """Base weight name (without .weight) → the module path PEFT used, which may carry another
        model class's prefix (a bare model's `layers.0…` saved, `model.layers.0…` adapted)."""
        by_norm = {normalise(n.removesuffix(".weight")): n.removesuffix(".weight") for n in base.names()}
        for path in self.modules:
            name = by_norm.get(normalise(path))
            if name is not None and name != path:
                if path.endswith(f".{name}"):
                    prefix = path.removesuffix(name)
                    return lambda n: prefix + n
                if name.endswith(f".{path}"):
                    extra = name.removesuffix(path)
                    return lambda n: n.removeprefix(extra)
            if name is not None:
                break
        return lambda n: n

    def _build(self, paths: list[str]) -> None:
        """PEFT's layers injected into the skeleton. When that fails, the modules the config targets
        are tried one by one: those whose layer PEFT cannot build are set aside with its reason; when
        none can be built, the adapter is refused."""
        from peft.tuners.tuners_utils import check_target_module_exists

        self._refused: dict[str, str] = {}
        try:
            self._inject(paths)
            return
        except Exception as err:
            failure = one_line(err)
        try:
            targeted = [p for p in paths if check_target_module_exists(self.peft_config, p)]
        except Exception:
            targeted = []
        for path in targeted:
            try:
                self._inject([path])
            except Exception as err:
                self._refused[path] = one_line(err)
        if len(self._refused) == len(targeted):
            reason = self._refused[targeted[0]] if targeted else failure
            raise CheckpointError(self.config_file, f"is a {self.peft_type} adapter whose layers PEFT cannot "
                                                    f"build here ({reason})")
        try:
            self._inject([p for p in paths if p not in self._refused])
        except Exception as err:
            raise CheckpointError(self.config_file, f"is a {self.peft_type} adapter whose layers PEFT cannot "
                                                    f"build here ({one_line(err)})") from err
        for path in self._refused:  # each says why it is not rebuilt
            self.modules.setdefault(path, Module(path, {}))

    def plan(self, module: Module, base_name: str, shape: tuple[int, ...]) -> GeneralPlan:
        path = module.path
        reason = None
        if len(shape) != 2:
            reason = f"the general path rebuilds 2-D weights only, not {len(shape)}-D ones"
        elif path in self._refused:
            reason = f"PEFT cannot build its {self.peft_type} layer here ({self._refused[path]})"
        elif path not in self._layers:
            reason = f"PEFT's {self.peft_type} config does not target it"
        layer = self._kind_of(base_name, shape) if len(shape) == 2 else ""
        return GeneralPlan(module=module, base_name=base_name, shape=shape, layer=layer,
                           fan_in_fan_out=layer == "conv1d", unsupported=reason)

    def _kind_of(self, base_name: str, shape: tuple[int, ...]) -> str:
        role = _role(base_name, shape, self._vocab)
        return "embedding" if role == "embedding" else "conv1d" if self._conv1d and role == "linear" else "linear"

    def prepare(self, plans: list[Plan]) -> list[Plan]:
        """The saved tensors checked against what PEFT's layers save, and a trial merge of the first
        module: an adapter whose modules cannot be merged from what it saved is refused."""
        self._check_saved([p for p in plans if not p.unsupported])
        trial = next((p for p in plans if not p.unsupported), None)
        if trial is not None:
            try:
                self.merge(trial, self._base.load(trial.base_name).float())
            except CheckpointError as err:
                raise CheckpointError(self.store.path, f"is a {self.peft_type} adapter PEFT's layers cannot rebuild "
                                                       f"from the adapter alone ({err.problem})") from err
        return plans

    def _check_saved(self, plans: list[Plan]) -> None:
        """Every tensor PEFT's layers would save is in the adapter, with the shape they give it
        (read from the headers: a wrong rank or a missing tensor is refused before any scan)."""
        from peft import get_peft_model_state_dict

        if self._model is None:
            return
        try:
            with _quiet():
                wanted = get_peft_model_state_dict(self._model, adapter_name=ADAPTER_NAME)
        except Exception:  # a kind whose saving needs trained values: the merge checks what it loads
            return
        paths = [f"{PEFT_PREFIX}{p.module.path}." for p in plans]
        for key, tensor in wanted.items():
            elsewhere = key.startswith(PEFT_PREFIX) and not any(key.startswith(path) for path in paths)
            if elsewhere and any(key.startswith(f"{PEFT_PREFIX}{p}.") for p in self.modules):
                continue  # a module set aside with its reason
            if key not in self.store:
                raise CheckpointError(self.store.path, f"lacks {key}, which PEFT's {self.peft_type} layers save")
            if tuple(self.store.shape(key)) != tuple(tensor.shape):
                raise CheckpointError(self.store.path, f"has {key} of shape {fmt(self.store.shape(key))}, but "
                                                       f"PEFT's {self.peft_type} layer built from {ADAPTER_CONFIG} "
                                                       f"gives it {fmt(tensor.shape)}; the adapter was made for "
                                                       "another base model or config")

    def _inject(self, paths: list[str]) -> None:
        """PEFT's layers around the skeleton's meta modules (nothing of the base is read); then every
        adapter tensor of theirs made real and NaN, so that loading fills them in place, shared ones
        included, and one left unloaded shows."""
        import torch
        from peft import get_peft_model
        from peft.tuners.tuners_utils import BaseTunerLayer

        self._model, self._layers = None, {}
        skeleton = torch.nn.Module()
        with torch.device("meta"):
            for path in paths:
                name, shape = self._skeleton[path]
                _place(skeleton, path, _layer(self._kind_of(name, shape), shape))
        with _quiet():
            model = get_peft_model(skeleton, copy.deepcopy(self.peft_config), adapter_name=ADAPTER_NAME,
                                   low_cpu_mem_usage=True)
        layers = {}
        for path in paths:
            layer = model.base_model.model.get_submodule(path)
            if isinstance(layer, BaseTunerLayer):
                layers[path] = layer
        _materialize(model, skip={id(m) for layer in layers.values() for m in layer.get_base_layer().modules()})
        self._model, self._layers = model, layers

    def merge(self, plan: Plan, w0: torch.Tensor) -> torch.Tensor:
        with self._lock:
            try:
                return self._merge(plan, w0)
            except CheckpointError:
                raise
            except Exception as err:
                raise CheckpointError(self.store.path, f"PEFT's {self.peft_type} layer could not merge "
                                                       f"{plan.module.path} ({one_line(err)})") from err

    def _merge(self, plan: Plan, w0: torch.Tensor) -> torch.Tensor:
        import torch
        from peft import set_peft_model_state_dict

        layer = self._layers[plan.module.path]
        base_layer = layer.get_base_layer()
        state = {key: self.store.load(key) for key in [*plan.module.keys.values(), *self.shared.values()]}
        base_layer.weight = torch.nn.Parameter(w0.float().contiguous(), requires_grad=False)
        try:
            with _quiet():
                loaded = set_peft_model_state_dict(self._model, state, adapter_name=ADAPTER_NAME)
            if loaded.unexpected_keys:
                raise CheckpointError(self.store.path, f"holds {loaded.unexpected_keys[0]}, which PEFT's "
                                                       f"{self.peft_type} layer for {plan.module.path} does not have")
            unset = [n for n, t in [*layer.named_parameters(), *layer.named_buffers()]
                     if not n.startswith("base_layer.") and (t.is_meta or _unwritten(t))]
            if unset:
                raise CheckpointError(self.store.path, f"lacks {unset[0]} for {plan.module.path}, which PEFT's "
                                                       f"{self.peft_type} layer needs")
            with _quiet():
                layer.merge(adapter_names=[ADAPTER_NAME])
            return base_layer.weight.detach().clone()
        finally:
            layer.merged_adapters.clear()
            base_layer.weight = torch.nn.Parameter(torch.empty(w0.shape, device="meta"), requires_grad=False)


def _model_order(config: dict) -> dict[str, int] | None:
    """Module paths (normalised) in the order the base's model class defines them, as PEFT walks
    them (kinds that number their layers depend on it): the class built from config.json on the
    meta device. None when that cannot be done."""
    try:
        import torch
        import transformers

        with _quiet():
            model_config = transformers.AutoConfig.for_model(**config)
            model_class = getattr(transformers, model_config.architectures[0])
            with torch.device("meta"):
                model = model_class(model_config)
    except Exception:  # an unknown or custom architecture, or a config transformers refuses
        return None
    return {normalise(name): i for i, (name, _) in enumerate(model.named_modules())}


def _natural(path: str) -> tuple:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.split("."))


def _materialize(model: torch.nn.Module, skip: set[int]) -> None:
    """Every meta parameter and buffer outside the base layers made a real NaN-filled tensor (so an
    unloaded one shows), one per original, so that modules sharing one still share it."""
    import torch

    made: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(meta) → (meta, real): keeps ids unique
    for module in model.modules():
        if id(module) in skip:
            continue
        for table in (module._parameters, module._buffers):
            for name, tensor in list(table.items()):
                if tensor is None or not tensor.is_meta:
                    continue
                if id(tensor) not in made:
                    real = torch.full(tensor.shape, math.nan if tensor.is_floating_point() else 0, dtype=tensor.dtype)
                    if isinstance(tensor, torch.nn.Parameter):
                        real = torch.nn.Parameter(real, requires_grad=False)
                    made[id(tensor)] = (tensor, real)
                table[name] = made[id(tensor)][1]


def _unwritten(tensor: torch.Tensor) -> bool:
    import torch

    return tensor.is_floating_point() and tensor.numel() > 0 and bool(torch.isnan(tensor).all())


def _layer(kind: str, shape: tuple[int, ...]) -> torch.nn.Module:
    import torch

    rows, cols = shape
    if kind == "embedding":
        return torch.nn.Embedding(rows, cols)
    if kind == "conv1d":
        from transformers.pytorch_utils import Conv1D

        return Conv1D(cols, rows)  # weight stored (in, out) = (rows, cols)
    return torch.nn.Linear(cols, rows, bias=False)


def _place(root: torch.nn.Module, path: str, module: torch.nn.Module) -> None:
    import torch

    *parents, name = path.split(".")
    for part in parents:
        if not hasattr(root, part):
            root.add_module(part, torch.nn.Module())
        root = getattr(root, part)
    root.add_module(name, module)


@contextlib.contextmanager
def _quiet():
    """PEFT warns freely (about configs, missing CUDA kernels); what matters reaches the user otherwise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
