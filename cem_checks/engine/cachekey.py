"""What a job's cache keys are computed from (see :mod:`cem_checks.cache`).

Two keys per job: the *support* key (model, image, degraded input, task, ROI, grid, seed, patch bank, precision,
device and library versions, and the draws per group test) covers the support stage's group tests and the
model checks; the *map* key adds the estimation settings (mode, coarse, fine, tol_db, FastOptions) and covers
the coarse and fine draws and the map's own checks. So a map reuses the group tests of a support run, and two
maps that differ only in their estimation settings share their group tests.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from ..cache import hash_model, hash_tensor
from ..errors import CEMInputError
from ..tasks import task_cache_identity
from .options import ENGINE_VERSION
from .runner import model_name


def model_identity(model: Any, cache_key: str | None) -> str:
    if isinstance(model, torch.nn.Module):
        return hash_model(model)
    if cache_key is not None:
        return f"key:{cache_key}"
    raise CEMInputError(
        f"cache_dir needs to identify the model, but {model_name(model)} is a plain callable whose weights "
        "cannot be hashed; pass cache_key='<name-and-version-of-the-model>' or an nn.Module."
    )


def job_material(*, model, cache_key, clean, degraded, task, roi, block_size, seed, bank, precision, channels_last,
                 device: torch.device) -> dict[str, Any]:
    """What every cached result of a job depends on."""
    return {
        "engine": ENGINE_VERSION, "model": model_identity(model, cache_key), "image": hash_tensor(clean.cpu()),
        "task": task_cache_identity(task), "roi": list(roi.as_tuple()), "block_size": block_size, "seed": seed,
        "patches": bank.sha256, "precision": precision, "channels_last": channels_last, "device": device.type,
        "degraded": hash_tensor(degraded.cpu()), "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "tf32": [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32],
    }


def support_material(job: dict[str, Any], draws: int) -> dict[str, Any]:
    return {**job, "stage": "support", "draws": draws}


def map_material(job: dict[str, Any], *, mode: str, coarse: int, fine: int, tol_db: float, fast) -> dict[str, Any]:
    return {**job, "stage": "map", "mode": mode, "coarse": coarse, "fine": fine, "tol_db": tol_db,
            "fast": asdict(fast) if mode == "fast" else None}
