"""LoRA on parameters rather than modules: PEFT's `LoraConfig(target_parameters=[…])`, which wraps
3-D expert parameters (`mlp.experts.gate_up_proj`) in a `lora.ParamWrapper`.

As PEFT 0.17+ stores and merges them (peft/tuners/lora/layer.py, ParamWrapper): for a parameter
(E, d1, d2), `lora_A.weight` is (r·E, in) and `lora_B.weight` (out, r·E); expert e's factors are
A_e = A[e·r:(e+1)·r] and B_e = B[:, e::E] (A is expert-major, B rank-major). PEFT takes in = d1,
out = d2 when the experts class says `is_transposed` (gpt-oss: stored (E, in, out)) and swaps them
otherwise; the merge adds scaling · B_e @ A_e to expert e's slab when swapped, its transpose when
not. Several parameters of one module nest their wrappers, the one registered last outermost: its
keys carry no `base_layer.`, the one before it one, and so on.

An adapter made on transformers ≥ 5's fused experts also fits a base whose experts are stored one
2-D tensor each (Qwen-MoE's `mlp.experts.3.gate_proj.weight`, Mixtral's `w1`): each expert's ΔW
goes to its own tensor there.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from spectui.checkpoint.delta import plus_low_rank
from spectui.checkpoint.experts import PEFT_IN_OUT_MODEL_TYPES, ExpertPart, index_experts
from spectui.checkpoint.files import CheckpointError
from spectui.checkpoint.names import pair_key

if TYPE_CHECKING:
    import torch

    from spectui.checkpoint.files import TensorStore

# the order transformers registers an experts module's parameters in (PEFT nests wrappers in it)
_REGISTRATION = ("gate_up_proj", "gate_proj", "w1", "up_proj", "w3", "down_proj", "w2")


def strip_base_layers(module: str) -> tuple[str, int]:
    """A nested ParamWrapper's module path without its `.base_layer`s, and how many there were."""
    depth = 0
    while module.endswith(".base_layer"):
        module, depth = module.removesuffix(".base_layer"), depth + 1
    return module, depth


def targeted(module: str, targets: tuple[str, ...]) -> list[str]:
    """The parameter names of `module` that `target_parameters` can mean, as PEFT matches them
    (`module.param` equal to a target or ending in `.target`)."""
    found = []
    for target in targets:
        param = target.rpartition(".")[2]
        key = f"{module}.{param}"
        if (key == target or key.endswith(f".{target}")) and param not in found:
            found.append(param)
    return found


@dataclass(frozen=True)
class ParamLora:
    """LoRA on one parameter of (E, d1, d2) experts."""

    parameter: str  # as PEFT names it: <module>.<param>
    a_key: str
    b_key: str
    scaling: float
    rank: int  # per expert
    experts: int
    shape: tuple[int, int, int]  # (E, d1, d2) of the parameter as PEFT saw it
    swapped: bool  # PEFT's in/out swap: ΔW_e as stored = B_e @ A_e (else its transpose)


class ParamLoraSet:
    """Every parameter LoRA of one adapter, resolved against a base: expert matrix name → its ΔW."""

    CACHED_FACTORS = 8  # whole A / B tensors kept: experts of one parameter are scanned in a row

    def __init__(self, store: TensorStore, path: Path):
        self.store = store
        self.path = path
        self.params: dict[str, ParamLora] = {}  # base 3-D tensor (or the parameter's name) → its LoRA
        self.parts: dict[str, tuple[ParamLora, ExpertPart]] = {}  # scanned name → its LoRA and place
        self.two_d: dict[str, ParamLora] = {}  # 2-D parameters: base name → LoRA (ΔW = s·B @ A)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.params or self.two_d)

    def resolve(self, module: str, by_depth: dict[int, dict[str, str]], params: list[str], base,
                rank_of, scaling_of) -> None:
        """Assign each nesting depth its parameter and check it fits the base."""
        by_key = {pair_key(n): n for n in base.names()}
        present = [p for p in _registered(params) if self._base_form(f"{module}.{p}", base, by_key) is not None]
        depths = sorted(by_depth)
        if len(present) != len(depths) or depths != list(range(len(depths))):
            raise CheckpointError(self.path, f"has LoRA factors at {len(depths)} nesting depth(s) of {module}, "
                                             f"which has {len(present)} targeted parameter(s) in the base "
                                             f"({', '.join(present) or 'none'}); the adapter was made for another "
                                             "base model")
        problems = []
        for order in [present[::-1], *itertools.permutations(present[::-1])]:  # PEFT's nesting first
            try:
                resolved = [self._resolve_one(module, p, by_depth[d], base, by_key, rank_of, scaling_of)
                            for d, p in enumerate(order)]
                break
            except CheckpointError as err:
                problems.append(err)
        else:
            raise problems[0]
        for register in resolved:
            register()

    def _base_form(self, parameter: str, base, by_key) -> str | None:
        """'stored' when the base holds the parameter itself, 'per-expert' when it holds its experts
        one tensor each, else None."""
        if by_key.get(pair_key(parameter)) is not None:
            return "stored"
        prefix, _, param = parameter.rpartition(".")
        matrices = ("gate_proj", "up_proj") if param == "gate_up_proj" else (param,)
        if all(by_key.get(pair_key(f"{prefix}.0.{m}.weight")) for m in matrices):
            return "per-expert"
        return None

    def _resolve_one(self, module: str, param: str, keys: dict[str, str], base, by_key, rank_of, scaling_of):
        parameter = f"{module}.{param}"
        a_key, b_key = keys.get("lora_A"), keys.get("lora_B")
        if a_key is None or b_key is None or set(keys) - {"lora_A", "lora_B"}:
            raise CheckpointError(self.path, f"has LoRA parts {sorted(keys)} for parameter {parameter}; "
                                             "lora_A and lora_B expected")
        a_shape, b_shape = self.store.shape(a_key), self.store.shape(b_key)
        rank = rank_of(parameter)
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1] or a_shape[0] % rank:
            raise CheckpointError(self.path, f"LoRA factors for {parameter} (B {_fmt(b_shape)}, A {_fmt(a_shape)}) do "
                                             f"not have a multiple of the rank r={rank} the config gives")
        experts, a_in, b_out = a_shape[0] // rank, a_shape[1], b_shape[0]
        model_type = str(base.config.get("model_type", ""))
        stored = by_key.get(pair_key(parameter))
        if stored is not None:
            shape = tuple(base.shape(stored))
            if len(shape) == 2 and experts == 1 and (b_out, a_in) == shape:  # a 2-D parameter: as Linear
                lora = ParamLora(parameter, a_key, b_key, scaling_of(parameter), rank, 1, (1, *shape), True)
                return lambda: self.two_d.__setitem__(stored, lora)
            if len(shape) != 3 or shape[0] != experts:
                raise self._misfit(parameter, a_shape, b_shape, shape)
            fits_in_out, fits_swapped = (a_in, b_out) == shape[1:], (b_out, a_in) == shape[1:]
            if not (fits_in_out or fits_swapped):
                raise self._misfit(parameter, a_shape, b_shape, shape)
            swapped = fits_swapped and not (fits_in_out and model_type in PEFT_IN_OUT_MODEL_TYPES)
            lora = ParamLora(parameter, a_key, b_key, scaling_of(parameter), rank, experts, shape, swapped)
            parts = {name: base.experts().get(name) for name in base.experts().by_stored.get(stored, [])}
            if not parts:
                raise CheckpointError(self.path, f"adapts {parameter}, which the base stores as {_fmt(shape)} but "
                                                 f"spectui cannot split into experts: {base.unreadable(stored)}")

            def register():
                self.params[stored] = lora
                self.parts.update({name: (lora, part) for name, part in parts.items()})

            return register
        # the base holds each expert's matrices on their own: the parameter as transformers ≥ 5 fuses them
        swapped = model_type not in PEFT_IN_OUT_MODEL_TYPES
        shape = (experts, b_out, a_in) if swapped else (experts, a_in, b_out)
        lora = ParamLora(parameter, a_key, b_key, scaling_of(parameter), rank, experts, shape, swapped)
        index = index_experts([parameter], lambda _: shape, lambda _: "F32", base.config)
        if parameter in index.problems:
            raise CheckpointError(self.path, f"adapts {parameter}: {index.problems[parameter]}")
        found = {}
        for name, part in index.parts.items():
            base_name = by_key.get(pair_key(name))
            if base_name is None or tuple(base.shape(base_name)) != part.shape:
                got = "missing" if base_name is None else _fmt(base.shape(base_name))
                raise CheckpointError(self.path, f"LoRA factors for {parameter} (B {_fmt(b_shape)}, A {_fmt(a_shape)}) "
                                                 f"give expert {part.expert}'s {part.matrix} {_fmt(part.shape)}, "
                                                 f"which the base has {got}; the adapter was made for another base "
                                                 "model")
            found[base_name] = (lora, part)

        def register_per_expert():
            self.params[parameter] = lora
            self.parts.update(found)

        return register_per_expert

    def _misfit(self, parameter, a_shape, b_shape, shape) -> CheckpointError:
        return CheckpointError(self.path, f"LoRA factors for {parameter} (B {_fmt(b_shape)}, A {_fmt(a_shape)}) do "
                                          f"not fit the base parameter {_fmt(shape)}; the adapter was made for another "
                                          "base model")

    # -- ΔW ------------------------------------------------------------------------------------
    def _factor(self, key: str) -> torch.Tensor:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        tensor = self.store.load(key).float()
        with self._lock:
            self._cache[key] = tensor
            while len(self._cache) > self.CACHED_FACTORS:
                self._cache.popitem(last=False)
        return tensor

    def stored_factors(self, lora: ParamLora, expert: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, R) with expert `expert`'s ΔW in the parameter's stored orientation = scaling · L @ R."""
        a, b = self._factor(lora.a_key), self._factor(lora.b_key)
        a_e = a[expert * lora.rank:(expert + 1) * lora.rank]
        b_e = b[:, expert::lora.experts]
        return (b_e, a_e) if lora.swapped else (a_e.T, b_e.T)

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(scaling·B', A') with the expert matrix's ΔW, (out, in), = B' @ A'."""
        lora, part = self.parts[name]
        left, right = self.stored_factors(lora, part.expert)
        first, second = (right.T, left.T) if part.in_out else (left, right)
        return lora.scaling * first[part.rows].contiguous(), second.contiguous()

    def merged_parameter(self, name: str, w0: torch.Tensor) -> torch.Tensor:
        """The whole tuned parameter, as PEFT's merge computes it (a 3-D base tensor or a 2-D one)."""
        import torch

        lora = self.params.get(name) or self.two_d[name]
        a, b = self._factor(lora.a_key), self._factor(lora.b_key)
        if name in self.two_d:
            return plus_low_rank(w0, lora.scaling * b, a)
        a = a.reshape(lora.experts, lora.rank, -1)  # e r i
        b = b.reshape(b.shape[0], lora.rank, lora.experts)  # o r e
        delta = torch.einsum("ore,eri->eoi" if lora.swapped else "ore,eri->eio", b, a) * lora.scaling
        return w0.float() + delta


def _registered(params: list[str]) -> list[str]:
    rank = {name: i for i, name in enumerate(_REGISTRATION)}
    return sorted(params, key=lambda p: (rank.get(p, len(rank)), p))


def _fmt(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"

