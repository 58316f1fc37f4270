"""Integration: the real pretrained DnCNN (../shared/data; skipped when absent), in both modes."""

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


@pytest.fixture(scope="module")
def maps(dncnn, shared_data):
    img = cc.load_image(shared_data / "demo_2.png")[:, 96:144, 96:144]
    kw = dict(task=cc.Denoising(50), roi=(0, 0, 8), block_size=8, coarse=3, fine=10, device="cpu", progress=False, seed=0)
    return {mode: cc.compute_cem(dncnn, img, mode=mode, **kw) for mode in ("paper", "fast")}


@pytest.mark.parametrize("mode", ["paper", "fast"])
def test_real_dncnn_map_is_local_and_non_trivial(maps, dncnn, mode):
    res = maps[mode]
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


def test_paper_mode_spends_the_fixed_budget(maps):
    res = maps["paper"]
    assert (res.n_samples[res.flagged] == 10).all() and (res.n_samples[~res.flagged] == 3).all()


def test_fast_mode_rules_out_far_blocks_crops_and_stops_early(maps):
    fast, paper = maps["fast"], maps["paper"]
    info = fast.meta["fast"]
    assert info["support_radius_px"] <= 20
    assert (fast.n_samples[fast.distance > 20] == 0).all()  # no per-block pass beyond the support
    assert info["crop"] is not None and info["crop"][2] * info["crop"][3] < 48 * 48
    assert fast.n_samples.max() <= 10 and sum(info["stopped"].values()) == fast.flagged.sum()
    assert fast.pixels_processed < paper.pixels_processed / 2
    np.testing.assert_array_equal(fast.support, paper.support)
    # the strong effects agree within their uncertainty
    strong = np.abs(paper.effect) > 0.5
    se = np.sqrt(fast.stderr**2 + paper.stderr**2)
    assert strong.sum() >= 2 and (np.abs(fast.raw_effect - paper.raw_effect)[strong] <= 4 * se[strong] + 0.05).all()
