"""Integration: paper mode on the real pretrained DnCNN (../shared/data; skipped when absent)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cem_checks as cc
from cem_checks.models import DnCNN


@pytest.fixture(scope="module")
def dncnn(shared_data):
    sd = torch.load(shared_data / "dncnn_color_blind.pth", map_location="cpu", weights_only=True)
    return DnCNN.from_state_dict(sd)


def test_real_dncnn_map_is_local_and_non_trivial(dncnn, shared_data):
    img = cc.load_image(shared_data / "demo_2.png")[:, 96:144, 96:144]
    res = cc.compute_cem(dncnn, img, task=cc.Denoising(50), roi=(0, 0, 8), block_size=8, coarse=3, fine=10,
                         device="cpu", progress=False, seed=0)
    assert dncnn.receptive_radius == 20
    assert res.distance.max() == 33
    # 20 conv layers of 3x3: nothing beyond 20 px can reach the ROI, exactly
    assert not res.support[res.distance > 20].any()
    assert (res.effect[res.distance > 20] == 0).all() and (res.raw_effect[res.distance > 20] == 0).all()
    # the blocks next to the ROI do reach it, and the ROI's own content helps a lot
    assert res.support[res.distance <= 9].all()
    assert res.effect[0, 0] > 1.0
    assert (res.effect[res.distance == 1] > 0).any()
    assert 20 < res.base_psnr < 40
    assert res.n_samples[res.flagged].min() == 10
