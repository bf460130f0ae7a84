"""Content-addressed on-disk cache of decompositions and results.

Keys hash the tensor bytes and the algorithm version, so a base decomposed once serves every tuned
model compared with it, whatever file it was read from. Entries are safetensors files (no pickle),
written to a temporary name and renamed; each carries a digest of its data, so a damaged entry is
noticed, dropped and recomputed. The cache is capped in size: past the cap, the least recently
used entries go. A manifest per model scanned says which entries are its (`spectui cache info`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spectui import atomic
from spectui.compact import CompactBase
from spectui.defaults import HEAD_VECTORS
from spectui.errors import InputError
from spectui.spectral import ALGORITHM_VERSION, BaseSpectrum, MatrixResult
from spectui.validate import parse_json, read_bytes


def tensor_digest(*parts: torch.Tensor | str) -> str:
    """SHA-256: where CPUs hash it in hardware (x86 SHA extensions, ARMv8), twice BLAKE2b's speed;
    a warm scan spends a sixth of its time here."""
    h = hashlib.sha256()
    h.update(f"spectui-v{ALGORITHM_VERSION}".encode())
    for part in parts:
        if isinstance(part, str):
            h.update(part.encode())
        else:
            t = part.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()


def _entry_digest(key: str, arrays: dict[str, np.ndarray], meta: dict[str, str]) -> str:
    """What an entry must hash to: its key, every metadata item and every array (name, dtype, shape,
    bytes), so a damaged byte anywhere, or an entry under another key's name, is noticed."""
    h = hashlib.sha256(key.encode())
    for name in sorted(meta):
        h.update(f"\0{name}={meta[name]}".encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        h.update(f"\0{name}:{array.dtype.str}{array.shape}".encode())
        h.update(array.view(np.uint8))
    return h.hexdigest()


# what each result array must look like to be used (number of dimensions, dtype kind)
_RESULT_ARRAYS = {"sigma_base": (1, "f"), "sigma_tuned": (1, "f"), "sigma_delta": (1, "f"), "max_cos": (1, "f"),
                  "best_base": (1, "i"), "similarity": (2, "f"), "overlap": (2, "f"), "delta_energy_base": (1, "f"),
                  "delta_energy_tuned": (1, "f")}
_BASE_ARRAYS = {"sigma": (1, "f"), "head": (2, "f"), "rest": (2, "i"), "step": (1, "f")}
_SPECTRUM_ARRAYS = {"sigma": (1, "f"), "head": (2, "f"), "head_error": (1, "f")}
KINDS = ("base", "pair", "spectrum")
MANIFEST_LIMIT = 64 << 20
DEFAULT_MAX_BYTES = 20 << 30  # a laptop disk spares this; a whole 8B base's entries fit
_KEY = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ModelEntries:
    """What the cache holds for one model scanned: its path, role, and entries still present."""

    path: str
    role: str  # base | tuned
    entries: int
    bytes: int


class Cache:
    """`Cache(None)` is a cache that never stores: the `--no-cache` behaviour, with no special cases.

    The cache never gives a wrong answer and never stops a scan: an entry that fails its digest or
    its shape checks is dropped and recomputed; when entries cannot be written (read-only, full,
    not a directory) `warn` hears it once and the scan goes on without writing."""

    def __init__(self, root: Path | None, warn: Callable[[str], None] | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        self.root = root
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._warn = warn or (lambda message: None)
        self._writable = True
        self._lock = threading.Lock()
        self._size: int | None = None  # bytes held, counted once and then kept up to date

    def _file(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.safetensors"

    def _read(self, kind: str, key: str, expected: dict[str, tuple[int, str]]):
        if self.root is None:
            return None
        file = self._file(kind, key)
        if not file.is_file():
            self.misses += 1
            return None
        from spectui.checkpoint.files import read_safetensors

        try:
            tensors, meta = read_safetensors(file)
            arrays = {name: t.numpy() for name, t in tensors.items()}
            if meta.pop("digest", None) != _entry_digest(key, arrays, meta):
                raise ValueError("digest mismatch")
            if {name: (a.ndim, a.dtype.kind) for name, a in arrays.items()} != expected:
                raise ValueError("unexpected arrays")
        except Exception:  # any damage at all: drop the entry and recompute
            self._drop(kind, key)
            return None
        with contextlib.suppress(OSError):
            os.utime(file)  # recently used: the last to be evicted
        self.hits += 1
        return arrays, meta

    def _drop(self, kind: str, key: str, was_read: bool = False) -> None:
        """An entry that cannot be used (damaged, or read but not what it must be): gone, and a miss."""
        with contextlib.suppress(OSError):
            self._file(kind, key).unlink()
        self.hits -= was_read
        self.misses += 1

    def _write(self, kind: str, key: str, arrays: dict[str, np.ndarray], meta: dict[str, str]) -> None:
        if self.root is None or not self._writable:
            return
        from safetensors.numpy import save

        data = save(arrays, metadata={**meta, "digest": _entry_digest(key, arrays, meta)})
        if len(data) > self.max_bytes:
            return
        with self._lock:  # room made and used by one writer at a time, so the count stays true
            if not self._writable:
                return
            try:
                self._make_room(len(data))
                atomic.write_bytes(self._file(kind, key), data)
            except OSError as err:
                self._writable = False
                self._warn(f"{self.root}: cannot write the cache ({err.strerror or err}); going on without it")

    # -- size -----------------------------------------------------------------------------------
    def entries(self) -> list[tuple[Path, int, float]]:
        """(file, bytes, last use) of every entry."""
        found = []
        for kind in KINDS:
            for file in (self.root / kind).glob("*/*.safetensors") if self.root else ():
                with contextlib.suppress(OSError):
                    info = file.stat()
                    found.append((file, info.st_size, info.st_mtime))
        return found

    def _make_room(self, incoming: int) -> None:
        """Evict the least recently used entries until `incoming` more bytes fit under the cap
        (called holding the lock)."""
        if self._size is None:
            self._size = sum(size for _, size, _ in self.entries())
        self._size += incoming
        if self._size <= self.max_bytes:
            return
        self._size = sum(size for _, size, _ in self.entries()) + incoming  # other processes write too
        for file, size, _ in sorted(self.entries(), key=lambda entry: entry[2]):
            if self._size <= self.max_bytes:
                break
            with contextlib.suppress(OSError):
                file.unlink()
                self._size -= size

    # -- which entries are whose ----------------------------------------------------------------
    def remember(self, model: Path, role: str, keys: dict[str, set[str]]) -> None:
        """Add the entries a scan used to the model's manifest (for `spectui cache info / clear`)."""
        if self.root is None or not self._writable or not any(keys.values()):
            return
        file = self._manifest(model)
        known = self._read_manifest(file) or {"path": str(model.resolve()), "role": role, "keys": {}}
        for kind, new in keys.items():
            known["keys"][kind] = sorted(set(known["keys"].get(kind, [])) | new)
        with contextlib.suppress(OSError):
            atomic.write_text(file, json.dumps(known))

    def models(self) -> list[ModelEntries]:
        """Every model with a manifest, and how much of what it used is still cached."""
        listed = []
        for file in sorted((self.root / "models").glob("*.json")) if self.root else ():
            manifest = self._read_manifest(file)
            if manifest is None:
                continue
            present = [self._file(kind, key) for kind, keys in manifest["keys"].items() for key in keys]
            sizes = [f.stat().st_size for f in present if f.is_file()]
            listed.append(ModelEntries(manifest["path"], manifest["role"], len(sizes), sum(sizes)))
        return listed

    def clear(self, model: Path | None = None) -> int:
        """Remove every entry (and manifest), or one model's; returns the bytes freed. Entries a
        model shares with another (a base serves many tuned models) go with it."""
        freed = 0
        if model is None:
            targets = [file for file, _, _ in self.entries()] + sorted((self.root / "models").glob("*.json"))
        else:
            manifest = self._read_manifest(self._manifest(model)) or {"keys": {}}
            targets = [self._file(kind, key) for kind, keys in manifest["keys"].items() for key in keys]
            targets.append(self._manifest(model))
        for file in targets:
            with contextlib.suppress(OSError):
                size = file.stat().st_size
                file.unlink()
                freed += size
        self._size = None
        return freed

    def _manifest(self, model: Path) -> Path:
        return self.root / "models" / f"{hashlib.sha256(str(model.resolve()).encode()).hexdigest()[:32]}.json"

    def _read_manifest(self, file: Path) -> dict | None:
        """A manifest, checked: keys name entries, so only hex digests of the right kinds pass."""
        try:
            data = parse_json(read_bytes(file, MANIFEST_LIMIT), file)
        except InputError:  # not a regular file (a FIFO would block), too large, not JSON
            return None
        if not (isinstance(data, dict) and isinstance(data.get("path"), str) and data["path"].isprintable()
                and data.get("role") in ("base", "tuned")
                and isinstance(data.get("keys"), dict)):
            return None
        keys = data["keys"]
        if not all(kind in KINDS and isinstance(values, list) and all(isinstance(k, str) and _KEY.fullmatch(k)
                                                                         for k in values)
                   for kind, values in keys.items()):
            return None
        return data

    def get_base(self, key: str, shape: tuple[int, int]) -> CompactBase | None:
        """A base matrix's decomposition, as `CompactBase` keeps it; None unless it fits `shape`."""
        entry = self._read("base", key, _BASE_ARRAYS)
        if entry is None:
            return None
        base = CompactBase(**{name: torch.from_numpy(array) for name, array in entry[0].items()})
        if not base.fits(shape):
            self._drop("base", key, was_read=True)
            return None
        return base

    def put_base(self, key: str, base: CompactBase) -> None:
        self._write("base", key, {name: getattr(base, name).contiguous().numpy() for name in _BASE_ARRAYS}, {})

    def get_spectrum(self, key: str, shape: tuple[int, int]) -> BaseSpectrum | None:
        """What the counts need of a base matrix: from its spectrum entry, or from its
        decomposition where that is cached; None unless it fits `shape`."""
        entry = self._read("spectrum", key, _SPECTRUM_ARRAYS)
        if entry is not None:
            arrays = entry[0]
            found = BaseSpectrum(arrays["sigma"], arrays["head"], arrays["head_error"])
            if found.fits(shape):
                return found
            self._drop("spectrum", key, was_read=True)
            return None
        base = self.get_base(key, shape) if self.root is not None and self._file("base", key).is_file() else None
        if base is None:
            return None
        head = base.head[:, :HEAD_VECTORS].numpy()
        found = BaseSpectrum(base.sigma.numpy(), head, np.zeros(head.shape[1]))
        self.put_spectrum(key, found)  # next time a few KB are read, not every vector
        return found

    def put_spectrum(self, key: str, spectrum: BaseSpectrum) -> None:
        self._write("spectrum", key, {"sigma": np.ascontiguousarray(spectrum.sigma, dtype=np.float64),
                                      "head": np.ascontiguousarray(spectrum.head, dtype=np.float32),
                                      "head_error": np.ascontiguousarray(spectrum.head_error, dtype=np.float64)}, {})

    def get_result(self, key: str) -> MatrixResult | None:
        entry = self._read("pair", key, _RESULT_ARRAYS)
        if entry is None:
            return None
        try:
            return MatrixResult.from_arrays(*entry)
        except (KeyError, ValueError):  # metadata that passed the digest but does not parse
            self._drop("pair", key, was_read=True)
            return None

    def put_result(self, key: str, result: MatrixResult) -> None:
        self._write("pair", key, *result.to_arrays())
