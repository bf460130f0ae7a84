"""Mixture-of-experts weights: every expert's matrix is scanned on its own.

Checkpoints hold experts in one of two layouts:

- one 2-D tensor per expert and matrix (Mixtral's `block_sparse_moe.experts.3.w1.weight`, Qwen-MoE's
  `mlp.experts.3.gate_proj.weight`): ordinary matrices, whose expert `expert_of` reads from the name;
- one 3-D tensor per matrix kind holding every expert (gpt-oss, Llama-4, and every MoE as
  transformers ≥ 5 builds it): `…experts.gate_up_proj` [E, …] and `…experts.down_proj` [E, …].

A 3-D tensor is split here into one `ExpertPart` per expert and matrix, named as the first layout
names it (`…experts.3.gate_proj.weight`, `…experts.3.up_proj.weight` from a fused gate_up), always
in (out, in) orientation, so the two layouts pair with each other. A part is read alone: a store
reads only its expert's slab (an expert is contiguous when E is the leading dimension).

Orientation and the gate/up split follow transformers' modeling code: gpt-oss, Llama-4, Aria store
(E, in, out); the rest (E, out, in). gpt-oss interleaves gate and up (gate = rows 0, 2, 4, …); the
rest concatenate them (gate first). Where the config's hidden size tells the orientation from the
shape, the shape decides; the model type only breaks ties (square experts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

# 3-D expert parameters: `<…>.experts.<param>`, as transformers names them (no `.weight`), or with it
_STORED = re.compile(r"^(?P<prefix>(?:.*\.)?experts)\.(?P<param>[A-Za-z_][A-Za-z0-9_]*?)(?P<weight>\.weight)?$")
# a per-expert name, 2-D on disk or one of ours: `….experts.<E>.<matrix>…`
_PER_EXPERT = re.compile(r"(^|\.)experts\.(\d+)\.")

# model types whose experts transformers stores (E, in, out): x @ W[e]
IN_OUT_MODEL_TYPES = frozenset({"gpt_oss", "llama4", "llama4_text", "aria", "aria_text", "openai_privacy_filter"})
# …of which PEFT treats as (E, in, out) only those whose class says `is_transposed=True`
PEFT_IN_OUT_MODEL_TYPES = frozenset({"gpt_oss", "aria", "aria_text", "openai_privacy_filter"})
INTERLEAVED_MODEL_TYPES = frozenset({"gpt_oss"})  # gate_up_proj[..., ::2] is gate, [..., 1::2] up
FUSED = {"gate_up_proj": ("gate_proj", "up_proj")}
READS_HIDDEN = frozenset({"gate_up_proj", "gate_proj", "up_proj", "w1", "w3"})  # in = hidden size
WRITES_HIDDEN = frozenset({"down_proj", "w2"})  # out = hidden size
_MATRIX_ORDER = {"gate_proj": 0, "w1": 0, "up_proj": 1, "w3": 1, "down_proj": 2, "w2": 2}
MAX_EXPERTS = 1 << 14  # real models have up to a few hundred; a header claiming more is not split
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "float64", "float32", "float16", "bfloat16"})


def expert_of(name: str) -> tuple[int | None, str]:
    """The expert a per-expert name belongs to, and the name without it: (3, `….experts.w1.weight`)
    for `….experts.3.w1.weight`; (None, name) for any other name."""
    match = _PER_EXPERT.search(name)
    if match is None:
        return None, name
    return int(match[2]), name[:match.start()] + f"{match[1]}experts." + name[match.end():]


@dataclass(frozen=True)
class ExpertPart:
    """One expert's matrix inside a 3-D tensor."""

    stored: str  # the 3-D tensor's name
    expert: int
    matrix: str  # gate_proj, up_proj, down_proj, … (the name a per-expert checkpoint gives it)
    shape: tuple[int, int]  # (out, in)
    in_out: bool  # the stored expert slab is (in, out)
    rows: slice  # this matrix's rows in the expert's whole (out, in) matrix (one half of a fused gate_up)

    def take(self, slab: torch.Tensor) -> torch.Tensor:
        """This matrix, (out, in), from the expert's slab as stored (a view)."""
        whole = slab.T if self.in_out else slab
        return whole[self.rows]

    def put(self, slab: torch.Tensor, matrix: torch.Tensor) -> None:
        """Write this matrix, (out, in), into the expert's slab as stored, in place."""
        whole = slab.T if self.in_out else slab
        whole[self.rows] = matrix.to(slab.dtype)


@dataclass
class ExpertIndex:
    """The expert matrices of one checkpoint's 3-D tensors, by the names they are scanned under."""

    parts: dict[str, ExpertPart] = field(default_factory=dict)
    by_stored: dict[str, list[str]] = field(default_factory=dict)  # 3-D tensor → its parts' names
    problems: dict[str, str] = field(default_factory=dict)  # 3-D expert tensor → why it is not split

    def __contains__(self, name: str) -> bool:
        return name in self.parts

    def get(self, name: str) -> ExpertPart | None:
        return self.parts.get(name)

    def expanded(self, names: list[str]) -> list[tuple[str, str]]:
        """(stored tensor, matrix name) for every name, a 3-D expert tensor's in place of it: every
        expert tensor of one module (gate_up and down) together at the first of them, expert by
        expert, gate before up before down."""
        groups: dict[str, list[str]] = {}
        for stored in self.by_stored:
            groups.setdefault(stored.rpartition(".")[0], []).append(stored)
        out, done = [], set()
        for name in names:
            if name not in self.by_stored:
                out.append((name, name))
                continue
            group = name.rpartition(".")[0]
            if group in done:
                continue
            done.add(group)
            parts = [(part_name, stored) for stored in groups[group] for part_name in self.by_stored[stored]]
            parts.sort(key=lambda item: (self.parts[item[0]].expert, _MATRIX_ORDER.get(self.parts[item[0]].matrix, 9)))
            out.extend((stored, part_name) for part_name, stored in parts)
        return out


def stored_name(name: str) -> tuple[str, str] | None:
    """(prefix ending in `experts`, parameter) of a name shaped like a 3-D expert parameter."""
    match = _STORED.match(name)
    if match is None or match["param"].isdigit():
        return None
    return match["prefix"], match["param"]


def index_experts(names: list[str], shape_of: Callable[[str], tuple[int, ...]], dtype_of: Callable[[str], str],
                  config: dict) -> ExpertIndex:
    """Split every 3-D expert tensor of a checkpoint into its experts' matrices (header only)."""
    index = ExpertIndex()
    model_type, hidden = _model_type(config), _hidden_size(config)
    for name in names:
        shape = tuple(shape_of(name))
        parsed = stored_name(name)
        if parsed is not None and len(shape) == 2 and parsed[1].endswith("bias"):
            index.problems[name] = "expert biases (a vector per expert), not a matrix"
        if len(shape) != 3 or parsed is None:
            continue
        prefix, param = parsed
        problem = _problem(shape, dtype_of(name))
        if problem:
            index.problems[name] = problem
            continue
        experts, d1, d2 = shape
        in_out = orientation(param, d1, d2, hidden, model_type)
        out_dim, in_dim = (d2, d1) if in_out else (d1, d2)
        matrices = FUSED.get(param)
        if matrices and out_dim % 2:
            index.problems[name] = f"fused {param} of {out_dim} rows per expert, which cannot be halved into " \
                                   f"{matrices[0]} and {matrices[1]}"
            continue
        if matrices:
            half = out_dim // 2
            rows = [slice(0, None, 2), slice(1, None, 2)] if model_type in INTERLEAVED_MODEL_TYPES \
                else [slice(0, half), slice(half, out_dim)]
            layout = [(matrices[0], rows[0], half), (matrices[1], rows[1], half)]
        else:
            layout = [(param, slice(0, out_dim), out_dim)]
        virtual = []
        for expert in range(experts):
            for matrix, rows, height in layout:
                part_name = f"{prefix}.{expert}.{matrix}.weight"
                index.parts[part_name] = ExpertPart(name, expert, matrix, (height, in_dim), in_out, rows)
                virtual.append(part_name)
        index.by_stored[name] = virtual
    return index


def orientation(param: str, d1: int, d2: int, hidden: int | None, model_type: str) -> bool:
    """Whether an expert slab (d1, d2) is stored (in, out): from the hidden size where it tells, else
    from the model type as transformers builds it."""
    if hidden is not None and (d1 == hidden) != (d2 == hidden):
        if param in READS_HIDDEN:
            return d1 == hidden
        if param in WRITES_HIDDEN:
            return d2 == hidden
    return model_type in IN_OUT_MODEL_TYPES


def _problem(shape: tuple[int, ...], dtype: str) -> str | None:
    experts, d1, d2 = shape
    if dtype not in FLOAT_DTYPES:
        return f"3-D expert tensor in {dtype}, not a float type this scan reads"
    if 0 in shape:
        return f"empty expert tensor ({experts}, {d1}, {d2})"
    if experts > MAX_EXPERTS:
        return f"3-D tensor of {experts} experts, more than {MAX_EXPERTS} to scan one by one"
    return None


def _model_type(config: dict) -> str:
    model_type = config.get("model_type")
    return model_type if isinstance(model_type, str) else ""


def _hidden_size(config: dict) -> int | None:
    for where in (config, config.get("text_config")):
        if isinstance(where, dict):
            hidden = where.get("hidden_size")
            if isinstance(hidden, int) and not isinstance(hidden, bool) and hidden > 0:
                return hidden
    return None
