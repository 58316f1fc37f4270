"""Checkpoints of published architectures, loaded with spandrel's architecture detection, then mapped.

``cem_load_model(path)`` without ``arch`` hands a state_dict to spandrel (optional extra
``pytest-cem[spandrel]``), which recognises the architecture from the state_dict's keys and shapes and
rebuilds it. Each test here builds a small configuration of an architecture that spandrel knows, with
random weights from a fixed seed, saves its state_dict, loads it back with detection, checks what spandrel
detected, and asserts a causal property that the architecture guarantees whatever its weights:

- DnCNN (KAIR layout), Real-ESRGAN Compact and ESRGAN's RRDBNet are pure convolutional networks: nothing
  farther from the ROI than their receptive radius (computed from the configuration) can change its output;
- RCAN's channel attention averages each feature map over the whole image, so every block reaches the ROI.

These tests skip when spandrel (or the torchvision it imports) is unavailable; ``make test-spandrel`` runs
them in an environment with both.
"""

from __future__ import annotations

import math

import pytest
import torch

import cem_checks as cc
from cem_checks.loading import spandrel_unavailable


SPANDREL_UNAVAILABLE = spandrel_unavailable()
if SPANDREL_UNAVAILABLE is not None:
    SPANDREL_UNAVAILABLE += "; `make test-spandrel` runs these in an environment with spandrel and a matching torchvision"
pytestmark = pytest.mark.skipif(SPANDREL_UNAVAILABLE is not None, reason=SPANDREL_UNAVAILABLE or "")

ROI = (0, 0, 8)  # the top-left 8x8 output px of the crop


def random_model(cls, seed: int, **config) -> torch.nn.Module:
    """``cls(**config)`` with its default random initialisation drawn from ``seed`` (the global RNG is left as
    it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(**config).eval()


def crop(cem_images, size: int) -> torch.Tensor:
    """A size x size crop of the bundled astronaut photograph."""
    return cc.load_image(cem_images["astronaut"])[:, 100 : 100 + size, 200 : 200 + size]


def detected(path) -> tuple[str, int]:
    """The architecture id and scale that spandrel detects in the checkpoint at ``path``."""
    import spandrel

    descriptor = spandrel.ModelLoader(device="cpu").load_from_file(str(path))
    return descriptor.architecture.id, descriptor.scale


def same_outputs(a: torch.nn.Module, b: torch.nn.Module, size: int = 16) -> bool:
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a(x.clone()), b(x.clone()))


def test_dncnn_state_dict_is_detected_and_stays_within_its_receptive_field(cem, cem_load_model, cem_images, tmp_path):
    from spandrel.architectures.DnCNN import DnCNN

    # KAIR's DnCNN: nb 3x3 convolutions in sequence, each widening the receptive field by 1 px
    # (spandrel detects the plain-ReLU layout from 8 convolutions on)
    nb = 8
    net = random_model(DnCNN, seed=1, in_nc=3, out_nc=3, nc=16, nb=nb, act_mode="R")
    torch.save(net.state_dict(), tmp_path / "dncnn.pth")

    model = cem_load_model(tmp_path / "dncnn.pth")  # no arch: spandrel detects it
    assert detected(tmp_path / "dncnn.pth") == ("DnCNN", 1)
    assert isinstance(model, DnCNN) and same_outputs(model, net)

    result = cem(model, crop(cem_images, 48), task="dn25", roi=ROI, block_size=4)
    cc.assert_receptive_field_within(result, radius=nb)
    assert result.support[result.distance == 1].any()  # the context right next to the ROI reaches it


def test_compact_safetensors_is_detected_and_stays_within_its_receptive_field(cem, cem_load_model, cem_images,
                                                                             tmp_path):
    pytest.importorskip("safetensors", reason="safetensors not installed (optional extra pytest-cem[safetensors])")
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    # Real-ESRGAN Compact (SRVGGNetCompact): a first 3x3 convolution, num_conv more, a last one, all at the
    # input resolution; the pixel shuffle and the nearest-upsampled input added to the output reach no farther
    num_conv, scale = 4, 4
    radius = num_conv + 2
    net = random_model(Compact, seed=2, num_feat=16, num_conv=num_conv, upscale=scale)
    save_file(net.state_dict(), str(tmp_path / "compact.safetensors"))

    model = cem_load_model(tmp_path / "compact.safetensors")
    assert detected(tmp_path / "compact.safetensors") == ("Compact", scale)
    assert isinstance(model, Compact) and model.upscale == scale and same_outputs(model, net)

    result = cem(model, crop(cem_images, 96), task=f"sr{scale}", roi=ROI)
    assert result.scale == scale and result.output_shape == (96, 96)
    cc.assert_receptive_field_within(result, radius=radius)
    assert result.support[result.distance == 1].any()


def test_rrdbnet_state_dict_is_detected_and_stays_within_its_receptive_field(cem, cem_load_model, cem_images,
                                                                            tmp_path):
    from spandrel.architectures.ESRGAN import ESRGAN  # spandrel's RRDBNet

    # ESRGAN's RRDBNet at scale 2: at the input resolution a first convolution, num_blocks RRDBs (3 dense
    # blocks of 5 chained 3x3 convolutions each: 15 px per RRDB) and a trunk convolution; then a nearest x2
    # upsampling and 3 convolutions at twice the resolution, which reach ceil(3 / 2) = 2 input px farther
    num_blocks, scale = 1, 2
    radius = 1 + 15 * num_blocks + 1 + math.ceil(3 / scale)
    net = random_model(ESRGAN, seed=3, num_filters=16, num_blocks=num_blocks, scale=scale)
    torch.save(net.state_dict(), tmp_path / "rrdbnet.pth")

    model = cem_load_model(tmp_path / "rrdbnet.pth")
    assert detected(tmp_path / "rrdbnet.pth") == ("ESRGAN", scale)
    assert isinstance(model, ESRGAN) and model.scale == scale and same_outputs(model, net)

    result = cem(model, crop(cem_images, 64), task=f"sr{scale}", roi=ROI)
    assert result.scale == scale and result.distance.max() > radius  # the crop reaches past the radius
    cc.assert_receptive_field_within(result, radius=radius)
    assert result.support[result.distance == 1].any()


def test_rcan_state_dict_is_detected_and_its_channel_attention_sees_the_whole_image(cem, cem_load_model, cem_images,
                                                                                    tmp_path):
    from spandrel.architectures.RCAN import RCAN

    # RCAN's convolutions alone would reach 9 input px here (head 1, residual group 2 x 2 + 1, body 1,
    # upsampler 1, and the last convolution at twice the resolution 1); but every residual block scales its
    # channels by an attention computed from a global average over the image
    scale, conv_radius = 2, 9
    net = random_model(RCAN, seed=4, scale=scale, n_resgroups=1, n_resblocks=2, n_feats=16, reduction=2)
    torch.save(net.state_dict(), tmp_path / "rcan.pth")

    model = cem_load_model(tmp_path / "rcan.pth")
    assert detected(tmp_path / "rcan.pth") == ("RCAN", scale)
    assert isinstance(model, RCAN) and model.scale == scale and same_outputs(model, net)

    result = cem(model, crop(cem_images, 64), task=f"sr{scale}", roi=ROI)
    assert result.distance.max() > conv_radius
    assert result.support.all()  # every block of the image changes the ROI output
    # the radius is the pixel distance of the farthest input pixel, the far corner of the image
    assert cc.support_radius(result) == result.far_distance.max() > result.distance.max()
