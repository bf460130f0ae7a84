"""OFT (PEFT `tuners/oft/layer.py`, PEFT ≥ 0.14): a multiplicative update. Each module stores, per
block, the upper triangle of a skew-symmetric Q; R = Cayley(Q) (its Neumann series when
`use_cayley_neumann`, else (I − Q)(I + Q)⁻¹), projected first when `coft`, one block repeated when
`block_share`. The merge is PEFT's: W = (R · W0ᵀ)ᵀ for linear layers and W = W0 · R for embeddings,
with R block-diagonal over the input features, applied here block by block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from spectui.checkpoint.files import CheckpointError
from spectui.checkpoint.tuners.base import Module, Plan, TunerAdapter, fmt
from spectui.validate import integer, number


@dataclass(frozen=True, eq=False, kw_only=True)
class OftPlan(Plan):
    blocks: int  # r: blocks along the input features
    block_size: int
    embedding: bool


class OftAdapter(TunerAdapter):
    peft_type = "OFT"
    kind = "OFT"
    parts = ("oft_R", "oft_embedding_R")

    def read_config(self) -> None:
        file, config = self.config_file, self.config
        if "oft_block_size" not in config:
            raise CheckpointError(file, "has no oft_block_size: the adapter was saved by PEFT before 0.14, whose OFT "
                                        "differs from today's; retrain it or convert it with that PEFT")
        self.r = integer(config.get("r", 0), file, "r", minimum=0, error=CheckpointError)
        self.block_size = integer(config.get("oft_block_size"), file, "oft_block_size", minimum=0,
                                  error=CheckpointError)
        if (self.r == 0) == (self.block_size == 0):
            raise CheckpointError(file, f"must give exactly one of r ({self.r}) and oft_block_size "
                                        f"({self.block_size}) as non-zero")
        self.coft = self.flag("coft")
        self.eps = number(config.get("eps", 6e-5), file, "eps", error=CheckpointError)
        self.block_share = self.flag("block_share")
        self.neumann = self.flag("use_cayley_neumann", default=True)
        self.neumann_terms = integer(config.get("num_cayley_neumann_terms", 5), file, "num_cayley_neumann_terms",
                                     minimum=0, error=CheckpointError)
        if self.flag("fan_in_fan_out"):
            raise CheckpointError(file, "sets fan_in_fan_out: OFT on GPT-2 style Conv1D layers is not supported "
                                        "(PEFT's merge of them does not match their forward pass)")

    @property
    def description(self) -> str:
        size = f"r={self.r}" if self.r else f"block size {self.block_size}"
        variant = " COFT" if self.coft else ""
        return f"OFT{variant} {size}"

    def warnings(self) -> list[str]:
        notes = super().warnings()
        version = str(self.config.get("peft_version", "0.0.0")).partition("@")[0]
        if self.neumann and _older(version, (0, 18)):
            notes.append(f"{self.config_file}: saved by PEFT {version}; its Cayley–Neumann rotation changed in 0.18, "
                         "so the tuned weights shown are what today's PEFT would merge")
        return notes

    def plan(self, module: Module, base_name: str, shape: tuple[int, ...]) -> OftPlan:
        embedding = "oft_embedding_R" in module.keys
        part = "oft_embedding_R" if embedding else "oft_R"
        self.require(module, part)
        if len(shape) != 2:
            return OftPlan(module=module, base_name=base_name, shape=shape, blocks=0, block_size=0,
                           embedding=embedding, unsupported=f"OFT on a {len(shape)}-D weight is not supported")
        blocks, size = _resolve(shape[1], self.r, self.block_size)
        stored = self.part_shape(module, part)
        if stored != (1 if self.block_share else blocks, size * (size - 1) // 2):
            raise self.misfit(module, shape, f"{part} {fmt(stored)}, {blocks} blocks of {size}")
        return OftPlan(module=module, base_name=base_name, shape=shape, blocks=blocks, block_size=size,
                       embedding=embedding)

    def rotations(self, plan: OftPlan) -> torch.Tensor:
        """The blocks of R, (blocks, b, b): PEFT's `OFTRotationModule.get_weight` without the block_diag."""
        weight = self.tensor(plan, "oft_embedding_R" if plan.embedding else "oft_R")
        size = plan.block_size
        if self.coft:
            weight = _project_batch(weight, size, self.eps)
        rotate = _cayley_batch(weight, size, self.neumann, self.neumann_terms)
        return rotate.expand(plan.blocks, size, size) if rotate.shape[0] == 1 else rotate[: plan.blocks]

    def merge(self, plan: OftPlan, w0: torch.Tensor) -> torch.Tensor:
        import torch

        rotate = self.rotations(plan)
        rows = w0.shape[0]
        w = w0.reshape(rows, plan.blocks, plan.block_size)
        # embeddings: W0 · R; linear layers: (R · W0ᵀ)ᵀ = W0 · Rᵀ
        tuned = torch.einsum("ork,rkc->orc" if plan.embedding else "ork,rck->orc", w, rotate)
        return tuned.reshape(w0.shape)


def _resolve(in_features: int, r: int, block_size: int) -> tuple[int, int]:
    """(r, block size) as PEFT's OFT `update_layer` settles them for a layer's input size."""
    if r == 0:
        if in_features % block_size != 0 or block_size > in_features:
            block_size = adjust_oft_parameters(in_features, block_size)
        return in_features // block_size, block_size
    if in_features % r != 0 or r > in_features:
        r = adjust_oft_parameters(in_features, r)
    return r, in_features // r


def adjust_oft_parameters(in_features: int, params: int) -> int:
    """PEFT's `OFTLayer.adjust_oft_parameters`: the nearest divisor of in_features."""
    if params < in_features:
        higher = params
        while higher <= in_features and in_features % higher != 0:
            higher += 1
    else:
        return in_features
    lower = params
    while lower > 1 and in_features % lower != 0:
        lower -= 1
    return lower if (params - lower) <= (higher - params) else higher


def _skew(vec: torch.Tensor, size: int) -> torch.Tensor:
    import torch

    rows, cols = torch.triu_indices(size, size, 1)
    matrix = torch.zeros(vec.shape[0], size, size, dtype=vec.dtype)
    matrix[:, rows, cols] = vec
    return matrix - matrix.transpose(-2, -1)


def _cayley_batch(q: torch.Tensor, size: int, neumann: bool, terms: int) -> torch.Tensor:
    """PEFT's `OFTRotationModule._cayley_batch`."""
    import torch

    b = q.shape[0]
    q_skew = _skew(q, size)
    if neumann:
        r = torch.eye(size, dtype=q.dtype).repeat(b, 1, 1)
        if terms > 1:
            r.add_(q_skew, alpha=2.0)
            if terms > 2:
                q_squared = torch.bmm(q_skew, q_skew)
                r.add_(q_squared, alpha=2.0)
                q_power = q_squared
                for _ in range(3, terms - 1):
                    q_power = torch.bmm(q_power, q_skew)
                    r.add_(q_power, alpha=2.0)
                q_power = torch.bmm(q_power, q_skew)
                r.add_(q_power)
        return r
    identity = torch.eye(size).unsqueeze(0).expand(b, size, size)
    return torch.linalg.solve(identity + q_skew, identity - q_skew, left=False).to(q.dtype)


def _project_batch(q: torch.Tensor, size: int, eps: float) -> torch.Tensor:
    """PEFT's `OFTRotationModule._project_batch` (COFT): each block's Q kept within eps/√blocks of 0."""
    import torch

    rows, cols = torch.triu_indices(size, size, 1)
    oft_r = _skew(q, size)
    eps = eps * 1 / torch.sqrt(torch.tensor(oft_r.shape[0]))
    zero = torch.zeros((size, size), dtype=oft_r.dtype).unsqueeze(0).expand_as(oft_r)
    diff = oft_r - zero
    norm_diff = torch.norm(oft_r - zero, dim=(1, 2), keepdim=True)
    out = torch.where((norm_diff <= eps).bool(), oft_r, zero + eps * (diff / norm_diff))
    return out[:, rows, cols]


def _older(version: str, than: tuple[int, int]) -> bool:
    try:
        parts = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return True
    return parts < than
