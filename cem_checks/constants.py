"""Names and defaults shared by the library, the ``cem`` command and the pytest plugin.

This module imports nothing but the standard library (no torch, numpy or pytest), so the plugin can read its
option defaults and check option values, and the ``cem`` command can check its arguments, without loading torch.
"""

from __future__ import annotations

import re

__all__ = [
    "DEFAULT_BASELINE_DIR",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_DEVICE",
    "DEFAULT_MAX_IMAGE_PX",
    "DEFAULT_MODE",
    "DEFAULT_SEED",
    "DEVICE_NAMES",
    "DEVICE_RE",
    "MODES",
    "PRECISIONS",
]

#: Estimation procedures of a map: ``"fast"`` (same estimand, less compute) and ``"paper"`` (the published one).
MODES = ("fast", "paper")
#: Numeric precisions of the model's forward passes; ``"fp32"`` is the reference.
PRECISIONS = ("fp32", "bf16", "fp16")
#: Device names, as error messages list them.
DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"
#: A device name (lower case, stripped): group 1 the name, group 2 the CUDA index when one is given.
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(?::(\d+))?)$")

#: Default device: CUDA when available, else the CPU.
DEFAULT_DEVICE = "auto"
#: Default estimation procedure (one of :data:`MODES`).
DEFAULT_MODE = "fast"
#: Default seed of every random draw of a map.
DEFAULT_SEED = 0
#: Default images per forward pass: ``"auto"`` (8 on the CPU; on CUDA sized from free memory).
DEFAULT_BATCH_SIZE = "auto"
#: Default longest side (px) of the model input and output images embedded per map in the results and reports.
DEFAULT_MAX_IMAGE_PX = 384
#: Default folder of the pytest plugin's regression baselines (``cem_baseline``), relative to the rootdir.
DEFAULT_BASELINE_DIR = "cem_baselines"
