"""Device resolution: ``"auto" | "cpu" | "cuda" | "cuda:N" | "mps"`` or a ``torch.device``."""

from __future__ import annotations

import re
from typing import Any

import torch

from .constants import DEVICE_NAMES, DEVICE_RE
from .errors import DeviceError


def resolve_device(device: Any = "auto") -> torch.device:
    """Return the ``torch.device`` for ``device``; ``"auto"`` picks ``cuda`` when available, else ``cpu``.

    Raises :class:`DeviceError` for an unknown name, or a device this machine does not have.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        text = str(device)
    elif isinstance(device, str):
        text = device.strip().lower()
    else:
        raise DeviceError(
            f"device={device!r} of type {type(device).__name__} is not understood; expected 'auto', 'cpu', 'cuda', "
            "'cuda:N', 'mps' or a torch.device."
        )
    m = DEVICE_RE.match(text)
    if not m:
        raise DeviceError(f"device={device!r} is unknown; expected {DEVICE_NAMES}, or a torch.device.")
    if text == "auto":
        return resolve_device("auto")
    kind = m.group(1).split(":")[0]
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device={device!r} was requested but CUDA is not available (torch {torch.__version__}, "
                f"CUDA build: {torch.version.cuda or 'none'}); use device='cpu' or 'auto', or install a CUDA build "
                "of torch on a machine with an NVIDIA GPU."
            )
        index = int(m.group(2)) if m.group(2) is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"device={device!r} asks for GPU {index} but this machine has {torch.cuda.device_count()} "
                f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})."
            )
        return torch.device("cuda", index)
    if kind == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DeviceError(f"device={device!r} was requested but Apple MPS is not available; use 'cpu' or 'auto'.")
        return torch.device("mps")
    return torch.device("cpu")


_WORKER_RE = re.compile(r"^gw(\d+)$")


def spread_device(device: Any, worker: str | None, gpu_count: int) -> Any:
    """The device a pytest-xdist worker should use for ``device`` when several GPUs are present.

    ``worker`` is the xdist worker id (``"gw0"``, ``"gw1"``, ...; ``None`` or ``"master"`` outside xdist) and
    ``gpu_count`` the number of CUDA devices. ``"cuda"`` (and ``"auto"`` when there is a GPU) on worker ``gwN``
    becomes ``"cuda:{N % gpu_count}"``, so workers are spread round-robin over the GPUs; an explicit index
    (``"cuda:1"``), ``"cpu"``, ``"mps"``, a ``torch.device`` or a single GPU leave ``device`` unchanged.
    """
    if gpu_count < 2 or worker is None:
        return device
    m = _WORKER_RE.match(worker)
    if m is None or not isinstance(device, str) or device.strip().lower() not in ("cuda", "auto"):
        return device
    return f"cuda:{int(m.group(1)) % gpu_count}"
