"""cem_checks: causal effect maps of low-level vision models, and the causal properties built on them.

The library imports no pytest. Main entry point: :func:`compute_cem`.

``import cem_checks`` is cheap: the public names below are imported from their submodules on first access
(PEP 562 module ``__getattr__``), so code that needs only the errors or the constants
(:mod:`cem_checks.errors`, :mod:`cem_checks.constants`) does not import torch. ``from cem_checks import X`` and
``cem_checks.X`` work as for any module; ``cem_checks.metrics`` and the other submodules are imported on access
too.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: The public names, by the submodule that defines them.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "baseline": ("Baseline", "BaselineComparison", "assert_matches_baseline", "check_matches_baseline",
                 "compare_to_baseline", "load_baseline", "save_baseline"),
    "checks": ("CausalPropertyError", "OffendingBlock", "PropertyOutcome", "assert_effect_range_between",
               "assert_negative_fraction_at_most", "assert_positive_effect_local", "assert_property",
               "assert_receptive_field_within", "assert_uses_context_beyond", "check_effect_range_between",
               "check_negative_fraction_at_most", "check_positive_effect_local", "check_property",
               "check_receptive_field_within", "check_uses_context_beyond", "collect_outcomes"),
    "devices": ("resolve_device", "spread_device"),
    "engine": ("MAX_PSNR_DB", "FastOptions", "compute_cem", "compute_cem_many", "compute_support"),
    "errors": ("BaselineError", "CacheWarning", "CEMError", "CheckpointError", "CEMInputError", "CEMWarning",
               "DeviceError", "DuplicateROIWarning", "ImageConversionWarning", "ImageError", "ModelError",
               "NondeterministicModelWarning",
               "OutputRangeWarning", "PatchBankError", "PrecisionWarning", "ROIError", "SettingsError",
               "UntrustedCheckpointError"),
    "grid": ("ROI", "BlockGrid"),
    "images": ("load_image",),
    "lazy": ("LazyMap",),
    "loading": ("load_model",),
    "metrics": ("EffectCounts", "context_share", "counts", "diffusion_index", "distance_profile", "effect_range_db",
                "effective_radius", "gini", "locality", "max_reach", "negative_fraction", "positive_fraction",
                "significant_effect", "support_radius", "support_radius_bounds"),
    "patches": ("PatchBank", "bundled_images", "default_patch_bank", "load_patches"),
    "result": ("CEMResult", "SupportResult"),
    "sweeps": ("OverOutcome", "Sweep", "SweepItem", "SweepPropertyError", "assert_over", "check_over",
               "collect_over_outcomes", "roi_grid", "roi_sample", "run_image", "sweep", "texture_energy"),
    "tasks": ("Denoising", "Deraining", "SuperResolution", "Task", "parse_task"),
}
#: public name -> the submodule that defines it
_ORIGIN: dict[str, str] = {name: module for module, names in _EXPORTS.items() for name in names}
#: the submodules, imported on access as attributes of the package (``cem_checks.metrics``)
_SUBMODULES = frozenset({
    "baseline", "cache", "checks", "cli", "constants", "devices", "engine", "errors", "grid", "images", "lazy",
    "loading", "local_eval", "metrics", "models", "patches", "records", "reporting", "result", "stats",
    "strategies", "sweeps", "tasks",
})

__all__ = sorted(_ORIGIN, key=str.casefold)


def __getattr__(name: str) -> Any:
    if name in _ORIGIN:
        return getattr(importlib.import_module(f".{_ORIGIN[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*__all__, *_SUBMODULES, "__version__"})


if TYPE_CHECKING:  # static analysers and IDEs see the names the module __getattr__ provides
    from .baseline import (Baseline, BaselineComparison, assert_matches_baseline, check_matches_baseline,
                           compare_to_baseline, load_baseline, save_baseline)
    from .checks import (CausalPropertyError, OffendingBlock, PropertyOutcome, assert_effect_range_between,
                         assert_negative_fraction_at_most, assert_positive_effect_local, assert_property,
                         assert_receptive_field_within, assert_uses_context_beyond, check_effect_range_between,
                         check_negative_fraction_at_most, check_positive_effect_local, check_property,
                         check_receptive_field_within, check_uses_context_beyond, collect_outcomes)
    from .devices import resolve_device, spread_device
    from .engine import MAX_PSNR_DB, FastOptions, compute_cem, compute_cem_many, compute_support
    from .errors import (BaselineError, CacheWarning, CEMError, CEMInputError, CEMWarning, CheckpointError,
                         DeviceError, DuplicateROIWarning, ImageConversionWarning, ImageError, ModelError,
                         NondeterministicModelWarning,
                         OutputRangeWarning, PatchBankError, PrecisionWarning, ROIError, SettingsError,
                         UntrustedCheckpointError)
    from .grid import ROI, BlockGrid
    from .images import load_image
    from .lazy import LazyMap
    from .loading import load_model
    from .metrics import (EffectCounts, context_share, counts, diffusion_index, distance_profile, effect_range_db,
                          effective_radius, gini, locality, max_reach, negative_fraction, positive_fraction,
                          significant_effect, support_radius, support_radius_bounds)
    from .patches import PatchBank, bundled_images, default_patch_bank, load_patches
    from .result import CEMResult, SupportResult
    from .sweeps import (OverOutcome, Sweep, SweepItem, SweepPropertyError, assert_over, check_over,
                         collect_over_outcomes, roi_grid, roi_sample, run_image, sweep, texture_energy)
    from .tasks import Denoising, Deraining, SuperResolution, Task, parse_task
