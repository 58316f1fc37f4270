"""Resumable computation: partial results of a map, keyed by everything that determines them.

Layout: ``<cache_dir>/<key>/`` holds ``key.json`` (what the key was computed from, for inspection) and one
``<phase>-<chunk>.npz`` per finished chunk of draws (per-draw PSNR drops and "ROI changed" flags, with a
SHA-256 checksum of their bytes). Each file is written to a temporary name and renamed into place, so a run
killed at any moment leaves only whole files. A file that cannot be read, or whose checksum does not match,
is ignored with a :class:`~cem_checks.errors.CacheWarning` and its chunk is recomputed.

Since every chunk's random draws are derived from (seed, phase, chunk index) alone, a resumed run replays
the same draws and produces the same map as an uninterrupted run with the same seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CacheWarning, CEMInputError

CACHE_VERSION = 1


def hash_model(model: Any) -> str:
    """SHA-256 of an ``nn.Module``'s class name and state_dict (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def hash_tensor(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _checksum(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


class ChunkCache:
    """Per-chunk results of one job under ``root / key``; ``None`` root means no caching."""

    def __init__(self, root: str | os.PathLike | None, material: dict[str, Any]):
        self.enabled = root is not None
        self.hits = 0
        self.writes = 0
        if not self.enabled:
            self.dir = None
            return
        text = json.dumps({"cache_version": CACHE_VERSION, **material}, sort_keys=True, default=str)
        self.key = hashlib.sha256(text.encode()).hexdigest()[:24]
        try:
            self.dir = Path(root) / self.key
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CEMInputError(f"cache_dir={str(root)!r} cannot be created or written: {exc}. Pass a writable folder.") from exc
        key_file = self.dir / "key.json"
        if not key_file.exists():
            self._atomic_write_text(key_file, json.dumps(json.loads(text), indent=2, sort_keys=True))

    @staticmethod
    def _atomic_write_text(path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def _path(self, phase: str, index: int) -> Path:
        return self.dir / f"{phase}-{index:05d}.npz"

    def get(self, phase: str, index: int, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The cached (drops, changed) of chunk ``index`` of ``phase``, or None (missing or corrupted)."""
        if not self.enabled:
            return None
        path = self._path(phase, index)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                drops, changed = data["drops"], data["changed"]
                checksum = str(data["checksum"])
            if drops.shape != (n,) or changed.shape != (n,) or checksum != _checksum(drops, changed):
                raise ValueError("size or checksum mismatch")
        except Exception as exc:  # noqa: BLE001 - any unreadable file is treated the same way
            warnings.warn(
                f"ignoring corrupted cache file {str(path)!r} ({type(exc).__name__}: {exc}); its draws are recomputed.",
                CacheWarning,
                stacklevel=3,
            )
            try:
                path.unlink()
            except OSError:
                pass
            return None
        self.hits += 1
        return drops, changed

    def put(self, phase: str, index: int, drops: np.ndarray, changed: np.ndarray) -> None:
        if not self.enabled:
            return
        path = self._path(phase, index)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, drops=drops, changed=changed, checksum=np.array(_checksum(drops, changed)))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        self.writes += 1
