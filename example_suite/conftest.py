"""Shared fixtures of the example suite: real models and images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import cem_checks as cc
from cem_checks.models import DnCNN

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def real_dncnn() -> DnCNN:
    """The real pretrained colour blind DnCNN from ../shared/data (skipped when absent)."""
    ckpt = SHARED / "dncnn_color_blind.pth"
    if not ckpt.is_file():
        pytest.skip(f"pretrained DnCNN checkpoint not found at {ckpt}")
    return DnCNN.from_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)).eval()


@pytest.fixture(scope="session")
def demo_crop() -> torch.Tensor:
    """A 48x48 crop of demo_2.png (skipped when ../shared/data is absent)."""
    path = SHARED / "demo_2.png"
    if not path.is_file():
        pytest.skip(f"demo image not found at {path}")
    return cc.load_image(path)[:, 96:144, 96:144]
