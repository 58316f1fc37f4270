"""Small restoration networks of the example suite (plain PyTorch), trained by ``example_suite/train.py``.

Every network maps a (B, 3, h, w) float input in [0, 1] to a (B, 3, h * scale, w * scale) output and is
built without arguments, so a state_dict checkpoint loads with
``cem_checks.load_model(path, arch=PlainSR)`` (or through the manifest: ``"example_suite.nets:PlainSR"``).

Class attributes describe the causal reach the architecture allows, in input px (Chebyshev distance from
the ROI footprint, as in :mod:`cem_checks.grid`):

- ``receptive_radius``: the theoretical receptive radius. Exact for the pure convolutional networks
  (``pure_conv = True``: the sum of the (dilated) 3x3 kernels' half-widths); an upper bound for the window
  attention network (for inputs whose sides are multiples of its window); ``None`` for the networks with
  channel attention, whose global average pooling lets every input pixel reach every output pixel.
- ``local_radius``: the receptive radius of the convolutional path alone (the same as
  ``receptive_radius`` for the pure convolutional networks).
- ``scale``: the upscaling factor (1 for denoising and deraining).

===============  ======  ============================================  ================
class            task    architecture                                  receptive radius
===============  ======  ============================================  ================
PlainSR          sr2     5 3x3 convs + pixel shuffle, over bicubic     5 (exact)
AttentionSR      sr2     PlainSR + channel attention (RCAN-like)       global
WindowSR         sr2     conv + 2 (shifted) window attention blocks    <= 17 (windows)
SmallDnCNN       dn50    7 3x3 convs, residual noise prediction        7 (exact)
AttentionDnCNN   dn50    SmallDnCNN + channel attention                global
DerainNet        dr      6 dilated 3x3 convs, residual rain layer      10 (exact)
===============  ======  ============================================  ================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentionDnCNN", "AttentionSR", "DerainNet", "PlainSR", "SmallDnCNN", "WindowSR"]


def _bicubic_up(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic upsampling (B, C, h, w) -> (B, C, h * scale, w * scale); at x2 each output pixel reads input
    pixels at most 2 px from its own (radius 2 <= every network's conv radius)."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


def _conv_stack(channels_in: int, features: int, channels_out: int, dilations: tuple[int, ...]) -> nn.Sequential:
    """3x3 convs with ReLU between them (none after the last); conv i has dilation ``dilations[i]`` (its
    receptive half-width), so the stack's receptive radius is ``sum(dilations)``."""
    layers: list[nn.Module] = []
    widths = [channels_in] + [features] * (len(dilations) - 1) + [channels_out]
    for i, d in enumerate(dilations):
        layers.append(nn.Conv2d(widths[i], widths[i + 1], 3, padding=d, dilation=d))
        if i < len(dilations) - 1:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation gate (RCAN): global average pooling -> 1x1 bottleneck -> sigmoid, scaling each
    channel of (B, C, h, w). The pooling makes every output pixel depend on every input pixel."""

    def __init__(self, features: int, reduction: int = 4):
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(features, features // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(features // reduction, features, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


# ------------------------------------------------------------------------------------ super-resolution
class PlainSR(nn.Module):
    """x2 SR, FSRCNN-like: 5 3x3 convs (32 features) predict the residual over bicubic upsampling, laid out
    by a pixel shuffle. Receptive radius 5 input px (exact). (B, 3, h, w) -> (B, 3, 2h, 2w)."""

    scale = 2
    receptive_radius = 5
    local_radius = 5
    pure_conv = True

    def __init__(self, features: int = 32):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(3, features, 3, padding=1), nn.ReLU(inplace=True))
        self.body = nn.Sequential(
            nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.tail = nn.Sequential(nn.Conv2d(features, 3 * self.scale**2, 3, padding=1), nn.PixelShuffle(self.scale))

    def features(self, f: torch.Tensor) -> torch.Tensor:
        return self.body(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _bicubic_up(x, self.scale) + self.tail(self.features(self.head(x)))


class AttentionSR(PlainSR):
    """:class:`PlainSR` with a channel-attention gate (RCAN-like) on its body features: same convolutions,
    global reach. (B, 3, h, w) -> (B, 3, 2h, 2w)."""

    receptive_radius = None
    pure_conv = False

    def __init__(self, features: int = 32):
        super().__init__(features)
        self.attention = ChannelAttention(features)

    def features(self, f: torch.Tensor) -> torch.Tensor:
        return self.attention(self.body(f))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping ``window`` x ``window`` windows, with a learned
    relative position bias (SwinIR). Input (N, window**2, C) tokens, optional (nW, window**2, window**2)
    additive mask."""

    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros(heads, (2 * window - 1) ** 2))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = coords[:, :, None] - coords[:, None, :] + (window - 1)
        self.register_buffer("bias_index", rel[0] * (2 * window - 1) + rel[1], persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        N, T, C = x.shape
        q, k, v = self.qkv(x).reshape(N, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1) + self.bias_table[:, self.bias_index]
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(N // nW, nW, self.heads, T, T) + mask[None, :, None]
            attn = attn.view(N, self.heads, T, T)
        out = attn.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(N, T, C))


class SwinBlock(nn.Module):
    """A Swin transformer block on (B, C, H, W) features, H and W multiples of ``window``: (shifted) window
    attention then an MLP, each pre-normalised and residual. A shift rolls the features by ``shift`` px and
    masks attention between pixels that the roll brought together from opposite borders."""

    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: int = 2):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def _mask(self, H: int, W: int, device: torch.device) -> torch.Tensor | None:
        if self.shift == 0:
            return None
        w, s = self.window, self.shift
        label = torch.zeros(H, W, device=device)
        cuts = (slice(0, -w), slice(-w, -s), slice(-s, None))
        n = 0
        for rows in cuts:
            for cols in cuts:
                label[rows, cols] = n
                n += 1
        windows = label.view(H // w, w, W // w, w).permute(0, 2, 1, 3).reshape(-1, w * w)
        differ = windows[:, :, None] != windows[:, None, :]
        return differ.float() * -100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        w = self.window
        t = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.norm1(t)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
        y = y.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, C)
        y = self.attn(y, self._mask(H, W, x.device))
        y = y.view(B, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        t = t + y
        t = t + self.mlp(self.norm2(t))
        return t.permute(0, 3, 1, 2)


class WindowSR(nn.Module):
    """x2 SR, SwinIR-like: a 3x3 conv, a window attention block and a shifted window attention block
    (window 8, shift 4, 2 heads, 24 features), a 3x3 conv, then a 3x3 conv + pixel shuffle over bicubic
    upsampling. Inputs are reflect-padded at the bottom/right to a multiple of the window and the output is
    cropped back. (B, 3, h, w) -> (B, 3, 2h, 2w).

    Reach: each attention block mixes pixels of one window (at most ``window - 1`` = 7 px apart), so for
    inputs whose sides are multiples of 8 the receptive radius is at most 1 + 7 + 7 + 1 + 1 = 17 input px;
    how far it reaches around a given ROI depends on where the ROI falls in the window grid.
    """

    scale = 2
    window = 8
    receptive_radius = 17
    local_radius = 3
    pure_conv = False

    def __init__(self, features: int = 24, heads: int = 2):
        super().__init__()
        self.head = nn.Conv2d(3, features, 3, padding=1)
        self.blocks = nn.Sequential(
            SwinBlock(features, heads, self.window, 0), SwinBlock(features, heads, self.window, self.window // 2)
        )
        self.body_conv = nn.Conv2d(features, features, 3, padding=1)
        self.tail = nn.Sequential(nn.Conv2d(features, 3 * self.scale**2, 3, padding=1), nn.PixelShuffle(self.scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.window, (-w) % self.window
        xp = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate") if ph or pw else x
        f = self.head(xp)
        f = f + self.body_conv(self.blocks(f))
        out = _bicubic_up(xp, self.scale) + self.tail(f)
        return out[..., : h * self.scale, : w * self.scale]


# ------------------------------------------------------------------------------------ denoising, deraining
class SmallDnCNN(nn.Module):
    """A 7-layer DnCNN (32 features): the convs predict the noise, output = input - noise. Receptive radius
    7 input px (exact). (B, 3, h, w) -> (B, 3, h, w)."""

    scale = 1
    receptive_radius = 7
    local_radius = 7
    pure_conv = True

    def __init__(self, features: int = 32):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(3, features, 3, padding=1), nn.ReLU(inplace=True))
        self.body = _conv_stack(features, features, features, (1, 1, 1, 1, 1))
        self.body.append(nn.ReLU(inplace=True))
        self.tail = nn.Conv2d(features, 3, 3, padding=1)

    def features(self, f: torch.Tensor) -> torch.Tensor:
        return self.body(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.tail(self.features(self.head(x)))


class AttentionDnCNN(SmallDnCNN):
    """:class:`SmallDnCNN` with a channel-attention gate on its body features: same convolutions, global
    reach. (B, 3, h, w) -> (B, 3, h, w)."""

    receptive_radius = None
    pure_conv = False

    def __init__(self, features: int = 32):
        super().__init__(features)
        self.attention = ChannelAttention(features)

    def features(self, f: torch.Tensor) -> torch.Tensor:
        return self.attention(self.body(f))


class DerainNet(nn.Module):
    """A small deraining CNN: 6 3x3 convs with dilations 1, 2, 3, 2, 1, 1 (32 features) predict the rain
    layer, output = input - rain. The dilations widen the receptive radius to 10 input px (exact) for
    streaks up to 15 px long. (B, 3, h, w) -> (B, 3, h, w)."""

    scale = 1
    dilations = (1, 2, 3, 2, 1, 1)
    receptive_radius = sum(dilations)
    local_radius = sum(dilations)
    pure_conv = True

    def __init__(self, features: int = 32):
        super().__init__()
        self.body = _conv_stack(3, features, 3, self.dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x)
