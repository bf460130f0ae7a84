"""LoRA adapters in formats other than PEFT's (llama.cpp's GGUF, torchtune's), read as the tuned
weights they stand for: base tensors merged on read, ΔW = scaling · B @ A kept as factors.

A format module finds each adapted weight, its factors and its scaling, and hands them over as
`LowRankDelta`s; `LowRankModel` pairs them with the base and is the WeightSource.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from spectui.checkpoint.delta import plus_low_rank
from spectui.checkpoint.files import CheckpointError
from spectui.checkpoint.names import MatrixSpec, normalise

if TYPE_CHECKING:
    import torch

    from spectui.checkpoint.experts import ExpertIndex
    from spectui.checkpoint.files import TensorStore


@dataclass(frozen=True)
class LowRankDelta:
    """One adapted weight: ΔW = scaling · B @ A, in the orientation the base stores it."""

    module: str  # as the adapter names it, for messages
    b_shape: tuple[int, int]
    a_shape: tuple[int, int]
    scaling: float
    factors: Callable[[], tuple[torch.Tensor, torch.Tensor]]  # (B, A), float32, unscaled

    @property
    def rank(self) -> int:
        return self.a_shape[0]

    def scaled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scaling·B, A) in float32."""
        b, a = self.factors()
        return self.scaling * b.float(), a.float()


class LowRankModel:
    """A base checkpoint with low-rank deltas added on read (a WeightSource)."""

    is_adapter = True
    is_classifier = False
    quantized = False  # the factors' own rounding is part of the adapter, not noise added to it

    def __init__(self, base: TensorStore, path: Path, deltas: dict[str, LowRankDelta], description: str,
                 warnings: list[str] | None = None):
        self.base = base
        self.path = path
        self.description = description
        self._warnings = list(warnings or [])
        by_norm = {normalise(n): n for n in base.names()}
        self.deltas: dict[str, LowRankDelta] = {}
        for weight_name, delta in deltas.items():
            base_name = by_norm.get(normalise(weight_name))
            if base_name is None:
                raise CheckpointError(path, f"adapts {delta.module}, which the base {base.path} does not have; "
                                            "the adapter was made for another base model")
            shape = tuple(base.shape(base_name))
            (out_dim, b_rank), (a_rank, in_dim) = delta.b_shape, delta.a_shape
            if len(shape) != 2 or b_rank != a_rank or shape != (out_dim, in_dim):
                raise CheckpointError(path, f"LoRA factors for {delta.module} (B {_fmt(delta.b_shape)}, "
                                            f"A {_fmt(delta.a_shape)}) do not fit the base weight {_fmt(shape)}; "
                                            "the adapter was made for another base model")
            self.deltas[base_name] = delta

    @property
    def label(self) -> str:
        return self.path.name

    @property
    def config(self) -> dict:
        return self.base.config

    @property
    def layout(self) -> TensorStore:
        return self.base

    def warnings(self) -> list[str]:
        return list(self._warnings)

    def refittable(self) -> None:
        return None  # mitigation writes these merged into the base's files

    def names(self) -> list[str]:
        return self.base.names()

    def __contains__(self, name: str) -> bool:
        return name in self.base

    def shape(self, name: str) -> tuple[int, ...]:
        return self.base.shape(name)

    def changes(self, name: str) -> bool:
        return name in self.deltas

    def experts(self) -> ExpertIndex:
        return self.base.experts()

    def unreadable(self, name: str) -> str | None:
        return self.base.unreadable(name)

    def load(self, name: str) -> torch.Tensor:
        w = self.base.load(name)
        if name not in self.deltas:
            return w
        b, a = self.deltas[name].scaled()
        return plus_low_rank(w, b, a)

    def delta_factors(self, spec: MatrixSpec) -> tuple[torch.Tensor, torch.Tensor] | None:
        delta = self.deltas.get(spec.name)
        if delta is None:
            return None
        b, a = delta.scaled()
        return (a.T, b.T) if spec.transposed else (b, a)


def _fmt(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"
