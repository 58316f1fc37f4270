"""Shared fixtures of the example suite: real models and images.

- ``real_dncnn`` / ``demo_crop``: the real pretrained DnCNN and a crop of a demo image from ../shared/data
  (skipped when absent).
- ``example_model``: ``example_model(name)`` loads one of the small models trained by
  ``example_suite/train.py`` (``example_suite/checkpoints``, see its ``manifest.json``) through the plugin's
  ``cem_load_model``, with the architecture the manifest names.
- ``held_out``: ``held_out(size, top=..., left=...)`` crops the bundled image chelsea, which the example
  models never saw in training.

The regression baselines of ``cem_baseline`` live in ``example_suite/baselines``: the ini key
``cem_baseline_dir`` in ``pyproject.toml`` says so (``--cem-baseline-dir`` overrides it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import cem_checks as cc
from cem_checks.models import DnCNN
from example_suite import zoo

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


@pytest.fixture(scope="session")
def example_manifest() -> dict:
    """The manifest of the trained example models (skipped when the checkpoints are absent)."""
    if not zoo.MANIFEST.is_file():
        pytest.skip(f"no example checkpoints at {zoo.CHECKPOINTS}; run python example_suite/train.py")
    return zoo.load_manifest()


@pytest.fixture
def example_model(cem_load_model, example_manifest):
    """``example_model(name) -> nn.Module``: the trained example model ``name`` (eval mode, CPU)."""

    def load(name: str) -> torch.nn.Module:
        entry = example_manifest["models"].get(name)
        path = zoo.CHECKPOINTS / entry["file"] if entry else None
        if path is None or not path.is_file():
            pytest.skip(f"example model {name!r} is not trained; run python example_suite/train.py --only {name}")
        return cem_load_model(path, arch=entry["architecture"])  # "example_suite.nets:PlainSR"

    return load


@pytest.fixture(scope="session")
def held_out(cem_images):
    """``held_out(size, top=100, left=150) -> (3, size, size)``: a crop of chelsea (clean px), the image the
    example models were not trained on."""
    image = cc.load_image(cem_images[zoo.HELD_OUT_IMAGE])

    def crop(size: int, top: int = 100, left: int = 150) -> torch.Tensor:
        return image[:, top : top + size, left : left + size].contiguous()

    return crop
