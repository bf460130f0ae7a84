"""Content-addressed on-disk cache of decompositions and results.

Keys hash the tensor bytes and the algorithm version, so a base decomposed once serves every tuned
model compared with it, whatever file it was read from. Entries are safetensors files (no pickle),
written to a temporary name and renamed; each carries a digest of its data, so a damaged entry is
noticed, dropped and recomputed.
"""

from __future__ import annotations

import hashlib
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


def _data_digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name]).view(np.uint8))
    return h.hexdigest()


class Cache:
    """`Cache(None)` is a cache that never stores: the `--no-cache` behaviour, with no special cases."""

    def __init__(self, root: Path | None):
        self.root = root
        self.hits = 0
        self.misses = 0

    def _file(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.safetensors"

    def _read(self, kind: str, key: str) -> tuple[dict[str, np.ndarray], dict[str, str]] | None:
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
            if meta.pop("digest", None) != _data_digest(arrays):
                raise ValueError("digest mismatch")
        except Exception:  # any damage at all: drop the entry and recompute
            file.unlink(missing_ok=True)
            self.misses += 1
            return None
        self.hits += 1
        return arrays, meta

    def _write(self, kind: str, key: str, arrays: dict[str, np.ndarray], meta: dict[str, str]) -> None:
        if self.root is None:
            return
        from safetensors.numpy import save

        atomic.write_bytes(self._file(kind, key), save(arrays, metadata={**meta, "digest": _data_digest(arrays)}))

    def get_decomposition(self, key: str) -> Decomposition | None:
        entry = self._read("base", key)
        if entry is None:
            return None
        arrays, _ = entry
        return Decomposition(sigma=torch.from_numpy(arrays["sigma"]), u=torch.from_numpy(arrays["u"]))

    def put_decomposition(self, key: str, dec: Decomposition) -> None:
        arrays = {"sigma": dec.sigma.cpu().numpy(), "u": dec.u.cpu().contiguous().numpy()}
        self._write("base", key, arrays, {})

    def get_result(self, key: str) -> MatrixResult | None:
        entry = self._read("pair", key)
        return MatrixResult.from_arrays(*entry) if entry else None

    def put_result(self, key: str, result: MatrixResult) -> None:
        self._write("pair", key, *result.to_arrays())
