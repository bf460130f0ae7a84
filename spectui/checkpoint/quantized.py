"""Weights a safetensors or `.bin` checkpoint stores quantized, dequantized on read.

- bitsandbytes 4-bit (nf4, fp4), as transformers saves a `load_in_4bit` model: `X.weight` holds
  two 4-bit codes a byte (high nibble first), `X.weight.absmax` one scale per block (itself
  quantized to 8 bits against `nested_absmax` / `nested_quant_map` plus an offset with double
  quantization), `X.weight.quant_map` the 16 code values, and `X.weight.quant_state.bitsandbytes__nf4`
  a JSON text (as uint8) with the block size, shape and dtype. Dequantized here exactly as
  bitsandbytes' own kernel does (the tests hold it to bitsandbytes where it is installed), so
  bitsandbytes itself is not needed.
- bitsandbytes 8-bit (LLM.int8): `X.weight` int8 and `X.SCB` a scale per row: W = q · SCB / 127.
- float8 (F8_E4M3, F8_E5M2) with `X.weight_scale_inv` block scales (DeepSeek-V3, Qwen3-FP8:
  W = q · s over 128×128 blocks, or the config's `weight_block_size`), or `X.weight_scale` per tensor
  or per row.
- MXFP4 experts (gpt-oss): `X_blocks` (E, out, G, 16) of packed FP4 pairs (low nibble first) and
  `X_scales` (E, out, G) of power-of-two exponents biased by 127, read as the 3-D parameter `X`
  (E, in, out) that transformers dequantizes them to; one expert at a time.

Everything else that is not a float tensor (GPTQ/AWQ's packed int32, plain int or bool tensors) gets a
reason instead of being read. The side tensors (scales, code tables, states) get a reason naming
the weight they belong to. Every side tensor's size is checked against its weight's before use.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch


class TensorInfo(Protocol):
    """What the index reads of a stored tensor's header entry (`files.TensorInfo`)."""

    shape: tuple[int, ...]
    dtype: str
    nbytes: int

FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
FLOAT8_DTYPES = {"F8_E4M3": "e4m3", "F8_E5M2": "e5m2"}
MAX_STATE_BYTES = 1 << 16  # a bitsandbytes quant_state is a JSON text of ~170 bytes
_BNB_STATE = re.compile(r"^(?P<weight>.+)\.quant_state\.bitsandbytes__(?P<type>nf4|fp4)$")
_BNB_SIDE = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")
_BNB_BLOCKS = (32, 64, 128, 256, 512, 1024, 2048, 4096)
_BNB_DTYPES = ("float32", "float16", "bfloat16")
INT8_SCALE = 7.874015718698502e-3  # 1/127 as bitsandbytes writes it (int8_vectorwise_dequant)
DEFAULT_FP8_BLOCK = (128, 128)
MXFP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)

Read = Callable[[str], "torch.Tensor"]


class QuantizedFormatError(ValueError):
    """A quantized weight whose parts do not fit together; its message is the skip reason."""


@dataclass(frozen=True)
class Quantized:
    """One weight stored quantized: how to read it back as floats."""

    name: str  # the weight's name (for MXFP4 a name no stored tensor has: the parameter it stands for)
    kind: str  # as the user reads it: "bitsandbytes nf4", "float8 e4m3", …
    shape: tuple[int, ...]  # the weight's own shape
    parts: dict[str, str]  # role → stored tensor name
    state: dict = field(default_factory=dict, compare=False)  # block sizes, offsets, dtype
    problem: str | None = None  # why it cannot be read back (then it is skipped with this reason)

    @property
    def experts(self) -> bool:
        return self.kind == "MXFP4"


@dataclass
class QuantIndex:
    """The quantized weights of one checkpoint, and what every other non-float tensor is."""

    weights: dict[str, Quantized] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)  # stored tensor → why it is not a matrix

    @property
    def kinds(self) -> list[str]:
        return sorted({q.kind for q in self.weights.values() if q.problem is None})

    @property
    def extra_names(self) -> list[str]:
        """Weights that no stored tensor is named after (MXFP4's parameters)."""
        return [name for name, q in self.weights.items() if q.experts]


def index_quantized(infos: dict[str, TensorInfo], read: Read, config: dict) -> QuantIndex:
    """Find every quantized weight by its side tensors (headers only, plus bitsandbytes' small JSON
    states); every other non-float tensor gets its reason."""
    index = QuantIndex()
    for name in infos:
        match = _BNB_STATE.match(name)
        if match and match["weight"] in infos:
            _add(index, _bnb_4bit(match["weight"], match["type"], name, infos, read))
    for name, info in infos.items():
        if name in index.reasons or name in index.weights:
            continue
        stem = name.removesuffix(".weight")
        if info.dtype == "I8" and name.endswith(".weight") and f"{stem}.SCB" in infos:
            _add(index, _bnb_int8(name, stem, infos))
        elif info.dtype in FLOAT8_DTYPES:
            _add(index, _float8(name, infos, config))
        elif name.endswith("_blocks") and f"{name.removesuffix('_blocks')}_scales" in infos:
            _add(index, _mxfp4(name.removesuffix("_blocks"), infos))
        elif name.endswith(".qweight"):
            stem = name.removesuffix(".qweight")
            for side in ("qzeros", "scales", "g_idx"):
                if f"{stem}.{side}" in infos:
                    index.reasons[f"{stem}.{side}"] = f"GPTQ/AWQ {side} of {stem}"
            index.reasons[name] = "GPTQ/AWQ packed int4 weight: not dequantized (dequantize the model first)"
    for name, info in infos.items():
        if name not in index.reasons and name not in index.weights and info.dtype not in FLOAT_DTYPES \
                and len(info.shape) >= 2:
            index.reasons[name] = f"{_dtype_words(info.dtype)} tensor: not a float weight"
    return index


def _add(index: QuantIndex, found: tuple[Quantized, dict[str, str]]) -> None:
    weight, sides = found
    for role, stored in weight.parts.items():
        if weight.experts:  # the stored blocks and scales stand for the parameter itself
            index.reasons[stored] = f"MXFP4 {role} of {weight.name} (read as that parameter)"
        elif role != "weight":
            index.reasons.setdefault(stored, sides.get(stored) or f"{weight.kind} {role} of {weight.name}")
    index.weights[weight.name] = weight


def _dtype_words(dtype: str) -> str:
    return {"I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8", "U16": "uint16",
            "U32": "uint32", "U64": "uint64", "BOOL": "bool", "F8_E8M0": "float8 e8m0 (scale)"}.get(dtype, dtype)


# -- bitsandbytes 4-bit --------------------------------------------------------------------------


def _bnb_4bit(weight: str, quant_type: str, state_name: str, infos, read: Read):
    kind = f"bitsandbytes {quant_type}"
    parts = {"weight": weight, "state": state_name}
    parts.update({role: f"{weight}.{role}" for role in _BNB_SIDE if f"{weight}.{role}" in infos})
    try:
        state = _bnb_state(infos[state_name], read, quant_type)
        shape = tuple(state["shape"])
        _check_bnb(weight, shape, state, parts, infos)
        return Quantized(weight, kind, shape, parts, state), {}
    except QuantizedFormatError as err:
        shape = tuple(infos[weight].shape)
        return Quantized(weight, kind, shape, parts, problem=f"{kind} weight: {err}"), {}


def _bnb_state(info: TensorInfo, read: Read, quant_type: str) -> dict:
    if info.dtype != "U8" or len(info.shape) != 1 or info.nbytes > MAX_STATE_BYTES:
        raise QuantizedFormatError("its quant_state is not a short uint8 text")
    try:
        state = json.loads(bytes(read(info.name).numpy()).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise QuantizedFormatError("its quant_state is not JSON") from None
    if not isinstance(state, dict):
        raise QuantizedFormatError("its quant_state is not a table")
    shape, blocksize, dtype = state.get("shape"), state.get("blocksize"), state.get("dtype")
    if state.get("quant_type", quant_type) != quant_type:
        raise QuantizedFormatError(f"its quant_state says {state.get('quant_type')!r}, its name {quant_type}")
    if not isinstance(shape, list) or not 1 <= len(shape) <= 4 or not all(_count(d) for d in shape):
        raise QuantizedFormatError("its quant_state has no valid shape")
    if blocksize not in _BNB_BLOCKS:
        raise QuantizedFormatError(f"block size {blocksize!r} is not one bitsandbytes uses")
    if dtype not in _BNB_DTYPES:
        raise QuantizedFormatError(f"dtype {dtype!r} is not one bitsandbytes dequantizes to")
    if "nested_blocksize" in state or "nested_offset" in state:
        if state.get("nested_blocksize") not in (*_BNB_BLOCKS, 256) or state.get("nested_dtype") not in _BNB_DTYPES:
            raise QuantizedFormatError("its nested quantization has an invalid block size or dtype")
        offset = state.get("nested_offset")
        if not isinstance(offset, int | float) or isinstance(offset, bool) or not math.isfinite(offset):
            raise QuantizedFormatError("its nested offset is not a number")
    return state


def _check_bnb(weight: str, shape, state: dict, parts: dict, infos) -> None:
    n = math.prod(shape)
    blocks = -(-n // state["blocksize"])
    nested = "nested_blocksize" in state

    def need(role: str, dtypes: tuple[str, ...], count: int) -> None:
        info = infos.get(parts.get(role, ""))
        if info is None:
            raise QuantizedFormatError(f"its {role} is missing")
        if info.dtype not in dtypes or math.prod(info.shape) != count:
            raise QuantizedFormatError(f"its {role} has {math.prod(info.shape)} {info.dtype} values, "
                                       f"{count} expected for shape {tuple(shape)}")

    packed = infos[weight]
    if packed.nbytes != -(-n // 2):
        raise QuantizedFormatError(f"it holds {packed.nbytes} bytes, {-(-n // 2)} expected for shape {tuple(shape)}")
    need("quant_map", ("F32", "F16", "BF16"), 16)
    if nested:
        need("absmax", ("U8",), blocks)
        need("nested_absmax", ("F32", "F16", "BF16"), -(-blocks // state["nested_blocksize"]))
        need("nested_quant_map", ("F32", "F16", "BF16"), 256)
    else:
        need("absmax", ("F32", "F16", "BF16"), blocks)


def _blockwise(codes: torch.Tensor, absmax: torch.Tensor, blocksize: int) -> torch.Tensor:
    """values · absmax of their block (the last block may be short), in float32, as bitsandbytes."""
    import torch

    n = codes.numel()
    full = n - n % blocksize
    out = torch.empty(n, dtype=torch.float32)
    out[:full] = (codes[:full].view(-1, blocksize) * absmax[:full // blocksize].view(-1, 1)).reshape(full)
    if full < n:
        out[full:] = codes[full:] * absmax[full // blocksize]
    return out


def _dequantize_bnb_4bit(q: Quantized, read: Read) -> torch.Tensor:
    import torch

    state = q.state
    dtype = getattr(torch, state["dtype"])
    if "nested_blocksize" in state:
        code2 = read(q.parts["nested_quant_map"]).float()
        absmax = _blockwise(code2[read(q.parts["absmax"]).long()], read(q.parts["nested_absmax"]).float(),
                            state["nested_blocksize"]).to(getattr(torch, state["nested_dtype"]))
        absmax = (absmax + torch.tensor(float(state["nested_offset"]))).float()
    else:
        absmax = read(q.parts["absmax"]).float()
    packed = read(q.name).reshape(-1).view(torch.uint8)
    codes = torch.empty(packed.numel() * 2, dtype=torch.long)
    codes[0::2], codes[1::2] = packed >> 4, packed & 0xF
    n = math.prod(q.shape)
    values = read(q.parts["quant_map"]).float()[codes[:n]]
    return _blockwise(values, absmax, state["blocksize"]).to(dtype).reshape(q.shape)


# -- bitsandbytes 8-bit ------------------------------------------------------------------------


def _bnb_int8(weight: str, stem: str, infos):
    parts = {"weight": weight, "SCB": f"{stem}.SCB"}
    if f"{stem}.weight_format" in infos:
        parts["weight_format"] = f"{stem}.weight_format"
    shape, scb = tuple(infos[weight].shape), infos[f"{stem}.SCB"]
    problem = None
    if len(shape) != 2:
        problem = f"{len(shape)}-D int8 weight"
    elif scb.dtype not in FLOAT_DTYPES or math.prod(scb.shape) != shape[0]:
        problem = f"its SCB has {math.prod(scb.shape)} {scb.dtype} values, one float per row ({shape[0]}) expected"
    kind = "bitsandbytes int8"
    return Quantized(weight, kind, shape, parts, problem=problem and f"{kind} weight: {problem}"), {}


def _dequantize_bnb_int8(q: Quantized, read: Read) -> torch.Tensor:
    scb = read(q.parts["SCB"]).float().reshape(-1, 1)
    return read(q.name).float() * scb * INT8_SCALE


# -- float8 -------------------------------------------------------------------------------------


def _float8(weight: str, infos, config: dict):
    info = infos[weight]
    kind = f"float8 {FLOAT8_DTYPES[info.dtype]}"
    shape = tuple(info.shape)
    stem = weight.removesuffix(".weight")
    parts = {"weight": weight}
    for role in ("weight_scale_inv", "weight_scale", "input_scale"):
        if f"{stem}.{role}" in infos and weight.endswith(".weight"):
            parts[role] = f"{stem}.{role}"
    sides = {parts[r]: f"activation scale of {weight} (not part of the weight)" for r in ("input_scale",) if r in parts}
    state, problem = {}, None
    scale_role = next((role for role in ("weight_scale_inv", "weight_scale") if role in parts), None)
    if scale_role is None:
        state["scale"] = "none"
    else:
        scale = infos[parts[scale_role]]
        state["scale_role"] = scale_role
        if scale.dtype not in FLOAT_DTYPES:
            problem = f"its {scale_role} is {_dtype_words(scale.dtype)}, not float"
        elif math.prod(scale.shape) == 1:
            state["scale"] = "tensor"
        elif len(shape) == 2 and math.prod(scale.shape) == shape[0] and scale.shape[0] == shape[0]:
            state["scale"] = "row"
        elif len(shape) == 2 and len(scale.shape) == 2:
            block = _fp8_block(config, shape, tuple(scale.shape))
            if block is None:
                problem = f"its {scale_role} {tuple(scale.shape)} does not tile its {shape} in blocks"
            else:
                state["scale"], state["block"] = "block", block
        else:
            problem = f"its {scale_role} {tuple(scale.shape)} fits neither the tensor, its rows nor blocks of it"
    if problem is None and len(shape) < 1:
        problem = "a float8 scalar"
    kind_shown = kind + (f" ({state['block'][0]}×{state['block'][1]} blocks)" if state.get("scale") == "block" else "")
    return Quantized(weight, kind_shown, shape, parts, state, problem and f"{kind} weight: {problem}"), sides


def _fp8_block(config: dict, shape: tuple[int, int], scale_shape: tuple[int, int]) -> tuple[int, int] | None:
    """The block size that tiles `shape` into `scale_shape`: the config's, else 128×128, else the
    only one that fits."""
    quantization = config.get("quantization_config")
    given = quantization.get("weight_block_size") if isinstance(quantization, dict) else None
    candidates = []
    if isinstance(given, list) and len(given) == 2 and all(_count(b) and b > 0 for b in given):
        candidates.append(tuple(given))
    candidates.append(DEFAULT_FP8_BLOCK)
    for block in candidates:
        if all(-(-s // b) == c for s, b, c in zip(shape, block, scale_shape)):
            return block
    if all(c > 0 and s % c == 0 for s, c in zip(shape, scale_shape)):
        return shape[0] // scale_shape[0], shape[1] // scale_shape[1]
    return None


def _dequantize_float8(q: Quantized, read: Read) -> torch.Tensor:
    w = read(q.name).float()
    kind = q.state.get("scale")
    if kind == "none":
        return w
    s = read(q.parts[q.state["scale_role"]]).float()
    if kind == "tensor":
        return w * s.reshape(())
    if kind == "row":
        return w * s.reshape(-1, 1)
    (br, bc), (rows, cols) = q.state["block"], w.shape
    expanded = s.repeat_interleave(br, dim=0)[:rows].repeat_interleave(bc, dim=1)[:, :cols]
    return w * expanded


# -- MXFP4 (gpt-oss experts) ----------------------------------------------------------------------


def _mxfp4(name: str, infos):
    blocks, scales = infos[f"{name}_blocks"], infos[f"{name}_scales"]
    parts = {"blocks": blocks.name, "scales": scales.name}
    problem = None
    if blocks.dtype != "U8" or scales.dtype != "U8":
        problem = "its blocks and scales must be uint8"
    elif len(blocks.shape) != 4 or blocks.shape[-1] != 16 or tuple(blocks.shape[:-1]) != tuple(scales.shape):
        problem = f"blocks {tuple(blocks.shape)} and scales {tuple(scales.shape)} do not fit (E, out, G, 16) " \
                  "and (E, out, G)"
    if problem:
        return Quantized(name, "MXFP4", tuple(blocks.shape[:-1]), parts, problem=f"MXFP4 weight: {problem}"), {}
    experts, rows, groups, _ = blocks.shape
    # transformers' dequantized parameter: (E, in, out), in = G·32
    return Quantized(name, "MXFP4", (experts, groups * 32, rows), parts), {}


def _dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(…, out, G, 16) blocks and (…, out, G) exponents → (…, in, out) float32, as transformers'
    convert_moe_packed_tensors (lookup, low nibble first, ldexp by exponent − 127, then transposed)."""
    import torch

    lut = torch.tensor(MXFP4_VALUES, dtype=torch.float32)
    *lead, groups, width = blocks.shape
    out = torch.empty(*lead, groups, width * 2, dtype=torch.float32)
    out[..., 0::2] = lut[(blocks & 0x0F).long()]
    out[..., 1::2] = lut[(blocks >> 4).long()]
    out = torch.ldexp(out, (scales.to(torch.int32) - 127).unsqueeze(-1))
    return out.reshape(*lead, groups * width * 2).transpose(-1, -2)


# -- reading ------------------------------------------------------------------------------------


def dequantize(q: Quantized, read: Read) -> torch.Tensor:
    """The weight as floats (float32, or the dtype bitsandbytes 4-bit says it was)."""
    if q.kind.startswith("bitsandbytes") and q.kind != "bitsandbytes int8":
        return _dequantize_bnb_4bit(q, read)
    if q.kind == "bitsandbytes int8":
        return _dequantize_bnb_int8(q, read)
    if q.kind == "MXFP4":
        return _dequantize_mxfp4(read(q.parts["blocks"]), read(q.parts["scales"]))
    return _dequantize_float8(q, read)


def dequantize_expert(q: Quantized, read_expert: Callable[[str, int], torch.Tensor], expert: int) -> torch.Tensor:
    """One expert's (in, out) slab of an MXFP4 parameter, reading only that expert's bytes."""
    return _dequantize_mxfp4(read_expert(q.parts["blocks"], expert), read_expert(q.parts["scales"], expert))


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
