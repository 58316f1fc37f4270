"""Causal locality of the pure convolutional example models (x2 SR, DN sigma 50, deraining).

A stack of 3x3 convolutions has a receptive radius r known from its architecture (the sum of its kernels'
half-widths, ``model.receptive_radius``): no input block farther than r px from the region of interest
(ROI) can change that region's output at all. The exact support check (``by="support"``: did *any*
intervention beyond r change the ROI output, even by one float ulp?) makes that a hard CI gate: a padding,
a pooling or a global statistic slipped into the architecture breaks it.

Within that field the causal effect should also be local and mostly helpful: most of the positive effect
comes from the blocks right next to the ROI, and only a small share of the effect mass is negative (blocks
whose real content makes the ROI worse than random natural content would).

The models are those trained by ``example_suite/train.py``; the image is a crop of chelsea, which they never
saw in training.
"""

from __future__ import annotations

import pytest

import cem_checks as cc

CROP = 64  # clean crop side (px): a 32x32 input at x2 SR, 64x64 for denoising and deraining
ROI = (8, 8, 16)  # (x, y, side) in output px: near a corner, so the grid reaches far beyond every radius

# one test per model and property; the marker gives each model its task
MODELS = [
    pytest.param("plain_sr2", marks=pytest.mark.cem(task="sr2"), id="plain_sr2"),
    pytest.param("dncnn_dn50", marks=pytest.mark.cem(task="dn50"), id="dncnn_dn50"),
    pytest.param("derain_dr", marks=pytest.mark.cem(task="dr"), id="derain_dr"),
]
pytestmark = pytest.mark.cem(roi=ROI)


@pytest.mark.parametrize("name", MODELS)
def test_no_effect_beyond_the_theoretical_receptive_radius(cem, example_model, held_out, name):
    model = example_model(name)
    result = cem(model, held_out(CROP))
    cc.assert_receptive_field_within(result, radius=model.receptive_radius)


@pytest.mark.parametrize("name", MODELS)
def test_positive_effect_is_concentrated_next_to_the_roi(cem, example_model, held_out, name):
    model = example_model(name)
    result = cem(model, held_out(CROP))
    # 90 % of the positive effect mass lies in the first ring of blocks around the ROI (distance 1 px)
    cc.assert_positive_effect_local(result, radius=1, mass=0.9)


@pytest.mark.parametrize("name", MODELS)
def test_little_of_the_effect_is_harmful(cem, example_model, held_out, name):
    model = example_model(name)
    result = cem(model, held_out(CROP))
    cc.assert_negative_fraction_at_most(result, 0.1, by="mass")  # at most 10 % of the absolute effect mass


@pytest.mark.xfail(strict=True, reason="shows what a failing property looks like in the report")
@pytest.mark.cem(task="sr2")
def test_plain_sr_claimed_to_use_nothing_beyond_its_roi(cem, example_model, held_out):
    model = example_model("plain_sr2")
    result = cem(model, held_out(CROP))
    cc.assert_receptive_field_within(result, radius=0)
