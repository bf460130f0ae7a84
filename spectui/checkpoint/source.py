"""What every kind of tuned model offers the layers above: a full checkpoint and every adapter
kind implement `WeightSource`, so nothing outside `checkpoint/` asks which kind it has."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from spectui.checkpoint.adapters import LoraAdapter
    from spectui.checkpoint.experts import ExpertIndex
    from spectui.checkpoint.files import TensorStore
    from spectui.checkpoint.names import MatrixSpec


class WeightSource(Protocol):
    """Name → tensor of a model's weights, as they would be after loading (adapters merged)."""

    path: Path

    @property
    def label(self) -> str:
        """A short name for lists and legends."""

    @property
    def description(self) -> str:
        """What kind of fine-tune it is, e.g. "full checkpoint" or "LoRA r=8 α=16"."""

    @property
    def config(self) -> dict:
        """The model's config.json (a base's, for an adapter)."""

    @property
    def is_adapter(self) -> bool:
        """Whether the weights are a base plus an adapter (so a merged form can be written)."""

    @property
    def is_classifier(self) -> bool:
        """Whether the model carries a sequence-classification head."""

    @property
    def layout(self) -> TensorStore:
        """The checkpoint files a merged or mitigated model is written like: its own, or the base's."""

    def warnings(self) -> list[str]:
        """What the user should know before trusting its comparison with the base."""

    def names(self) -> list[str]: ...

    def __contains__(self, name: str) -> bool: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def load(self, name: str) -> torch.Tensor: ...

    def changes(self, name: str) -> bool:
        """Whether the tensor may differ from the layout's (always, for a full checkpoint's own)."""

    def experts(self) -> ExpertIndex:
        """The expert matrices inside 3-D expert tensors, by the names they are scanned under:
        `shape`, `load` and `changes` take those names too (matrices in (out, in) orientation)."""

    def unreadable(self, name: str) -> str | None:
        """Why a tensor cannot be read as a float weight (a quantization state, an int tensor, a
        quantized weight that cannot be read back), or None."""

    def delta_factors(self, spec: MatrixSpec) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(B, A) with ΔW = B @ A in scan orientation, when the kind stores ΔW as low-rank factors."""

    def refittable(self) -> LoraAdapter | None:
        """The LoRA adapter whose factors a mitigation may re-fit to rank r, or None (full
        checkpoints, and kinds whose ΔW is not B·A: mitigation writes them merged)."""
