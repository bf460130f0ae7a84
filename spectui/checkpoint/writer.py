"""Write checkpoints: a store's files re-written with some tensors replaced, in the same files,
formats, sharding and per-tensor dtypes; and LoRA adapters with re-fitted factors.

Everything is written into a temporary directory beside the destination and renamed into place
(`spectui.atomic`), one weight file's tensors in memory at a time; sources are only ever read.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

import torch

from spectui import atomic
from spectui.checkpoint.adapters import ADAPTER_CONFIG, LoraAdapter, LoraModule
from spectui.checkpoint.files import BIN_INDEX, SAFETENSORS_INDEX, CheckpointError, TensorStore
from spectui.errors import one_line

# Another copy of the weights beside the ones rewritten would still hold the old model.
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx"}

NewTensor = Callable[[str], torch.Tensor]


def write_checkpoint(store: TensorStore, out: Path, changed: Collection[str], new_tensor: NewTensor) -> None:
    """`store` re-written as `out` with the `changed` tensors replaced by `new_tensor(name)` (cast
    to each tensor's stored dtype); a file without a changed tensor is copied byte for byte. An
    expert matrix's name (`store.experts()`) replaces that expert's part of its 3-D tensor."""
    if getattr(store, "quantized", False):
        raise CheckpointError(store.path, f"stores its weights quantized ({store.quantization}), and spectui "
                                          "writes only float checkpoints; dequantize the model to write a changed "
                                          "copy")
    with atomic.directory(out, replace=True) as tmp:
        _write_store(store, tmp, changed, new_tensor)


def write_lora_adapter(adapter: LoraAdapter, out: Path, factors: Mapping[str, torch.Tensor],
                       ranks: Mapping[LoraModule, int]) -> None:
    """The adapter with some factors replaced (tensor key → B or A, already divided by the
    module's scaling); `ranks` gives modules whose rank changed, which keep their scaling through
    rank_pattern / alpha_pattern entries."""
    with atomic.directory(out, replace=True) as tmp:
        _write_store(adapter.store, tmp, factors.keys(), factors.__getitem__, skip={ADAPTER_CONFIG})
        config = _adapter_config(adapter, ranks, out)
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def _adapter_config(adapter: LoraAdapter, ranks: Mapping[LoraModule, int], out: Path) -> dict:
    """The source config, with pattern entries (first, so they win) for modules whose rank grew,
    and a relative base path re-pointed from `out`."""
    config = dict(adapter.config)
    rslora = bool(config.get("use_rslora"))
    grown = {re.escape(module.module): (module, rank) for module, rank in ranks.items() if rank != module.rank}
    if grown:
        config["rank_pattern"] = {**{key: rank for key, (_, rank) in grown.items()},
                                  **(config.get("rank_pattern") or {})}
        alphas = {key: module.scaling * (math.sqrt(rank) if rslora else rank) for key, (module, rank) in grown.items()}
        config["alpha_pattern"] = {**alphas, **(config.get("alpha_pattern") or {})}
    reference = config.get("base_model_name_or_path")
    if reference and not Path(reference).is_absolute() and (adapter.path / reference).exists():
        base = (adapter.path / reference).resolve()
        config["base_model_name_or_path"] = os.path.relpath(base, out.resolve())
    return config


def _write_store(store: TensorStore, out: Path, changed: Collection[str], new_tensor: NewTensor,
                 skip: Collection[str] = ()) -> None:
    experts, stored = store.experts(), set(store.names())
    parts: dict[str, list[str]] = {}  # 3-D tensor → its changed expert matrices
    for name in changed:
        if (part := experts.get(name)) is not None and name not in stored:
            parts.setdefault(part.stored, []).append(name)
    files = list(dict.fromkeys(store.info(name).file for name in store.names()))
    for file in files:
        names = [n for n in store.names() if store.info(n).file == file]
        if not any(n in changed or n in parts for n in names):
            shutil.copyfile(file, out / file.name)
            continue
        tensors = {}
        for name in names:
            original = store.load(name)
            tensor = new_tensor(name).to(original.dtype).contiguous() if name in changed else original
            if name in parts:
                tensor = tensor.clone()
                for part_name in parts[name]:
                    part = experts.get(part_name)
                    part.put(tensor[part.expert], new_tensor(part_name))
            tensors[name] = tensor
        _save(tensors, file, out / file.name)
    if store.path.is_dir():
        index = SAFETENSORS_INDEX if files[0].suffix == ".safetensors" else BIN_INDEX
        _copy_side_files(store.path, out, index=index, skip=skip)


def _save(tensors: dict[str, torch.Tensor], like: Path, file: Path) -> None:
    if like.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(like), framework="pt") as handle:
            metadata = handle.metadata()
        try:
            save_file(tensors, str(file), metadata=metadata)
        except Exception as err:  # safetensors' own error type, for a full disk among others
            raise OSError(errno.EIO, one_line(err), str(file)) from err
        os.chmod(file, 0o666 & ~_umask())  # safetensors creates its files 0600; outputs get the usual mode
    else:
        torch.save(tensors, file)


def _umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux), since
    setting it to read it back races with other threads creating files."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _copy_side_files(source: Path, out: Path, index: str, skip: Collection[str]) -> None:
    """Config, tokenizer and other small files; other copies of the weights and their indexes are
    left out, since they would still hold the old model."""
    for file in source.iterdir():
        other_index = file.name.endswith(".index.json") and file.name != index
        stale = file.suffix in _WEIGHT_SUFFIXES or other_index
        if file.is_file() and not stale and file.name not in skip:
            shutil.copyfile(file, out / file.name)
