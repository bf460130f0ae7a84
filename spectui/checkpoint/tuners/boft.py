"""BOFT (PEFT `tuners/boft/layer.py`): butterfly orthogonal fine-tuning. Each module stores
boft_R (m, blocks, b, b) and a per-output scale boft_s (out, 1). Each butterfly factor i is
Pᵢ · blockdiag(Cayley(Rᵢ)) · Pᵢᵀ with PEFT's block-butterfly permutation Pᵢ, Cayley(R) =
(I − S)(I + S)⁻¹ for S = (R − Rᵀ)/2; M = M_{m−1} ⋯ M_0 and W = (M · W0ᵀ)ᵀ · s. Applied here factor by
factor, as permutations and blocks rather than the dense in × in matrices PEFT builds.

Without its CUDA extension PEFT trains and saves m = 1 whatever boft_n_butterfly_factor says; the
saved tensor's m is the one used (as PEFT with the extension would merge it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from spectui.checkpoint.files import CheckpointError
from spectui.checkpoint.tuners.base import Module, Plan, TunerAdapter, fmt
from spectui.validate import integer


@dataclass(frozen=True, eq=False, kw_only=True)
class BoftPlan(Plan):
    factors: int  # m, as saved
    blocks: int
    block_size: int


class BoftAdapter(TunerAdapter):
    peft_type = "BOFT"
    kind = "BOFT"
    parts = ("boft_R", "boft_s")

    def read_config(self) -> None:
        file, config = self.config_file, self.config
        self.block_size = integer(config.get("boft_block_size", 4), file, "boft_block_size", minimum=0,
                                  error=CheckpointError)
        self.block_num = integer(config.get("boft_block_num", 0), file, "boft_block_num", minimum=0,
                                 error=CheckpointError)
        if (self.block_size == 0) == (self.block_num == 0):
            raise CheckpointError(file, f"must give exactly one of boft_block_size ({self.block_size}) and "
                                        f"boft_block_num ({self.block_num}) as non-zero")
        self.butterfly = integer(config.get("boft_n_butterfly_factor", 1), file, "boft_n_butterfly_factor",
                                 minimum=1, error=CheckpointError)
        if self.flag("fan_in_fan_out"):
            raise CheckpointError(file, "sets fan_in_fan_out: BOFT on GPT-2 style Conv1D layers is not supported "
                                        "(PEFT's merge of them does not match their forward pass)")
        self.saved_factors: set[int] = set()

    @property
    def description(self) -> str:
        size = f"b={self.block_size}" if self.block_size else f"blocks={self.block_num}"
        return f"BOFT {size} m={max(self.saved_factors, default=self.butterfly)}"

    def warnings(self) -> list[str]:
        notes = super().warnings()
        if self.butterfly > 1 and self.saved_factors == {1}:
            notes.append(f"{self.config_file}: boft_n_butterfly_factor is {self.butterfly} but the saved rotations "
                         "have one butterfly factor (PEFT trains with one without its CUDA extension); "
                         "the saved one is used")
        return notes

    def plan(self, module: Module, base_name: str, shape: tuple[int, ...]) -> BoftPlan:
        self.require(module, "boft_R", "boft_s")
        if len(shape) != 2:
            return BoftPlan(module=module, base_name=base_name, shape=shape, factors=0, blocks=0, block_size=0,
                            unsupported=f"BOFT on a {len(shape)}-D weight is not supported")
        out_dim, in_dim = shape
        r, s = self.part_shape(module, "boft_R"), self.part_shape(module, "boft_s")
        detail = f"boft_R {fmt(r)}, boft_s {fmt(s)}"
        if len(r) != 4 or r[2] != r[3] or s != (out_dim, 1) or r[1] * r[2] != in_dim:
            raise self.misfit(module, shape, detail)
        m, blocks, size = r[0], r[1], r[2]
        wanted = size == self.block_size if self.block_size else blocks == self.block_num
        if not wanted or m not in (1, self.butterfly) or not _valid_butterfly(in_dim, blocks, size, m - 1):
            raise self.misfit(module, shape, f"{detail} against boft_block_size {self.block_size}, boft_block_num "
                                             f"{self.block_num}, boft_n_butterfly_factor {self.butterfly}")
        self.saved_factors.add(m)
        return BoftPlan(module=module, base_name=base_name, shape=shape, factors=m, blocks=blocks, block_size=size)

    def merge(self, plan: BoftPlan, w0: torch.Tensor) -> torch.Tensor:
        import torch

        m, blocks, size = plan.factors, plan.blocks, plan.block_size
        rotate = _cayley_batch(self.tensor(plan, "boft_R").view(m * blocks, size, size)).view(m, blocks, size, size)
        y = w0.T  # (in, out): W = (M · W0ᵀ)ᵀ
        for i in range(m):
            perm = block_butterfly_perm(w0.shape[1], int(blocks / (2**i)), int(size / 2), m - 1)
            inverse = torch.empty_like(perm)
            inverse[perm] = torch.arange(perm.numel())
            z = y[inverse].reshape(blocks, size, -1)  # Pᵀ · Y
            z = torch.einsum("dhk,dko->dho", rotate[i], z).reshape(y.shape)  # blockdiag(Rᵢ) · …
            y = z[perm]  # Pᵢ · …
        return y.T * self.tensor(plan, "boft_s")


def _valid_butterfly(in_dim: int, blocks: int, size: int, n: int) -> bool:
    """PEFT's `BOFTLayer.update_layer` checks for n = m − 1 extra butterfly factors."""
    if n == 0:
        return True
    return (blocks % 2 == 0 and size % 2 == 0 and n <= int(math.log2(blocks)) and blocks % (2**n) == 0
            and in_dim % (size * 2**n) == 0)


def _cayley_batch(data: torch.Tensor) -> torch.Tensor:
    """PEFT's `BOFTLayer.cayley_batch`."""
    import torch

    b, r, c = data.shape
    skew = 0.5 * (data - data.transpose(1, 2))
    identity = torch.eye(r).unsqueeze(0).expand(b, r, c)
    return torch.linalg.solve(identity + skew, identity - skew, left=False).to(data.dtype)


def block_butterfly_perm(n: int, b: int, r: int = 3, n_butterfly_factor: int = 1) -> torch.Tensor:
    """PEFT's `BOFTLayer.block_butterfly_perm`, verbatim: P[i, perm[i]] = 1."""
    import torch

    if n_butterfly_factor == 0:
        return torch.arange(n)
    if b * r * 2 > n:
        raise ValueError("Invalid number of blocks!")
    block_size = int(n // b)
    indices = torch.arange(n)

    def sort_block(b, r):
        step = b / r
        initial_order = torch.arange(b)
        sorted_order = torch.empty(b, dtype=torch.long)
        evens = torch.arange(0, step, 2)
        odds = torch.arange(1, step, 2)
        sorted_seq = torch.cat((evens, odds), dim=0)
        for i, pos in enumerate(sorted_seq):
            sorted_order[int(i * r) : int(i * r + r)] = initial_order[int(pos * r) : int(pos * r + r)]
        return sorted_order

    sorted_order = sort_block(block_size, r)
    for i in range(0, n, block_size):
        block_end = i + block_size
        tmp_indices = indices[i:block_end]
        indices[i:block_end] = tmp_indices[sorted_order]
    return indices
