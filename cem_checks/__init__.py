"""cem_checks: causal effect maps of low-level vision models, and the causal properties built on them.

The library imports no pytest. Main entry point: :func:`compute_cem`.
"""

from .devices import resolve_device
from .engine import MAX_PSNR_DB, compute_cem
from .errors import (
    CEMError,
    CEMInputError,
    CEMWarning,
    DeviceError,
    ImageConversionWarning,
    ImageError,
    ModelError,
    NondeterministicModelWarning,
    PatchBankError,
    ROIError,
)
from .grid import ROI, BlockGrid
from .images import load_image
from .patches import PatchBank, bundled_images, default_patch_bank, load_patches
from .result import CEMResult
from .tasks import Denoising, Deraining, SuperResolution, Task, parse_task

__version__ = "0.1.0"

__all__ = [
    "BlockGrid",
    "CEMError",
    "CEMInputError",
    "CEMResult",
    "CEMWarning",
    "Denoising",
    "Deraining",
    "DeviceError",
    "ImageConversionWarning",
    "ImageError",
    "MAX_PSNR_DB",
    "ModelError",
    "NondeterministicModelWarning",
    "PatchBank",
    "PatchBankError",
    "ROI",
    "ROIError",
    "SuperResolution",
    "Task",
    "bundled_images",
    "compute_cem",
    "default_patch_bank",
    "load_image",
    "load_patches",
    "parse_task",
    "resolve_device",
]
