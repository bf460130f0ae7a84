"""llama.cpp's GGUF files: a full model (quantized or not) as a checkpoint, and a GGUF LoRA adapter
as the tuned weights it stands for.

The header is parsed here, every value checked against the file's size before it is used (a
truncated or hostile file is one sentence naming it); a tensor's bytes are read when asked for, one
at a time, and dequantized with the `gguf` package. Names are mapped to Hugging Face's layout
(`blk.N.attn_q.weight` → `model.layers.N.self_attn.q_proj.weight`, …) and, for the `llama`
architecture, the RoPE row order `convert_hf_to_gguf` gave q and k is undone (`rope.py`), so a GGUF
pairs with a Hugging Face checkpoint matrix for matrix, shapes in (out, in) orientation.

Quantization noise is not fine-tuning: a quantized GGUF says so in its description and warnings.
"""

from __future__ import annotations

import math
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectui.checkpoint.experts import ExpertIndex
from spectui.checkpoint.files import CheckpointError, TensorStore
from spectui.checkpoint.lowrank import LowRankDelta, LowRankModel
from spectui.checkpoint.rope import check_rows, head_counts, unpermute_rows
from spectui.errors import one_line
from spectui.validate import regular_file

if TYPE_CHECKING:
    import torch

MAGIC = b"GGUF"
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ENTRIES = 1 << 22  # metadata keys or tensors: real files have hundreds to a few thousand
MAX_NESTING = 2  # arrays of arrays
SHORT_ARRAY = 64  # arrays up to this long keep their values; longer ones (vocabularies) their length
MAX_STRING_KEPT = 1 << 20
DEFAULT_ALIGNMENT = 32

_STRING, _ARRAY = 8, 9
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
# Types whose values are floats as stored (no quantization): F32, F16, BF16, F64.
FLOAT_TYPES = {0: "F32", 1: "F16", 30: "BF16", 28: "F64"}
_INT_TYPES = {24: "<i1", 25: "<i2", 26: "<i4", 27: "<i8"}

# llama.cpp tensor names → Hugging Face's, for architectures whose layout is LLaMA's.
HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
ROPE_PERMUTED = {"llama"}  # converted with LlamaModel.permute on q and k
_TOP_LEVEL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_IN_BLOCK = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_GGUF_NAME = re.compile(r"^(?:blk\.(?P<layer>\d+)\.)?(?P<module>[A-Za-z0-9_]+)\.(?P<kind>weight|bias)$")


@dataclass(frozen=True)
class GgufTensor:
    """One tensor's header entry: `shape` in PyTorch order (GGUF's ne reversed), bytes in the file."""

    gguf_name: str
    shape: tuple[int, ...]
    qtype: int
    offset: int  # absolute, in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        import gguf

        return gguf.GGMLQuantizationType(self.qtype).name


@dataclass
class GgufFile:
    """A parsed GGUF header: metadata (arrays longer than SHORT_ARRAY kept as their length) and tensors."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[GgufTensor]

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else ""

    @property
    def kind(self) -> str:
        kind = self.metadata.get("general.type", "model")
        return kind if isinstance(kind, str) else "model"

    def arch_value(self, key: str):
        return self.metadata.get(f"{self.architecture}.{key}")


@dataclass(frozen=True)
class ArrayLength:
    """A long metadata array (a vocabulary, merges), kept as its length only."""

    length: int


# -- the header ----------------------------------------------------------------------------------


def read_header(path: Path) -> GgufFile:
    """Parse a GGUF header; every count, length, shape and offset is checked against the file."""
    size = regular_file(path, CheckpointError)
    if size < 24:
        raise CheckpointError(path, "is too short to be a GGUF file")
    try:
        with open(path, "rb") as fh:
            return _Parser(path, fh, size).parse()
    except OSError as err:
        raise CheckpointError(path, f"cannot be read ({err.strerror or one_line(err)})") from err


class _Parser:
    """Reads the header through a window of the file (no memory map: a file truncated while it is
    read gives an error, not a crash); what is skipped (vocabularies) is never read into memory."""

    WINDOW = 1 << 20
    MAX_NAME = 4096  # keys and tensor names; llama.cpp's own limit on tensor names is 64 bytes

    def __init__(self, path: Path, fh, size: int):
        self.path, self.fh, self.size, self.pos = path, fh, size, 0
        self.window, self.window_start = b"", 0

    def fail(self, problem: str) -> CheckpointError:
        return CheckpointError(self.path, problem)

    def need(self, count: int, what: str) -> None:
        if count < 0 or self.pos + count > self.size:
            raise self.fail(f"is truncated: {what} runs past the end of the file")

    def _at(self, count: int, what: str) -> int:
        """Where the next `count` bytes (already checked by `need`) start in the window."""
        offset = self.pos - self.window_start
        if offset < 0 or offset + count > len(self.window):
            self.fh.seek(self.pos)
            self.window, self.window_start, offset = self.fh.read(max(count, self.WINDOW)), self.pos, 0
            if len(self.window) < count:  # the file shrank since its size was taken
                raise self.fail(f"is truncated: {what} runs past the end of the file")
        return offset

    def unpack(self, fmt: struct.Struct | str, what: str):
        fmt = fmt if isinstance(fmt, struct.Struct) else struct.Struct(fmt)
        self.need(fmt.size, what)
        offset = self._at(fmt.size, what)  # may move the window: before reading it
        (value,) = fmt.unpack_from(self.window, offset)
        self.pos += fmt.size
        return value

    def take(self, count: int, what: str) -> bytes:
        self.need(count, what)
        offset = self._at(count, what)
        self.pos += count
        return self.window[offset:offset + count]

    def skip(self, count: int, what: str) -> None:
        self.need(count, what)
        self.pos += count

    def skip_strings(self, count: int, what: str) -> None:
        """`count` strings (a vocabulary, merges) skipped, each length checked, a window at a time."""
        done = 0
        while done < count:
            self.need(8, what)
            at = self._at(8, what)
            window, start, end = self.window, self.window_start, len(self.window)
            while done < count and at + 8 <= end:
                (length,) = _U64.unpack_from(window, at)
                at += 8 + length
                done += 1
                if start + at > self.size:
                    raise self.fail(f"is truncated: {what} runs past the end of the file")
            self.pos = start + at

    def text(self, what: str) -> str:
        length = self.unpack(_U64, what)
        if length > self.MAX_NAME:
            self.need(length, what)
            raise self.fail(f"has {what} of {length} bytes, too long to be one")
        try:
            text = self.take(length, what).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"has {what} that is not UTF-8 text") from None
        if not text.isprintable():  # it is told in messages, which must stay one line
            raise self.fail(f"has {what} with control characters in it")
        return text

    def parse(self) -> GgufFile:
        if self.take(4, "the magic number") != MAGIC:
            raise self.fail("is not a GGUF file (no GGUF magic number)")
        version = self.unpack(_U32, "the version")
        if version in (1,):
            raise self.fail("is GGUF version 1, which is obsolete; convert the model again with a current llama.cpp")
        if version not in (2, 3):
            swapped = struct.unpack("<I", struct.pack(">I", version))[0]
            if swapped in (2, 3):
                raise self.fail("is a big-endian GGUF file, which spectui does not read")
            raise self.fail(f"is GGUF version {version}, which spectui does not know")
        n_tensors = self.unpack(_U64, "the tensor count")
        n_metadata = self.unpack(_U64, "the metadata count")
        # each metadata entry takes at least 12 bytes, each tensor entry at least 24: counts that
        # cannot fit in the file are refused before any loop runs
        if n_metadata > min(MAX_ENTRIES, (self.size - self.pos) // 12):
            raise self.fail(f"claims {n_metadata} metadata entries, more than the file can hold")
        if n_tensors > min(MAX_ENTRIES, (self.size - self.pos) // 24):
            raise self.fail(f"claims {n_tensors} tensors, more than the file can hold")
        metadata: dict[str, Any] = {}
        for _ in range(n_metadata):
            key = self.text("a metadata key")
            value_type = self.unpack(_U32, f"metadata {key}")
            metadata[key] = self.value(value_type, key, depth=0)
        entries = [self.tensor_entry() for _ in range(n_tensors)]
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or isinstance(alignment, bool) or not 0 < alignment <= 1 << 20 \
                or alignment & (alignment - 1):
            raise self.fail(f"has general.alignment {alignment!r}, not a power of two")
        data_start = -(-self.pos // alignment) * alignment
        tensors, seen = [], set()
        for name, shape, qtype, offset, nbytes in entries:
            if name in seen:
                raise self.fail(f"holds tensor {name} twice")
            seen.add(name)
            if data_start + offset + nbytes > self.size:
                raise self.fail(f"is truncated: tensor {name} lies past the end of the file")
            tensors.append(GgufTensor(name, shape, qtype, data_start + offset, nbytes))
        return GgufFile(self.path, version, metadata, tensors)

    def value(self, value_type: int, key: str, depth: int):
        if value_type in _SCALARS:
            return self.unpack(_SCALARS[value_type], f"metadata {key}")
        if value_type == _STRING:
            length = self.unpack(_U64, f"metadata {key}")
            if length > MAX_STRING_KEPT:  # nothing spectui reads is that long: skipped unread
                self.skip(length, f"metadata {key}")
                return ""
            return self.take(length, f"metadata {key}").decode("utf-8", errors="replace")
        if value_type != _ARRAY:
            raise self.fail(f"has metadata {key} of unknown type {value_type}")
        if depth >= MAX_NESTING:
            raise self.fail(f"nests arrays too deeply in metadata {key}")
        item_type = self.unpack(_U32, f"metadata {key}")
        count = self.unpack(_U64, f"metadata {key}")
        if item_type not in _SCALARS and item_type not in (_STRING, _ARRAY):
            raise self.fail(f"has metadata {key}, an array of unknown type {item_type}")
        least = struct.calcsize(_SCALARS[item_type]) if item_type in _SCALARS else 8 if item_type == _STRING else 12
        if count > (self.size - self.pos) // least:
            raise self.fail(f"is truncated: metadata {key} claims {count} items, more than the file holds")
        if item_type in _SCALARS and count > SHORT_ARRAY:
            self.skip(count * least, f"metadata {key}")  # numbers: skipped in one step
            return ArrayLength(count)
        if count > SHORT_ARRAY:
            if item_type == _STRING:
                self.skip_strings(count, f"metadata {key}")
            else:
                for _ in range(count):
                    self.value(_ARRAY, key, depth + 1)
            return ArrayLength(count)
        return [self.value(item_type, key, depth + 1) for _ in range(count)]

    def tensor_entry(self) -> tuple[str, tuple[int, ...], int, int, int]:
        import gguf

        name = self.text("a tensor name")
        n_dims = self.unpack(_U32, f"tensor {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise self.fail(f"gives tensor {name} {n_dims} dimensions (GGUF allows 1 to {MAX_DIMS})")
        ne = [self.unpack(_U64, f"tensor {name}") for _ in range(n_dims)]
        qtype = self.unpack(_U32, f"tensor {name}")
        offset = self.unpack(_U64, f"tensor {name}")
        sizes = gguf.GGML_QUANT_SIZES.get(_quant_type(qtype))
        if sizes is None:
            raise self.fail(f"stores tensor {name} in unknown type {qtype}")
        block, type_size = sizes
        if ne[0] % block:
            raise self.fail(f"gives tensor {name} rows of {ne[0]} values, not a multiple of its type's "
                            f"block of {block}")
        elements = math.prod(ne)
        nbytes = elements // block * type_size
        if nbytes > self.size:
            raise self.fail(f"gives tensor {name} a shape of {elements} values, more than the file holds")
        return name, tuple(reversed(ne)), qtype, offset, nbytes


def _quant_type(qtype: int):
    import gguf

    try:
        return gguf.GGMLQuantizationType(qtype)
    except ValueError:
        return None


# -- reading tensors -----------------------------------------------------------------------------


def read_tensor(path: Path, tensor: GgufTensor) -> torch.Tensor:
    """One tensor's bytes, read now, as a tensor: float types as stored, quantized ones dequantized
    to float32."""
    import numpy as np
    import torch

    raw = np.empty(tensor.nbytes, dtype=np.uint8)
    try:
        with open(path, "rb") as fh:
            fh.seek(tensor.offset)
            got = fh.readinto(memoryview(raw))
    except OSError as err:
        raise CheckpointError(path, f"cannot be read ({err.strerror or one_line(err)})") from err
    if got != tensor.nbytes:
        raise CheckpointError(path, f"is truncated: tensor {tensor.gguf_name} lies past the end of the file")
    name = FLOAT_TYPES.get(tensor.qtype)
    if name == "BF16":
        return torch.from_numpy(raw.view("<i2")).view(torch.bfloat16).reshape(tensor.shape)
    if name is not None:
        return torch.from_numpy(raw.view({"F32": "<f4", "F16": "<f2", "F64": "<f8"}[name])).reshape(tensor.shape)
    if tensor.qtype in _INT_TYPES:
        return torch.from_numpy(raw.view(_INT_TYPES[tensor.qtype])).reshape(tensor.shape)
    return torch.from_numpy(_dequantize(path, tensor, raw))


def _dequantize(path: Path, tensor: GgufTensor, raw):
    import gguf.quants

    rows = math.prod(tensor.shape[:-1]) if len(tensor.shape) > 1 else 1
    try:
        values = gguf.quants.dequantize(raw.reshape(rows, -1) if tensor.nbytes else raw, gguf.GGMLQuantizationType(
            tensor.qtype))
    except NotImplementedError:
        raise CheckpointError(path, f"stores tensor {tensor.gguf_name} as {tensor.type_name}, which the gguf "
                                    "package cannot dequantize") from None
    except Exception as err:  # the library on bytes it did not expect: still this file's fault
        raise CheckpointError(path, f"tensor {tensor.gguf_name} ({tensor.type_name}) cannot be dequantized "
                                    f"({one_line(err)})") from err
    return values.reshape(tensor.shape)


def hf_name(gguf_name: str) -> str | None:
    """A LLaMA-layout GGUF name in Hugging Face's spelling, or None when it has no counterpart."""
    match = _GGUF_NAME.match(gguf_name)
    if match is None:
        return None
    layer, module, kind = match["layer"], match["module"], match["kind"]
    if layer is None:
        mapped = _TOP_LEVEL.get(module)
        return None if mapped is None else f"{mapped}.{kind}"
    mapped = _IN_BLOCK.get(module)
    return None if mapped is None else f"model.layers.{int(layer)}.{mapped}.{kind}"


def _rope_heads(name: str, heads: tuple[int, int]) -> int | None:
    """The head count whose row order q / k were given (convert_hf_to_gguf: n_head for q, n_head_kv for k);
    None for every other tensor."""
    if ".self_attn.q_proj." in name:
        return heads[0]
    if ".self_attn.k_proj." in name:
        return heads[1]
    return None


def _rope_permuted(name: str) -> bool:
    return _rope_heads(name, (1, 1)) is not None


# -- a full model --------------------------------------------------------------------------------


class GgufStore:
    """A GGUF model file as a checkpoint and a WeightSource: the same interface as TensorStore."""

    is_adapter = False
    is_classifier = False

    def __init__(self, path: Path, header: GgufFile | None = None):
        self.path = path
        self.header = header or read_header(path)
        header = self.header
        if header.kind == "adapter":
            raise CheckpointError(path, "is a GGUF LoRA adapter, not a model; give it as TUNED, after its base")
        split = header.metadata.get("split.count", 1)
        if isinstance(split, int) and split > 1:
            raise CheckpointError(path, f"is one part of a GGUF split into {split} files; join them first "
                                        "(llama-gguf-split --merge)")
        self.architecture = header.architecture
        self.mapped = self.architecture in HF_ARCHITECTURES
        self.config = self._config()
        self._tensors: dict[str, GgufTensor] = {}
        self._heads: dict[str, int] = {}
        heads = None
        for tensor in header.tensors:
            name = (hf_name(tensor.gguf_name) if self.mapped else None) or tensor.gguf_name
            if name in self._tensors:
                raise CheckpointError(path, f"holds two tensors that both read as {name}")
            self._tensors[name] = tensor
            if self.architecture in ROPE_PERMUTED and _rope_permuted(name):
                heads = heads or head_counts(self.config, path)
                self._heads[name] = _rope_heads(name, heads)
                check_rows(tensor.shape[0], self._heads[name], path, tensor.gguf_name)
        self.quantization = self._quantization()
        self.quantized = any(t.qtype not in FLOAT_TYPES for t in header.tensors if len(t.shape) >= 2)

    def __repr__(self) -> str:
        return f"GgufStore({self.path})"

    def _config(self) -> dict:
        """What pairing and the views need of config.json, from the GGUF metadata."""
        header, config = self.header, {"model_type": self.architecture}
        if self.architecture in HF_ARCHITECTURES:
            config["architectures"] = [HF_ARCHITECTURES[self.architecture]]
        for key, field in (("embedding_length", "hidden_size"), ("feed_forward_length", "intermediate_size"),
                           ("block_count", "num_hidden_layers"), ("attention.head_count", "num_attention_heads"),
                           ("attention.head_count_kv", "num_key_value_heads"), ("vocab_size", "vocab_size"),
                           ("context_length", "max_position_embeddings")):
            value = header.arch_value(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                config[field] = value
        tokens = header.metadata.get("tokenizer.ggml.tokens")
        if "vocab_size" not in config and isinstance(tokens, ArrayLength | list):
            config["vocab_size"] = tokens.length if isinstance(tokens, ArrayLength) else len(tokens)
        if "vocab_size" not in config:
            embedding = next((t for t in header.tensors if t.gguf_name == "token_embd.weight"), None)
            if embedding is not None and len(embedding.shape) == 2:
                config["vocab_size"] = embedding.shape[0]
        config["tie_word_embeddings"] = not any(t.gguf_name == "output.weight" for t in header.tensors)
        return config

    def _quantization(self) -> str:
        """The file type llama-quantize names (Q4_K_M, Q8_0, …), or the commonest type of its matrices."""
        import gguf

        file_type = self.header.metadata.get("general.file_type")
        if isinstance(file_type, int) and not isinstance(file_type, bool):
            try:
                name = gguf.LlamaFileType(file_type).name
            except ValueError:
                name = "GUESSED"
            if name != "GUESSED":
                return name.removeprefix("MOSTLY_").removeprefix("ALL_")
        counts = Counter(t.type_name for t in self.header.tensors if len(t.shape) >= 2)
        return counts.most_common(1)[0][0] if counts else "F32"

    @property
    def label(self) -> str:
        return self.path.name

    @property
    def description(self) -> str:
        return f"GGUF {self.quantization}"

    @property
    def layout(self) -> GgufStore:
        return self

    def warnings(self) -> list[str]:
        said = []
        if self.quantized:
            said.append(f"{self.path}: {self.description} is quantized: quantization noise is part of every ΔW "
                        "measured against it (a scan of the base against its own GGUF copy gives the noise floor)")
        if not self.mapped:
            said.append(f"{self.path}: GGUF architecture {self.architecture[:40] or '(none)'!r} keeps llama.cpp's "
                        "tensor names, so it pairs only with another GGUF of it")
        return said

    def names(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return self._tensors[name].shape

    def tensor(self, name: str) -> GgufTensor:
        return self._tensors[name]

    def info(self, name: str):
        """Where a tensor lies, for rewriting its file: not something spectui can do for GGUF."""
        raise CheckpointError(self.path, "is a GGUF file, and spectui writes only safetensors and .bin "
                                         "checkpoints; convert the model to safetensors to write a changed copy")

    def changes(self, name: str) -> bool:
        return name in self._tensors

    def experts(self) -> ExpertIndex:
        """None are split: llama.cpp's expert tensors (ffn_*_exps) keep their GGUF names."""
        return ExpertIndex()

    def unreadable(self, name: str) -> str | None:
        return None

    def delta_factors(self, spec) -> None:
        return None

    def refittable(self) -> None:
        return None

    def load(self, name: str) -> torch.Tensor:
        """One tensor in Hugging Face's layout: float types as stored, quantized ones as float32."""
        tensor = self._tensors[name]
        value = read_tensor(self.path, tensor)
        heads = self._heads.get(name)
        return unpermute_rows(value, heads) if heads else value


# -- a LoRA adapter ------------------------------------------------------------------------------


def gguf_file(path: Path) -> Path | None:
    """The GGUF file a path names: itself, or the only .gguf in a directory that holds no other
    weights; None when the path is not GGUF."""
    if not path.is_dir():
        return path if path.suffix.lower() == ".gguf" else None
    found = sorted(p for p in path.glob("*.gguf") if not p.name.startswith("."))
    if not found or any(path.glob("*.safetensors")) or any(path.glob("*.bin")):
        return None
    if len(found) > 1:
        shown = ", ".join(p.name for p in found[:3]) + (", …" if len(found) > 3 else "")
        raise CheckpointError(path, f"holds {len(found)} GGUF files ({shown}); name the one to open")
    return found[0]


def open_gguf_adapter(path: Path, base: TensorStore | GgufStore) -> LowRankModel | None:
    """A llama.cpp GGUF LoRA adapter (general.type "adapter") applied to `base`; None when the path
    is not one."""
    file = gguf_file(path)
    if file is None:
        return None
    header = read_header(file)
    if header.kind != "adapter":
        return None
    adapter_type = header.metadata.get("adapter.type", "lora")
    if adapter_type != "lora":
        raise CheckpointError(file, f"is a GGUF {str(adapter_type)[:40]!r} adapter; only LoRA adapters are supported")
    alpha = header.metadata.get("adapter.lora.alpha", 0.0)
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise CheckpointError(file, f"adapter.lora.alpha must be a finite number, not {alpha!r}")
    deltas, warnings, ranks = _gguf_deltas(file, header, base, float(alpha))
    if not deltas:
        raise CheckpointError(file, "is a GGUF LoRA adapter without any lora_a / lora_b factor pair")
    rank = "/".join(str(r) for r in sorted(ranks))
    scale = f" α={alpha:g}" if alpha else " α unset (scale 1)"
    return LowRankModel(base, file, deltas, f"GGUF LoRA r={rank}{scale}", warnings)


def _gguf_deltas(file: Path, header: GgufFile, base, alpha: float):
    """Each lora_a / lora_b pair as a LowRankDelta in Hugging Face's layout, as llama.cpp merges it:
    ΔW = alpha/r · B @ A (scale 1 when alpha is 0 or unset), r = B's column count; for token_embd the
    factors are stored flipped (A is (vocab, r), B is (hidden, r)), ΔW = A @ Bᵀ."""
    arch = header.architecture
    mapped = arch in HF_ARCHITECTURES
    pairs: dict[str, dict[str, GgufTensor]] = {}
    warnings = []
    for tensor in header.tensors:
        stem, _, part = tensor.gguf_name.rpartition(".")
        if part not in ("lora_a", "lora_b") or not stem:
            warnings.append(f"{file}: holds {tensor.gguf_name}, which is not a LoRA factor; it is ignored")
            continue
        if len(tensor.shape) != 2:
            raise CheckpointError(file, f"stores LoRA factor {tensor.gguf_name} with {len(tensor.shape)} dimensions")
        pairs.setdefault(stem, {})[part] = tensor
    heads = None
    deltas, ranks = {}, set()
    for stem, found in pairs.items():
        if set(found) != {"lora_a", "lora_b"}:
            raise CheckpointError(file, f"has only one of the two LoRA factors for {stem}")
        a, b = found["lora_a"], found["lora_b"]
        name = (hf_name(stem) if mapped else None) or stem
        embedding = stem == "token_embd.weight"
        if embedding:  # A (vocab, r), B (hidden, r): ΔW (vocab, hidden) = A @ Bᵀ
            rank, b_shape, a_shape = b.shape[1], (a.shape[0], a.shape[1]), (b.shape[1], b.shape[0])
            consistent = a.shape[1] == b.shape[1]
        else:  # A (r, in), B (out, r)
            rank, b_shape, a_shape = b.shape[1], b.shape, a.shape
            consistent = a.shape[0] == b.shape[1]
        if not consistent or rank < 1:
            raise CheckpointError(file, f"has LoRA factors for {stem} of different ranks (A {a.shape}, B {b.shape})")
        row_heads = None
        if arch in ROPE_PERMUTED and _rope_permuted(name):
            heads = heads or head_counts(base.config, getattr(base, "path", file))
            row_heads = _rope_heads(name, heads)
            check_rows(b.shape[0], row_heads, file, b.gguf_name)
        scaling = alpha / rank if alpha else 1.0
        ranks.add(rank)
        deltas[name] = LowRankDelta(module=stem.removesuffix(".weight"), b_shape=tuple(b_shape),
                                    a_shape=tuple(a_shape), scaling=scaling,
                                    factors=_factor_reader(file, a, b, embedding, row_heads))
    return deltas, warnings, ranks


def _factor_reader(file: Path, a: GgufTensor, b: GgufTensor, embedding: bool, heads: int | None):
    def factors():
        fa, fb = read_tensor(file, a).float(), read_tensor(file, b).float()
        if heads:
            fb = unpermute_rows(fb, heads)
        return (fa, fb.T) if embedding else (fb, fa)

    return factors
