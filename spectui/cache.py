"""Content-addressed on-disk cache of decompositions and results.

Keys hash the tensor bytes and the algorithm version, so a base decomposed once serves every tuned
model compared with it, whatever file it was read from. Entries are safetensors files (no pickle),
written to a temporary name and renamed; each carries a digest of its data, so a damaged entry is
noticed, dropped and recomputed.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from spectui import atomic
from spectui.spectral import ALGORITHM_VERSION, Decomposition, MatrixResult


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
                  "best_base": (1, "i"), "similarity": (2, "f")}
_DECOMPOSITION_ARRAYS = {"sigma": (1, "f"), "u": (2, "f")}


class Cache:
    """`Cache(None)` is a cache that never stores: the `--no-cache` behaviour, with no special cases.

    The cache never gives a wrong answer and never stops a scan: an entry that fails its digest or
    its shape checks is dropped and recomputed; when entries cannot be written (read-only, full,
    not a directory) `warn` hears it once and the scan goes on without writing."""

    def __init__(self, root: Path | None, warn: Callable[[str], None] | None = None):
        self.root = root
        self.hits = 0
        self.misses = 0
        self._warn = warn or (lambda message: None)
        self._writable = True

    def _file(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.safetensors"

    def _read(self, kind: str, key: str, expected: dict[str, tuple[int, str]]):
        if self.root is None:
            return None
        file = self._file(kind, key)
        if not file.is_file():
            self.misses += 1
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(file), framework="np") as fh:
                meta = dict(fh.metadata() or {})
                arrays = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118 (not iterable)
            if meta.pop("digest", None) != _entry_digest(key, arrays, meta):
                raise ValueError("digest mismatch")
            if {name: (a.ndim, a.dtype.kind) for name, a in arrays.items()} != expected:
                raise ValueError("unexpected arrays")
        except Exception:  # any damage at all: drop the entry and recompute
            with contextlib.suppress(OSError):
                file.unlink()
            self.misses += 1
            return None
        self.hits += 1
        return arrays, meta

    def _write(self, kind: str, key: str, arrays: dict[str, np.ndarray], meta: dict[str, str]) -> None:
        if self.root is None or not self._writable:
            return
        from safetensors.numpy import save

        data = save(arrays, metadata={**meta, "digest": _entry_digest(key, arrays, meta)})
        try:
            atomic.write_bytes(self._file(kind, key), data)
        except OSError as err:
            self._writable = False
            self._warn(f"{self.root}: cannot write the cache ({err.strerror or err}); going on without it")

    def get_decomposition(self, key: str) -> Decomposition | None:
        entry = self._read("base", key, _DECOMPOSITION_ARRAYS)
        if entry is None:
            return None
        arrays, _ = entry
        return Decomposition(sigma=torch.from_numpy(arrays["sigma"]), u=torch.from_numpy(arrays["u"]))

    def put_decomposition(self, key: str, dec: Decomposition) -> None:
        arrays = {"sigma": dec.sigma.cpu().numpy(), "u": dec.u.cpu().contiguous().numpy()}
        self._write("base", key, arrays, {})

    def get_result(self, key: str) -> MatrixResult | None:
        entry = self._read("pair", key, _RESULT_ARRAYS)
        if entry is None:
            return None
        try:
            return MatrixResult.from_arrays(*entry)
        except (KeyError, ValueError):  # metadata that passed the digest but does not parse
            self.hits -= 1
            self.misses += 1
            return None

    def put_result(self, key: str, result: MatrixResult) -> None:
        self._write("pair", key, *result.to_arrays())
