"""Lazy, memory-bounded access to the tensors of one checkpoint on disk.

Only headers are read up front; a tensor's bytes are read when asked for, one at a time, so a
scan of a model twice as deep needs no more memory. Pickled `.bin` files are only ever opened
with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import math
import struct
import threading
import warnings
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from spectui.checkpoint.experts import ExpertIndex, index_experts
from spectui.checkpoint.quantized import QuantIndex, dequantize, dequantize_expert, index_quantized
from spectui.errors import FileInputError, one_line
from spectui.validate import is_int, json_object, parse_json, regular_file, text

if TYPE_CHECKING:  # torch is imported where tensors are touched: listing stays instant
    import torch

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
_ITEM_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
               "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}


class CheckpointError(FileInputError):
    """A checkpoint, adapter or shard that cannot be read as one."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str
    file: Path
    offset: int = 0  # safetensors: where the bytes start in the file, and how many
    nbytes: int = 0


class TensorStore:
    """Name → tensor over the weight files of one checkpoint (single file, shards, or `.bin`)."""

    def __init__(self, path: Path, files: list[Path], config: dict):
        self.path = path
        self.config = config
        self._infos: dict[str, TensorInfo] = {}
        for file in files:
            for info in _read_infos(file):
                self._infos.setdefault(info.name, info)
        self._lock = threading.Lock()
        self._open_file: Path | None = None
        self._bin: dict = {}

    def __repr__(self) -> str:
        return f"TensorStore({self.path})"

    @property
    def label(self) -> str:
        return self.path.name

    def names(self) -> list[str]:
        """The checkpoint's tensors (MXFP4 experts under the parameter they stand for)."""
        return list(self._infos) + self.quant.extra_names

    def __contains__(self, name: str) -> bool:
        return name in self._infos or name in self.quant.weights or name in self.experts()

    def info(self, name: str) -> TensorInfo:
        return self._infos[name]

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape; a quantized weight's own (not its packed storage's); an expert
        matrix's (out, in)."""
        if name in self.quant.weights:
            return self.quant.weights[name].shape
        part = self.experts().get(name)
        return part.shape if part is not None else self._infos[name].shape

    # -- what is inside: quantized weights, 3-D experts --------------------------------------------
    @cached_property
    def quant(self) -> QuantIndex:
        """Weights stored quantized, and every tensor that is not a float weight (headers, and
        bitsandbytes' small JSON states)."""
        return index_quantized(self._infos, self._load_stored, self.config)

    def experts(self) -> ExpertIndex:
        """The expert matrices inside 3-D expert tensors, by the names they are scanned under."""
        return self._experts

    @cached_property
    def _experts(self) -> ExpertIndex:
        quant = self.quant.weights

        def shape(name: str) -> tuple[int, ...]:
            return quant[name].shape if name in quant else self._infos[name].shape

        def dtype(name: str) -> str:
            return "F32" if name in quant else self._infos[name].dtype

        return index_experts(self.names(), shape, dtype, self.config)

    def unreadable(self, name: str) -> str | None:
        """Why a tensor cannot be read as a float weight (quantization state, an int tensor, a weight
        quantized in a way that cannot be read back), or None."""
        quantized = self.quant.weights.get(name)
        if quantized is not None:
            return quantized.problem
        return self.quant.reasons.get(name) or self.experts().problems.get(name)

    @property
    def quantized(self) -> bool:
        return bool(self.quant.kinds)

    @property
    def quantization(self) -> str:
        return ", ".join(self.quant.kinds)

    # -- as a WeightSource: a full checkpoint is its own layout, and any tensor may have changed --
    is_adapter = False

    @property
    def description(self) -> str:
        return f"full checkpoint ({self.quantization})" if self.quantized else "full checkpoint"

    @property
    def is_classifier(self) -> bool:
        architectures = self.config.get("architectures") or ()
        return any(str(name).endswith("ForSequenceClassification") for name in architectures)

    @property
    def layout(self) -> TensorStore:
        return self

    def warnings(self) -> list[str]:
        if not self.quantized:
            return []
        return [f"{self.path}: weights stored quantized ({self.quantization}), read back dequantized: "
                "quantization noise is part of every ΔW measured against an unquantized model"]

    def changes(self, name: str) -> bool:
        return name in self

    def delta_factors(self, spec) -> None:
        return None

    def refittable(self) -> None:
        return None

    def load(self, name: str) -> torch.Tensor:
        """Read one tensor: a quantized weight dequantized; an expert matrix (out, in) from its
        expert's bytes alone. safetensors bytes are read straight into the tensor (no memory map, so
        a scan's resident memory stays one matrix pair whatever the model's size); a `.bin` is
        memory-mapped, one file at a time."""
        quantized = self.quant.weights.get(name)
        if quantized is not None:
            if quantized.problem:
                raise CheckpointError(self.path, f"cannot read {name}: {quantized.problem}")
            return dequantize(quantized, self._load_stored)
        part = self.experts().get(name)
        if part is not None:
            return part.take(self._load_expert(part.stored, part.expert))
        return self._load_stored(name)

    def _load_stored(self, name: str) -> torch.Tensor:
        info = self._infos[name]
        if info.file.suffix == ".safetensors":
            return _read_safetensor(info)
        with self._lock:
            if self._open_file != info.file:
                self._bin = _torch_load(info.file)
                self._open_file = info.file
            return self._bin[name].clone()

    def _load_expert(self, name: str, expert: int) -> torch.Tensor:
        """One expert's slab of a 3-D tensor as stored; only its bytes are read from a safetensors file."""
        quantized = self.quant.weights.get(name)
        if quantized is not None:
            if quantized.problem:
                raise CheckpointError(self.path, f"cannot read {name}: {quantized.problem}")
            if quantized.experts:
                return dequantize_expert(quantized, self._read_expert, expert)
            return dequantize(quantized, self._load_stored)[expert]
        return self._read_expert(name, expert)

    def _read_expert(self, name: str, expert: int) -> torch.Tensor:
        info = self._infos[name]
        if info.file.suffix != ".safetensors":
            return self._load_stored(name)[expert]
        slab = info.nbytes // info.shape[0]
        return _read_safetensor(replace(info, offset=info.offset + expert * slab, nbytes=slab, shape=info.shape[1:]))


def _read_safetensor(info: TensorInfo) -> torch.Tensor:
    import torch

    buffer = torch.empty(info.nbytes, dtype=torch.uint8)
    try:
        with open(info.file, "rb") as fh:
            fh.seek(info.offset)
            got = fh.readinto(memoryview(buffer.numpy()))
    except OSError as err:
        raise CheckpointError(info.file, f"cannot be read ({err.strerror})") from err
    if got != info.nbytes:
        raise CheckpointError(info.file, f"is truncated: tensor {info.name} lies past the end of the file")
    dtype = _torch_dtype(info.dtype) or torch.uint8  # F8_E8M0 on a torch without it: its bytes
    if not info.shape:
        return buffer.view(dtype).reshape(())
    return buffer.view(dtype).reshape(info.shape)


def _read_infos(file: Path) -> list[TensorInfo]:
    if file.suffix == ".safetensors":
        return _safetensors_infos(file)
    state = _torch_load(file)
    return [TensorInfo(text(k, file, "a tensor name", CheckpointError), tuple(v.shape), _dtype_name(v.dtype), file,
                       nbytes=v.numel() * v.element_size()) for k, v in state.items()]


def _dtype_name(dtype: torch.dtype) -> str:
    """A torch dtype by the name safetensors gives it (F32, BF16, I8, …), so both formats read alike."""
    for name in _ITEM_SIZES:
        if _torch_dtype(name) == dtype:
            return name
    return str(dtype).removeprefix("torch.")


MAX_HEADER_BYTES = 100 << 20  # the safetensors format's own limit


def _safetensors_infos(file: Path) -> list[TensorInfo]:
    return _safetensors_header(file)[0]


def _safetensors_header(file: Path) -> tuple[list[TensorInfo], dict]:
    """Parse and check the header ourselves, every value before it is used: truncation, garbage and
    hostile headers get one sentence naming the file and the tensor. Also the `__metadata__` table."""
    size = regular_file(file, CheckpointError)
    try:
        with open(file, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(file, "is too short to be a safetensors file")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > min(size - 8, MAX_HEADER_BYTES):
                raise CheckpointError(file, "is not a valid safetensors file (header larger than file)")
            raw = fh.read(header_len)
    except OSError as err:
        raise CheckpointError(file, f"cannot be read ({err.strerror})") from err
    header = parse_json(raw, file, CheckpointError)
    if not isinstance(header, dict):
        raise CheckpointError(file, "is not a valid safetensors file (header is not a table)")
    metadata = header.get("__metadata__", {})
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise CheckpointError(file, "has a malformed __metadata__ table (not text values)")
    data_len = size - 8 - header_len
    return [_tensor_info(file, name, meta, 8 + header_len, data_len)
            for name, meta in header.items() if name != "__metadata__"], metadata


def read_safetensors(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of a small safetensors file (a cache entry), and its metadata: read into memory
    once, not memory-mapped, so a file as large as a matrix does not count twice in resident memory."""
    infos, metadata = _safetensors_header(file)
    return {info.name: _read_safetensor(info) for info in infos}, metadata


def _tensor_info(file: Path, name: str, meta, data_start: int, data_len: int) -> TensorInfo:
    text(name, file, "a tensor name", CheckpointError)
    if not isinstance(meta, dict):
        raise CheckpointError(file, f"has a malformed header entry for {name}")
    dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _ITEM_SIZES:
        raise CheckpointError(file, f"stores {name} in unsupported dtype {dtype}")
    if not isinstance(shape, list) or len(shape) > 8 or not all(is_int(d) and d >= 0 for d in shape):
        raise CheckpointError(file, f"has a malformed shape for {name}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_int(o) for o in offsets):
        raise CheckpointError(file, f"has malformed data offsets for {name}")
    begin, end = offsets
    if not 0 <= begin <= end or end > data_len:
        raise CheckpointError(file, f"is truncated: tensor {name} lies past the end of the file")
    if end - begin != math.prod(shape) * _ITEM_SIZES[dtype]:
        raise CheckpointError(file, f"is corrupt: tensor {name} has the wrong number of bytes")
    return TensorInfo(name, tuple(shape), dtype, file, offset=data_start + begin, nbytes=end - begin)


def _torch_load(file: Path) -> dict[str, torch.Tensor]:
    """`weights_only=True` refuses anything but tensors, so untrusted pickles cannot run code."""
    import pickle
    import zipfile

    import torch

    def load(mmap: bool):
        with warnings.catch_warnings():  # torch warns of odd pickle protocols; the refusal says enough
            warnings.simplefilter("ignore")
            return torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)

    regular_file(file, CheckpointError)  # a FIFO would block the read forever

    try:
        try:
            state = load(mmap=True)
        except RuntimeError as err:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            state = load(mmap=False)
    except pickle.UnpicklingError as err:
        raise CheckpointError(file, "holds objects other than tensors; refusing to unpickle it") from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(file, f"is not a readable PyTorch checkpoint ({one_line(err)})") from err
    except OSError as err:
        raise CheckpointError(file, f"cannot be read ({err.strerror or err})") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(file, "does not hold a state dict of tensors")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def read_json(file: Path) -> dict:
    return json_object(file, CheckpointError)


def weight_files(path: Path) -> list[Path]:
    """The weight files of a checkpoint directory or file, following a shard index when present."""
    if path.is_file():
        if path.name.endswith(".index.json"):
            return _index_files(path)
        if path.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            return [path]
        raise CheckpointError(path, "is not a weights file (expected .safetensors, .bin, .gguf or an index.json)")
    for index in (SAFETENSORS_INDEX, BIN_INDEX):
        if (path / index).is_file():
            return _index_files(path / index)
    for single in ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin"):
        if (path / single).is_file():  # adapter_model.bin: PEFT before safetensors became its default
            return [path / single]
    found = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not found:
        raise CheckpointError(
            path, "holds no model weights (expected model.safetensors, a shard index, pytorch_model.bin, "
                  "an adapter_model file or one .gguf)"
        )
    return found


def _index_files(index: Path) -> list[Path]:
    """The shards a shard index names; each must be a file inside the index's own directory."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(index, "has no weight_map")
    folder = index.parent.resolve()
    files = []
    for shard in dict.fromkeys(weight_map.values()):
        if not isinstance(shard, str) or not shard or "\0" in shard:
            raise CheckpointError(index, f"names a shard that is not a file name: {shard!r}")
        file = index.parent / shard
        if Path(shard).is_absolute() or not file.resolve().is_relative_to(folder):
            raise CheckpointError(index, f"names shard {shard}, which lies outside {index.parent}; refusing to read it")
        if not file.is_file():
            raise CheckpointError(index, f"names shard {shard}, which is missing")
        files.append(file)
    return files


def locate(reference: str, relative_to: Path | None = None) -> Path:
    """A model given as a path (absolute, from the working directory, or from `relative_to`) or as a
    Hugging Face hub id already in the local cache; never goes to the network."""
    candidates = [Path(reference).expanduser()]
    if relative_to is not None:
        candidates.append((relative_to / reference).resolve())
    for candidate in candidates:
        if candidate.exists():
            return candidate
    cached = _hub_cache_snapshot(reference)
    if cached is None:
        raise CheckpointError(reference, "no such file or directory, and not in the local Hugging Face cache")
    return cached


def _hub_cache_snapshot(repo_id: str) -> Path | None:
    if repo_id.count("/") > 1 or repo_id.startswith((".", "/", "~")):
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        return None



def _torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
            "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U64": torch.uint64,
            "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
            "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
            "F8_E8M0": getattr(torch, "float8_e8m0fnu", None)}[name]
