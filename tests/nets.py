"""Tiny models whose causal structure is known by hand, for the engine's correctness tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _init(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.05))
    return module.eval()


class ConvStack(nn.Module):
    """3x3 convolutions with the given dilations and LeakyReLU between: receptive radius sum(dilations) px."""

    def __init__(self, dilations=(1, 1, 1), width: int = 4, seed: int = 0):
        super().__init__()
        chans = [3] + [width] * (len(dilations) - 1) + [3]
        self.convs = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], 3, padding=d, dilation=d) for i, d in enumerate(dilations)
        )
        self.radius = sum(dilations)
        _init(self, seed)

    def forward(self, x):
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = F.leaky_relu(x, 0.2)
        return x + 0.5


class PixelShuffleSR(nn.Module):
    """x``scale`` SR: two LR 3x3 convs, pixel shuffle, one HR 3x3 conv: radius 2 + ceil(1/scale) = 3 input px."""

    def __init__(self, scale: int = 2, width: int = 4, seed: int = 0):
        super().__init__()
        self.c1 = nn.Conv2d(3, width, 3, padding=1)
        self.c2 = nn.Conv2d(width, 3 * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)
        self.c3 = nn.Conv2d(3, 3, 3, padding=1)
        self.radius = 3
        _init(self, seed)

    def forward(self, x):
        return self.c3(self.shuffle(self.c2(F.leaky_relu(self.c1(x), 0.2)))) + 0.5


class NearestUpsampleSR(nn.Module):
    """x``scale`` SR: two LR 3x3 convs, nearest upsampling, one HR 3x3 conv: radius 3 input px."""

    def __init__(self, scale: int = 2, seed: int = 0):
        super().__init__()
        self.scale = scale
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 3, 3, padding=1)
        self.c3 = nn.Conv2d(3, 3, 3, padding=1)
        self.radius = 3
        _init(self, seed)

    def forward(self, x):
        y = self.c2(F.leaky_relu(self.c1(x), 0.2))
        return self.c3(F.interpolate(y, scale_factor=self.scale, mode="nearest")) + 0.5


class StridedSR(nn.Module):
    """x2 SR through a stride-2 bottleneck: a position-dependent receptive field (checked via the Jacobian)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.up = nn.Conv2d(8, 3 * 16, 1)
        self.shuffle = nn.PixelShuffle(4)
        _init(self, seed)

    def forward(self, x):
        return self.shuffle(self.up(F.leaky_relu(self.mid(F.leaky_relu(self.down(x), 0.2)), 0.2))) + 0.5


class PlantedNonLocal(nn.Module):
    """Identity, except that the ROI of the output copies the input region at ``source`` (x, y, size)."""

    def __init__(self, roi, source):
        super().__init__()
        self.roi, self.source = roi, source

    def forward(self, x):
        out = x.clone()
        rx, ry, s = self.roi
        sx, sy, _ = self.source
        out[:, :, ry : ry + s, rx : rx + s] = x[:, :, sy : sy + s, sx : sx + s]
        return out


class Affine(nn.Module):
    """out = a * x + c, pixel-wise: receptive radius 0."""

    def __init__(self, a: float = 0.5, c: float = 0.25):
        super().__init__()
        self.a, self.c = a, c

    def forward(self, x):
        return self.a * x + self.c


class Constant(nn.Module):
    """Ignores its input."""

    def __init__(self, value: float = 0.5, scale: int = 1):
        super().__init__()
        self.value, self.scale = value, scale

    def forward(self, x):
        B, C, h, w = x.shape
        return torch.full((B, C, h * self.scale, w * self.scale), self.value)


class InPlaceScaling(nn.Module):
    """Multiplies its input by 255 in place (as some real models do), then runs ``inner`` on x / 255."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        x.mul_(255.0)
        return self.inner(x / 255.0)


def jacobian_dependence(model: nn.Module, x: torch.Tensor, roi, seed: int = 0) -> torch.Tensor:
    """(h, w) bool: the input pixels on which the ROI output (box ``roi`` = (x, y, size) of the output) depends,
    by autograd (a random projection of the Jacobian: exact for generic weights)."""
    x = x.clone().requires_grad_(True)
    out = model(x.clone())  # a copy: models that scale their input in place get a tensor they may modify
    rx, ry, s = roi
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out[:, :, ry : ry + s, rx : rx + s].shape, generator=g)
    (out[:, :, ry : ry + s, rx : rx + s] * w).sum().backward()
    return x.grad[0].abs().sum(0) > 0


def jacobian_support(model: nn.Module, x: torch.Tensor, roi, scale: int, block: int, seed: int = 0) -> torch.Tensor:
    """(rows, cols) bool: blocks holding an input pixel on which the ROI output depends (random projection of
    the Jacobian; exact for generic weights)."""
    dep = jacobian_dependence(model, x, roi, seed).float()
    return F.max_pool2d(dep[None, None], block)[0, 0] > 0


def jacobian_radius(model: nn.Module, x: torch.Tensor, roi, scale: int, seed: int = 0) -> int:
    """The pixel-exact support radius: the Chebyshev distance (input px) from the ROI footprint of the farthest
    input pixel on which the ROI output depends (random projection of the Jacobian; exact for generic weights)."""
    from cem_checks.grid import ROI, BlockGrid

    dep = jacobian_dependence(model, x, roi, seed).numpy()
    h, w_ = dep.shape
    dist = BlockGrid(h, w_, 1).pixel_distance(ROI(*roi).footprint(scale))
    return int(dist[dep].max()) if dep.any() else 0


#: The source of a module defining ``TinyNet`` (one 3x3 conv), for tests that write it to a folder of their own and
#: pickle a whole ``TinyNet`` whose class is importable only from there.
TINY_NET_SOURCE = """\
from torch import nn


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x)
"""
