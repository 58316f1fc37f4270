"""Reference architectures of well-known low-level vision models (weights are loaded by the caller)."""

from __future__ import annotations

import torch
from torch import nn


class DnCNN(nn.Module):
    """DnCNN (Zhang et al., 2017) with batch norm folded into the convolutions: residual denoising.

    ``depth`` 3x3 convolutions of ``features`` channels with ReLU between them, stored as ``self.model`` (an
    ``nn.Sequential``, so state_dict keys are ``model.{0,2,...}.{weight,bias}``); the output is
    ``input - model(input)``. Receptive-field radius: ``depth`` input px.
    Shapes: (B, channels, h, w) -> (B, channels, h, w).
    """

    def __init__(self, channels: int = 3, features: int = 64, depth: int = 20):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, features, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(features, channels, 3, padding=1))
        self.model = nn.Sequential(*layers)
        self.receptive_radius = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.model(x)

    @classmethod
    def from_state_dict(cls, state_dict: dict) -> "DnCNN":
        """Build a DnCNN whose channels, width and depth match ``state_dict`` and load it (strict)."""
        convs = sorted(int(k.split(".")[1]) for k in state_dict if k.startswith("model.") and k.endswith(".weight"))
        if not convs:
            raise ValueError("state_dict has no 'model.N.weight' keys; it is not a DnCNN state_dict.")
        first = state_dict[f"model.{convs[0]}.weight"]
        net = cls(channels=first.shape[1], features=first.shape[0], depth=len(convs))
        net.load_state_dict(state_dict, strict=True)
        return net


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel attention: global average pooling -> bottleneck -> sigmoid gate."""

    def __init__(self, features: int, reduction: int = 4):
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(features, max(1, features // reduction), 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(max(1, features // reduction), features, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class RCANLite(nn.Module):
    """A small RCAN-like SR network: residual blocks with channel attention, then pixel-shuffle upsampling.

    The global average pooling of every channel-attention gate makes the receptive field global: any input
    pixel can change every output pixel. Shapes: (B, 3, h, w) -> (B, 3, h * scale, w * scale).
    """

    def __init__(self, scale: int = 4, features: int = 16, blocks: int = 4, attention: bool = True):
        super().__init__()
        self.scale = scale
        self.head = nn.Conv2d(3, features, 3, padding=1)
        body: list[nn.Module] = []
        for _ in range(blocks):
            body.append(_ResidualBlock(features, attention))
        self.body = nn.Sequential(*body)
        self.tail = nn.Sequential(nn.Conv2d(features, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = nn.functional.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        f = self.head(x)
        return up + self.tail(f + self.body(f))


class _ResidualBlock(nn.Module):
    def __init__(self, features: int, attention: bool):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(features, features, 3, padding=1)
        )
        self.attention = ChannelAttention(features) if attention else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attention(self.conv(x))


class FFDNetLike(nn.Module):
    """An FFDNet-style denoiser (Zhang et al., 2018): 2x2 pixel unshuffle, a noise-level map channel, a stack of
    3x3 convolutions with batch norm and ReLU at half resolution, pixel shuffle back, residual.

    ``sigma`` (0-255 scale) is the noise level fed as a constant map next to the unshuffled input (a buffer, so it
    is part of the state_dict). Receptive-field radius about ``2 * layers + 1`` input px, aligned to the 2x2 grid.
    Shapes: (B, channels, h, w) -> (B, channels, h, w), h and w even.
    """

    def __init__(self, channels: int = 3, features: int = 64, layers: int = 12, sigma: float = 50.0):
        super().__init__()
        self.register_buffer("sigma", torch.tensor(float(sigma) / 255.0))
        body: list[nn.Module] = [nn.Conv2d(4 * channels + 1, features, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(layers - 2):
            body += [nn.Conv2d(features, features, 3, padding=1, bias=False), nn.BatchNorm2d(features),
                     nn.ReLU(inplace=True)]
        body.append(nn.Conv2d(features, 4 * channels, 3, padding=1))
        self.body = nn.Sequential(*body)
        self.down = nn.PixelUnshuffle(2)
        self.up = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.down(x)
        noise = torch.ones_like(d[:, :1]) * self.sigma
        return x - self.up(self.body(torch.cat([d, noise], dim=1)))


class CompactSR(nn.Module):
    """A compact VGG-style SR network (the Real-ESRGAN Compact family): 3x3 convolutions with PReLU at the input
    resolution, a last convolution to ``3 * scale**2`` channels, pixel shuffle, plus the nearest upsampling of the
    input. Shapes: (B, 3, h, w) -> (B, 3, h * scale, w * scale)."""

    def __init__(self, scale: int = 4, features: int = 32, convs: int = 8):
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(3, features, 3, padding=1), nn.PReLU(features)]
        for _ in range(convs):
            layers += [nn.Conv2d(features, features, 3, padding=1), nn.PReLU(features)]
        layers += [nn.Conv2d(features, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        out += nn.functional.interpolate(x, scale_factor=self.scale, mode="nearest")
        return out


class UNetSR(nn.Module):
    """A small U-Net SR model: two strided-convolution downsamplings, transposed-convolution upsamplings with
    concatenated skips, then a pixel-shuffle x``scale`` head on the bilinear upsampling of the input.
    Shapes: (B, 3, h, w) -> (B, 3, h * scale, w * scale), h and w multiples of 4."""

    def __init__(self, scale: int = 2, features: int = 16):
        super().__init__()
        f = features
        self.scale = scale
        self.head = nn.Sequential(nn.Conv2d(3, f, 3, padding=1), nn.ReLU(inplace=True))
        self.down1 = nn.Sequential(nn.Conv2d(f, 2 * f, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.down2 = nn.Sequential(nn.Conv2d(2 * f, 4 * f, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.up2 = nn.ConvTranspose2d(4 * f, 2 * f, 2, stride=2)
        self.fuse2 = nn.Sequential(nn.Conv2d(4 * f, 2 * f, 3, padding=1), nn.ReLU(inplace=True))
        self.up1 = nn.ConvTranspose2d(2 * f, f, 2, stride=2)
        self.fuse1 = nn.Sequential(nn.Conv2d(2 * f, f, 3, padding=1), nn.ReLU(inplace=True))
        self.tail = nn.Sequential(nn.Conv2d(f, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        d1 = self.down1(h)
        d2 = self.down2(d1)
        u2 = self.fuse2(torch.cat([self.up2(d2), d1], dim=1))
        u1 = self.fuse1(torch.cat([self.up1(u2), h], dim=1))
        base = nn.functional.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return base + self.tail(u1)
