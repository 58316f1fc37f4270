"""The example suite's trained models (example_suite/checkpoints): each loads with the architecture its manifest
names, has the receptive radius it claims, and beats its trivial baseline on held-out data (recomputed here).

Skipped when the checkpoints have not been trained (python example_suite/train.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # example_suite is imported from the repository root
    sys.path.insert(0, str(ROOT))

import cem_checks as cc
from example_suite import zoo

pytestmark = pytest.mark.skipif(not zoo.MANIFEST.is_file(), reason="example checkpoints not trained")


@pytest.fixture(scope="module")
def manifest() -> dict:
    return zoo.load_manifest()


def load(manifest: dict, name: str) -> torch.nn.Module:
    entry = manifest["models"].get(name)
    if entry is None or not (zoo.CHECKPOINTS / entry["file"]).is_file():
        pytest.skip(f"example model {name!r} is not trained")
    return cc.load_model(zoo.CHECKPOINTS / entry["file"], arch=zoo.resolve_arch(entry["architecture"]))


def input_gradient_support(model: torch.nn.Module, side: int) -> tuple[torch.Tensor, int]:
    """The (side, side) bool map of the input pixels on which the centre output pixel (all channels) depends,
    from the gradient of that output at a random input (exact for these piecewise smooth networks), and the
    centre input pixel."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand((1, 3, side, side), generator=g, requires_grad=True)
    c = side // 2
    s = int(getattr(model, "scale", 1))
    out = model(x)
    out[0, :, c * s, c * s].sum().backward()
    return x.grad[0].abs().sum(0) > 0, c


def chebyshev_reach(support: torch.Tensor, c: int) -> int:
    rows, cols = torch.nonzero(support, as_tuple=True)
    return int(torch.maximum((rows - c).abs(), (cols - c).abs()).max())


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_checkpoint_loads_with_its_manifest_architecture(manifest, name):
    model = load(manifest, name)
    entry = manifest["models"][name]
    assert type(model).__name__ == entry["architecture"].split(":")[1]
    assert not model.training
    assert model.receptive_radius == entry["receptive_radius"]
    assert cc.parse_task(entry["task"]).scale == model.scale


@pytest.mark.parametrize("name", [n for n, s in zoo.MODELS.items() if zoo.resolve_arch(s.arch).pure_conv])
def test_pure_conv_model_depends_on_exactly_its_receptive_radius(manifest, name):
    model = load(manifest, name)
    r = model.receptive_radius
    support, c = input_gradient_support(model, 4 * r + 1)
    assert chebyshev_reach(support, c) == r


def test_window_model_reach_is_within_its_bound_and_beyond_the_plain_cnn(manifest):
    model = load(manifest, "window_sr2")
    support, c = input_gradient_support(model, 48)  # sides a multiple of the window: no padding
    reach = chebyshev_reach(support, c)
    assert zoo.resolve_arch(zoo.MODELS["plain_sr2"].arch).receptive_radius < reach <= model.receptive_radius


@pytest.mark.parametrize("name", ["attention_sr2", "attention_dncnn_dn50"])
def test_channel_attention_model_reach_is_global(manifest, name):
    model = load(manifest, name)
    assert model.receptive_radius is None
    support, _ = input_gradient_support(model, 33)
    assert support.all()


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_model_beats_its_trivial_baseline_on_a_held_out_crop(manifest, name):
    model = load(manifest, name)
    clean = zoo.val_crops(1)
    psnr, trivial = zoo.evaluate(model, zoo.MODELS[name].task, clean)
    assert psnr > trivial + 0.2, f"{name}: {psnr:.2f} dB vs {trivial:.2f} dB for the trivial baseline"
