"""The example models: what each one is, how its data is made, and how it is evaluated.

Shared by ``example_suite/train.py`` (training), ``example_suite/conftest.py`` (fixtures) and
``tests/test_example_models.py`` (checks of the checkpoints), so that all three agree on the tasks, the
held-out crops and the PSNR.

- :data:`MODELS`: name -> :class:`ModelSpec` (architecture, task, training crop size and batch).
- Degradations come from the task objects of :mod:`cem_checks.tasks`, exactly what the engine feeds a
  model: ``SuperResolution(2)``, ``Denoising(50, seed)``, ``Deraining(seed)``, with a seed per sample for
  the noise and the rain.
- Training images: astronaut, coffee, rocket (bundled with cem_checks, see ``cem_checks/data/NOTICE.md``);
  held out for validation: chelsea.
- :func:`psnr_db` measures like the engine: RGB, both images clamped to [0, 1] and rounded to 8 bits.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import cem_checks as cc
from cem_checks.images import quantize
from cem_checks.tasks import SuperResolution, parse_task, resize_bicubic

HERE = Path(__file__).resolve().parent
CHECKPOINTS = HERE / "checkpoints"
MANIFEST = CHECKPOINTS / "manifest.json"

TRAIN_IMAGES = ("astronaut", "coffee", "rocket")
HELD_OUT_IMAGE = "chelsea"
#: Side (clean px) and number of the held-out validation crops, and the seed that places them.
VAL_CROP_PX = 96
VAL_CROPS = 6
VAL_SEED = 2025
SIGMA = 50


@dataclass(frozen=True)
class ModelSpec:
    """One example model: ``arch`` is ``"module:attribute"`` of a no-argument factory; ``task`` the short name
    of the engine's task; ``crop_px`` / ``batch`` / ``steps`` the clean training crop side, the batch size and
    the default number of Adam steps."""

    name: str
    arch: str
    task: str
    crop_px: int
    batch: int
    steps: int
    lr: float = 2e-3
    description: str = ""


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("plain_sr2", "example_suite.nets:PlainSR", "sr2", 64, 8, 3000,
                  description="x2 SR, 5 3x3 convs + pixel shuffle over bicubic"),
        ModelSpec("attention_sr2", "example_suite.nets:AttentionSR", "sr2", 64, 8, 3000,
                  description="PlainSR + channel attention (global average pooling)"),
        ModelSpec("window_sr2", "example_suite.nets:WindowSR", "sr2", 64, 8, 1200, lr=1e-3,
                  description="x2 SR, conv + window / shifted-window self-attention (window 8)"),
        ModelSpec("dncnn_dn50", "example_suite.nets:SmallDnCNN", f"dn{SIGMA}", 40, 8, 1200,
                  description="7-layer DnCNN, residual noise prediction"),
        ModelSpec("attention_dncnn_dn50", "example_suite.nets:AttentionDnCNN", f"dn{SIGMA}", 40, 8, 1200,
                  description="SmallDnCNN + channel attention (global average pooling)"),
        ModelSpec("derain_dr", "example_suite.nets:DerainNet", "dr", 48, 8, 1000,
                  description="6 dilated 3x3 convs, residual rain prediction"),
    )
}


def resolve_arch(arch: str) -> Callable[[], torch.nn.Module]:
    """The factory named by ``"package.module:Attribute"`` (as ``cem_load_model(path, arch=...)`` resolves it)."""
    from cem_checks.loading import resolve_arch as resolve

    return resolve(arch)


def load_manifest(path: Path = MANIFEST) -> dict[str, Any]:
    """The manifest written by train.py: ``{"models": {name: entry}, ...}``."""
    return json.loads(Path(path).read_text())


# ------------------------------------------------------------------------------------------------ data
def load_images(names: tuple[str, ...]) -> list[torch.Tensor]:
    """The bundled images ``names`` as (3, H, W) float tensors in [0, 1]."""
    paths = cc.bundled_images()
    return [cc.load_image(paths[n]) for n in names]


def random_crops(images: list[torch.Tensor], n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 3, size, size) crops: image, position and one of the 8 flips/rotations drawn from ``generator``."""
    out = []
    for _ in range(n):
        img = images[int(torch.randint(len(images), (1,), generator=generator))]
        H, W = img.shape[-2:]
        top = int(torch.randint(H - size + 1, (1,), generator=generator))
        left = int(torch.randint(W - size + 1, (1,), generator=generator))
        crop = img[:, top : top + size, left : left + size]
        k = int(torch.randint(8, (1,), generator=generator))
        crop = torch.rot90(crop, k % 4, (1, 2))
        out.append(crop.flip(2) if k >= 4 else crop)
    return torch.stack(out).contiguous()


def val_crops(n: int = VAL_CROPS, size: int = VAL_CROP_PX) -> torch.Tensor:
    """(n, 3, size, size) fixed crops of the held-out image (positions drawn from :data:`VAL_SEED`)."""
    (img,) = load_images((HELD_OUT_IMAGE,))
    g = torch.Generator().manual_seed(VAL_SEED)
    H, W = img.shape[-2:]
    tops = torch.randint(H - size + 1, (n,), generator=g).tolist()
    lefts = torch.randint(W - size + 1, (n,), generator=g).tolist()
    return torch.stack([img[:, t : t + size, l : l + size] for t, l in zip(tops, lefts)]).contiguous()


def degrade(task: str, clean: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """(N, 3, H, W) clean -> the model inputs the engine's task ``task`` makes; ``seeds[i]`` seeds the noise or
    rain of sample i (unused for SR, whose degradation is deterministic)."""
    t = parse_task(task)
    if isinstance(t, SuperResolution):
        return t.degrade(clean)
    return torch.cat([dataclasses.replace(t, seed=s).degrade(c[None]) for c, s in zip(clean, seeds)])


def trivial_restoration(task: str, degraded: torch.Tensor) -> torch.Tensor:
    """The trivial baseline a model must beat: bicubic upsampling for SR, the degraded input itself for
    denoising and deraining."""
    s = parse_task(task).scale
    return resize_bicubic(degraded, (degraded.shape[-2] * s, degraded.shape[-1] * s)) if s > 1 else degraded


def psnr_db(output: torch.Tensor, clean: torch.Tensor) -> float:
    """RGB PSNR in dB of ``output`` against ``clean`` over the whole batch, both clamped to [0, 1] and rounded
    to 8 bits (the engine's outcome measure)."""
    mse = float(((quantize(output.clamp(0, 1)) - quantize(clean.clamp(0, 1))) ** 2).mean())
    return 10 * math.log10(1.0 / mse) if mse > 0 else float("inf")


def val_seeds(n: int) -> list[int]:
    """Noise / rain seeds of the held-out crops (fixed, distinct from the engine's default seed 0)."""
    return [10_000 + i for i in range(n)]


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: str, clean: torch.Tensor) -> tuple[float, float]:
    """(model PSNR, trivial baseline PSNR) in dB on the clean crops ``clean`` degraded by ``task``."""
    model.eval()
    x = degrade(task, clean, val_seeds(len(clean)))
    return psnr_db(model(x.clone()), clean), psnr_db(trivial_restoration(task, x), clean)
