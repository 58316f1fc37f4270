"""Degradation tasks: how the model input is made from the clean image, and how a block is intervened on.

A task implements the :class:`Task` protocol. The engine calls, in order:

1. ``crop(clean)`` once: trims the clean (3, H, W) image so that the input grid is whole (SR: H and W become
   multiples of ``scale``; every task then trims to a multiple of ``scale * block_size``, see the engine).
2. ``degrade(clean)`` once: (1, 3, H, W) clean -> (1, 3, H / scale, W / scale) model input, deterministic
   (noise and rain are fixed by the task's own ``seed``).
3. ``patch_to_block(patches, block_size)`` once: (N, 3, p, q) natural patches in [0, 1] -> (N, 3, b, b)
   clean-domain content at the block size in input pixels.
4. ``intervene(blocks, top=..., left=..., clean=..., degraded=..., generator=...)`` in batches:
   (J, 3, b, b) clean-domain content of J interventions whose top-left input pixels are ``top`` / ``left``
   ((J,) int64) -> (J, 3, b, b) values written into the model input. Every random draw uses ``generator``
   (a ``torch.Generator`` on the engine's device).

Every intervened block is clamped to [0, 1] and rounded to 8 bits, like the degraded input itself.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from .errors import CEMInputError, describe_value
from .images import quantize


@runtime_checkable
class Task(Protocol):
    """What the engine needs from a degradation task (see the module docstring for the call order)."""

    name: str
    scale: int
    display_bound_db: float

    def crop(self, clean: torch.Tensor) -> torch.Tensor: ...

    def degrade(self, clean: torch.Tensor) -> torch.Tensor: ...

    def patch_to_block(self, patches: torch.Tensor, block_size: int) -> torch.Tensor: ...

    def intervene(
        self,
        blocks: torch.Tensor,
        *,
        top: torch.Tensor,
        left: torch.Tensor,
        clean: torch.Tensor,
        degraded: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor: ...


def resize_bicubic(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of (N, C, h, w) to ``size`` with antialiasing (MATLAB ``imresize``-like), clamped to [0, 1]."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    antialias = size[0] < t.shape[-2] or size[1] < t.shape[-1]
    return F.interpolate(t, size=size, mode="bicubic", align_corners=False, antialias=antialias).clamp(0.0, 1.0)


def gather_blocks(image: torch.Tensor, top: torch.Tensor, left: torch.Tensor, b: int) -> torch.Tensor:
    """The (J, C, b, b) blocks of a (1, C, H, W) ``image`` whose top-left pixels are ``top`` / ``left``."""
    ar = torch.arange(b, device=image.device)
    rows = (top[:, None] + ar)[:, :, None]
    cols = (left[:, None] + ar)[:, None, :]
    return image[0][:, rows, cols].permute(1, 0, 2, 3)


class _BaseTask:
    scale: int = 1
    name: str = "task"
    display_bound_db: float = 1.0

    def crop(self, clean: torch.Tensor) -> torch.Tensor:
        s = self.scale
        H, W = clean.shape[-2:]
        return clean[..., : H - H % s, : W - W % s]

    def patch_to_block(self, patches: torch.Tensor, block_size: int) -> torch.Tensor:
        return resize_bicubic(patches, (block_size, block_size))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": type(self).__name__}


@dataclass(frozen=True)
class SuperResolution(_BaseTask):
    """x``scale`` super-resolution: input = bicubic (antialiased) downscale of the clean image, 8-bit.

    The clean image is cropped at the bottom/right to a multiple of ``scale``. An intervention replaces a
    block of the low-resolution input by a natural patch resized bicubically to the block.
    """

    scale: int = 4
    display_bound_db: float = 2.5

    def __post_init__(self):
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or self.scale < 1:
            raise CEMInputError(f"SuperResolution scale={self.scale!r} must be an integer >= 1, e.g. SuperResolution(4).")

    @property
    def name(self) -> str:
        return f"sr{self.scale}"

    def degrade(self, clean: torch.Tensor) -> torch.Tensor:
        H, W = clean.shape[-2:]
        return quantize(resize_bicubic(clean, (H // self.scale, W // self.scale)))

    def intervene(self, blocks, *, top, left, clean, degraded, generator):
        return quantize(blocks)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "SuperResolution", "scale": self.scale}


@dataclass(frozen=True)
class Denoising(_BaseTask):
    """Additive white Gaussian noise of standard deviation ``sigma`` (on the 0-255 scale), 8-bit.

    The input noise is fixed by ``seed`` (drawn on the CPU, so the input is the same on every device). An
    intervention adds fresh noise of the same sigma to the natural patch, from the engine's generator.
    """

    sigma: float = 50.0
    seed: int = 0
    display_bound_db: float = 1.0

    def __post_init__(self):
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) or not (0 <= self.sigma < 256):
            raise CEMInputError(f"Denoising sigma={self.sigma!r} must be a number in [0, 255] (0-255 scale), e.g. 50.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise CEMInputError(f"Denoising seed={self.seed!r} must be an integer.")

    @property
    def name(self) -> str:
        return f"dn{self.sigma:g}"

    def degrade(self, clean: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(clean.shape, generator=g, dtype=torch.float32) * (self.sigma / 255.0)
        return quantize(clean + noise.to(clean.device))

    def intervene(self, blocks, *, top, left, clean, degraded, generator):
        noise = torch.randn(blocks.shape, generator=generator, device=blocks.device, dtype=blocks.dtype)
        return quantize(blocks + noise * (self.sigma / 255.0))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "Denoising", "sigma": float(self.sigma), "seed": self.seed}


@dataclass(frozen=True)
class Deraining(_BaseTask):
    """Synthetic rain streaks added to the clean image, 8-bit.

    The rain layer is fixed by ``seed``: streak centres are drawn uniformly (a fraction ``density`` of the
    pixels), softened by a small cross kernel, then motion-blurred along a line of ``length`` px at
    ``angle`` degrees from vertical (drawn uniformly in [-30, 30] when None), min-max normalised and scaled to
    ``intensity``. The same layer is added to every channel (white rain). An intervention pastes the natural
    patch into the clean image at the block and re-adds the same rain layer there.
    """

    seed: int = 0
    density: float = 0.02
    length: int = 15
    angle: float | None = None
    intensity: float = 0.8
    display_bound_db: float = 2.0
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self):
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise CEMInputError(f"Deraining seed={self.seed!r} must be an integer.")
        if not (0 < self.density <= 1):
            raise CEMInputError(f"Deraining density={self.density!r} must be in (0, 1], e.g. 0.02.")
        if not isinstance(self.length, int) or self.length < 1:
            raise CEMInputError(f"Deraining length={self.length!r} must be a positive integer number of pixels.")
        if not (0 <= self.intensity <= 1):
            raise CEMInputError(f"Deraining intensity={self.intensity!r} must be in [0, 1].")

    @property
    def name(self) -> str:
        return "dr"

    def _kernel(self, angle_deg: float) -> torch.Tensor:
        L = self.length
        k = L + 1 if L % 2 == 0 else L
        kernel = torch.zeros(k, k, dtype=torch.float64)
        c = (k - 1) / 2.0
        theta = math.radians(angle_deg)
        for t in torch.linspace(-(L - 1) / 2.0, (L - 1) / 2.0, 4 * L).tolist():
            x = c + t * math.sin(theta)
            y = c + t * math.cos(theta)
            x0, y0 = math.floor(x), math.floor(y)
            fx, fy = x - x0, y - y0
            for dy, wy in ((0, 1 - fy), (1, fy)):
                for dx, wx in ((0, 1 - fx), (1, fx)):
                    if 0 <= y0 + dy < k and 0 <= x0 + dx < k:
                        kernel[y0 + dy, x0 + dx] += wy * wx
        return (kernel / kernel.sum()).float()

    def rain_layer(self, height: int, width: int) -> torch.Tensor:
        """The (1, 1, height, width) rain layer in [0, intensity] for this seed (computed on the CPU, cached)."""
        key = (height, width)
        if key not in self._cache:
            g = torch.Generator().manual_seed(self.seed)
            angle = self.angle
            if angle is None:
                angle = float(torch.empty(()).uniform_(-30.0, 30.0, generator=g))
            u = torch.rand((1, 1, height, width), generator=g)
            brightness = torch.rand((1, 1, height, width), generator=g) * 0.5 + 0.5
            seeds = torch.where(u < self.density, brightness, torch.zeros(()))
            cross = torch.tensor([[0.0, 0.1, 0.0], [0.1, 8.0, 0.1], [0.0, 0.1, 0.0]])[None, None] / 8.4
            seeds = F.conv2d(seeds, cross, padding=1)
            kernel = self._kernel(angle)[None, None]
            streaks = F.conv2d(seeds, kernel, padding=kernel.shape[-1] // 2)
            lo, hi = streaks.min(), streaks.max()
            streaks = (streaks - lo) / (hi - lo) if hi > lo else torch.zeros_like(streaks)
            self._cache[key] = (streaks * self.intensity).contiguous()
        return self._cache[key]

    def degrade(self, clean: torch.Tensor) -> torch.Tensor:
        rain = self.rain_layer(*clean.shape[-2:]).to(clean.device)
        return quantize(clean + rain)

    def intervene(self, blocks, *, top, left, clean, degraded, generator):
        rain = self.rain_layer(*clean.shape[-2:]).to(blocks.device)
        return quantize(blocks + gather_blocks(rain, top, left, blocks.shape[-1]))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "Deraining",
            "seed": self.seed,
            "density": self.density,
            "length": self.length,
            "angle": self.angle,
            "intensity": self.intensity,
        }


_TASK_RE = re.compile(r"^(?:sr(?P<sr>\d+)|dn(?P<dn>\d+(?:\.\d+)?)|(?P<dr>dr))$")


def parse_task(task: Any) -> Task:
    """Resolve ``task``: a :class:`Task` object, or a short name ``"sr4"``, ``"dn50"``, ``"dr"``."""
    if isinstance(task, str):
        m = _TASK_RE.match(task.strip().lower())
        if not m:
            raise CEMInputError(
                f"task {task!r} is not a known task name; expected 'sr<scale>' (e.g. 'sr4'), 'dn<sigma>' "
                "(e.g. 'dn50') or 'dr', or a task object such as cem_checks.SuperResolution(4)."
            )
        if m.group("sr"):
            return SuperResolution(int(m.group("sr")))
        if m.group("dn"):
            sigma = float(m.group("dn"))
            return Denoising(int(sigma) if sigma.is_integer() else sigma)
        return Deraining()
    if isinstance(task, type):
        raise CEMInputError(
            f"task={task.__qualname__} is a class, not a task object; pass an instance, e.g. {task.__qualname__}() "
            "with its settings (cem_checks.Denoising(sigma=50)), or a short name such as 'dn50'."
        )
    missing = [a for a in ("name", "scale", "crop", "degrade", "patch_to_block", "intervene") if not hasattr(task, a)]
    if missing:
        raise CEMInputError(
            f"task {describe_value(task)} does not follow the cem_checks.Task protocol (missing {', '.join(missing)}); "
            "use cem_checks.SuperResolution(scale), Denoising(sigma, seed), Deraining(seed) or implement the protocol."
        )
    scale = task.scale
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise CEMInputError(f"task {task.name!r} has scale={scale!r}; expected an integer >= 1.")
    return task


def describe_task(task: Task) -> dict[str, Any]:
    """A JSON-safe description of ``task`` (its ``describe()`` when it has one)."""
    if hasattr(task, "describe"):
        return dict(task.describe())
    return {"name": str(task.name), "kind": type(task).__name__, "scale": int(task.scale)}


def task_cache_identity(task: Task) -> dict[str, Any]:
    """What identifies ``task`` in a cache key: its class (module and qualified name), its ``describe()`` and,
    for a dataclass, the values of its fields.

    The class is part of the key because a subclass may degrade or intervene differently under the same
    description. A task without ``describe()`` cannot be told apart from another instance of its class with
    other settings, so it is refused (:class:`~cem_checks.errors.CEMInputError`) rather than risk reusing
    another task's draws.
    """
    cls = type(task)
    if not callable(getattr(task, "describe", None)):
        raise CEMInputError(
            f"cache_dir needs to identify the task, but task {describe_value(task)} (class {cls.__module__}."
            f"{cls.__qualname__}) has no describe() method; add `def describe(self) -> dict` returning a JSON-safe "
            "dict of every setting that changes how it degrades or intervenes, or run without cache_dir."
        )
    identity: dict[str, Any] = {"class": f"{cls.__module__}.{cls.__qualname__}", "describe": dict(task.describe())}
    if dataclasses.is_dataclass(task):
        identity["fields"] = {f.name: repr(getattr(task, f.name)) for f in dataclasses.fields(task) if f.repr}
    return identity
