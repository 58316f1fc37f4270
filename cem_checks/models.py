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
