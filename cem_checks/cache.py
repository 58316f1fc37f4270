"""Resumable computation: partial results of a map, keyed by everything that determines them.

Layout: ``<cache_dir>/<key>/`` holds ``key.json`` (what the key was computed from, for inspection), one
``<phase>-<chunk>.npz`` per finished chunk of draws (per-draw PSNR drops and "ROI changed" flags, with a
SHA-256 checksum of their bytes; ``<phase>-local-<chunk>.npz`` for draws evaluated locally) and one
``check-*.json`` per verdict of a check the run makes once (batch independence, an exact crop, local
evaluation), so a rerun whose draws are all cached repeats none of them. Each file is written to a temporary name and renamed into place, so a run
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

from ._io import atomic_write, atomic_write_text
from .errors import CacheWarning, CEMInputError

CACHE_VERSION = 1


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def hash_model(model: Any) -> str:
    """SHA-256 of an ``nn.Module``: its class (module and name), ``repr`` (constructor settings shown by its
    layers), state_dict and every buffer, persistent or not (names, dtypes, shapes and bytes).

    Settings kept in plain attributes that ``repr`` does not show are not covered: pass ``cache_key`` to
    :func:`~cem_checks.compute_cem` to tell such models apart.
    """
    h = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}\n{model!r}".encode())
    tensors = dict(model.state_dict())
    tensors.update({f"buffer:{k}": v for k, v in model.named_buffers()})
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def hash_tensor(t: torch.Tensor) -> str:
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}".encode())
    h.update(_tensor_bytes(t))
    return h.hexdigest()


def digest(*parts: Any) -> str:
    """A short SHA-256 of numpy arrays, tensors and plain values (what a chunk of draws was computed for)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.Tensor):
            p = p.detach().cpu().numpy()
        if isinstance(p, np.ndarray):
            h.update(f"{p.dtype}:{p.shape}".encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(repr(p).encode())
    return h.hexdigest()[:32]


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
        self.hits = 0  # chunks of draws read back
        self.writes = 0  # chunks of draws written
        self.check_hits = 0  # verdicts of checks (JSON records) read back
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
            atomic_write_text(key_file, json.dumps(json.loads(text), indent=2, sort_keys=True))

    def _path(self, phase: str, index: int) -> Path:
        return self.dir / f"{phase}-{index:05d}.npz"

    def has(self, phase: str, index: int) -> bool:
        """Whether a file for chunk ``index`` of ``phase`` exists (it may still fail :meth:`get`'s checks)."""
        return self.enabled and self._path(phase, index).exists()

    def get(self, phase: str, index: int, n: int, what: str = "") -> tuple[np.ndarray, np.ndarray] | None:
        """The cached (drops, changed) of chunk ``index`` of ``phase``, or None (missing or corrupted).

        ``what`` is a digest of the interventions the chunk stands for (blocks, patches, frame); a file
        written for other interventions is treated as corrupted."""
        if not self.enabled:
            return None
        path = self._path(phase, index)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                drops, changed = data["drops"], data["changed"]
                checksum = str(data["checksum"])
                stored_what = str(data["what"]) if "what" in data.files else ""
            if drops.shape != (n,) or changed.shape != (n,) or checksum != _checksum(drops, changed):
                raise ValueError("size or checksum mismatch")
            if stored_what != what:
                raise ValueError("written for other interventions")
        except PermissionError as exc:
            warnings.warn(f"cannot read cache file {str(path)!r} ({exc}); its draws are recomputed.", CacheWarning,
                          stacklevel=3)
            return None
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

    def get_record(self, name: str) -> dict[str, Any] | None:
        """The JSON record ``name`` (a verdict of a check the run made once, e.g. whether a crop is exact), or None."""
        if not self.enabled:
            return None
        path = self.dir / f"{name}.json"
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
        except Exception as exc:  # noqa: BLE001 - any unreadable file is treated the same way
            warnings.warn(f"ignoring corrupted cache file {str(path)!r} ({type(exc).__name__}: {exc}); the check is "
                          "run again.", CacheWarning, stacklevel=3)
            return None
        self.check_hits += 1
        return record

    def put_record(self, name: str, record: dict[str, Any]) -> None:
        """Write the JSON record ``name`` atomically; a failed write warns and the run goes on."""
        if not self.enabled:
            return
        path = self.dir / f"{name}.json"
        try:
            atomic_write_text(path, json.dumps(record, sort_keys=True, default=str))
        except OSError as exc:
            warnings.warn(f"cannot write cache file {str(path)!r} ({exc}); this check is not cached.", CacheWarning,
                          stacklevel=3)

    def put(self, phase: str, index: int, drops: np.ndarray, changed: np.ndarray, what: str = "") -> None:
        """Write a chunk atomically; a failed write (e.g. a full disk) warns and the run goes on uncached."""
        if not self.enabled:
            return
        path = self._path(phase, index)
        checksum = np.array(_checksum(drops, changed))
        try:
            atomic_write(path, lambda fh: np.savez(fh, drops=drops, changed=changed, checksum=checksum,
                                                   what=np.array(what)), fsync=True)
        except OSError as exc:
            warnings.warn(f"cannot write cache file {str(path)!r} ({exc}); this chunk is not cached.", CacheWarning,
                          stacklevel=3)
            return
        self.writes += 1
