"""Attention widens the causal reach: the channel-attention and window-attention models use context that the
plain CNN cannot see.

The plain x2 SR CNN (``plain_sr2``) has a receptive radius of 5 input px. Its channel-attention twin
(``attention_sr2``, RCAN-like: the same convolutions plus a gate computed from a global average pool) and
the window-attention model (``window_sr2``, SwinIR-like: self-attention within 8x8 windows, then within
shifted windows) can be affected by blocks farther away:

- the *support* (did any intervention change the ROI output at all?) reaches beyond 5 px: exact, free of
  Monte-Carlo noise;
- the window model's reach stays within its architectural bound (``WindowSR.receptive_radius`` = 17 px: two
  windows plus three 3x3 convs), while channel attention has no bound at all;
- whether that far context *helps* (positive effect) or *hurts* (negative effect) the ROI is measured and
  recorded (``record_property``, in the JUnit XML; printed in the captured output) rather than asserted:
  it depends on the image.

The denoising pair (``dncnn_dn50`` / ``attention_dncnn_dn50``) is checked the same way at radius 7; there the
far context also carries a measurable share of the effect mass (``assert_uses_context_beyond``), whereas
the SR models' far effects stay below the 0.01 dB zero threshold: a reach that exists is not necessarily
a reach that matters.

Global models cannot be cropped by the fast mode (every block is in the support), so the inputs are kept
small: a 64x64 clean crop (a 32x32 input at x2, an 8x8 grid of blocks), with the ROI near a corner so that
the grid reaches 17 px (SR) and 33 px (denoising) away from it.
"""

from __future__ import annotations

import numpy as np
import pytest

import cem_checks as cc
from example_suite.nets import PlainSR, SmallDnCNN


def far_context(result: cc.CEMResult, beyond_px: float) -> dict:
    """Positive and negative effect mass (dB) of the blocks farther than ``beyond_px`` from the ROI."""
    far = (~result.roi_mask) & (result.distance > beyond_px)
    effect = result.effect[far]
    return {
        "blocks": int(far.sum()),
        "support_blocks": int(result.support[far].sum()),
        "positive_mass_db": float(np.maximum(effect, 0).sum()),
        "negative_mass_db": float(np.maximum(-effect, 0).sum()),
    }


def report_far_context(record_property, result: cc.CEMResult, beyond_px: float) -> dict:
    """Record whether the context beyond ``beyond_px`` helps or hurts the ROI, and return the numbers."""
    far = far_context(result, beyond_px)
    verdict = "helps" if far["positive_mass_db"] > far["negative_mass_db"] else "hurts"
    if far["positive_mass_db"] == far["negative_mass_db"] == 0:
        verdict = "has no effect above tol_db on"
    record_property("far_context", far)
    print(f"context beyond {beyond_px:g} px {verdict} the ROI: {far}")
    return far


CROP = 64  # clean crop side (px)
pytestmark = pytest.mark.cem(roi=(8, 8, 16))  # (x, y, side) in output px


@pytest.mark.cem(task="sr2")
@pytest.mark.parametrize("name", ["attention_sr2", "window_sr2"])
def test_sr_attention_reaches_beyond_the_plain_cnn(cem, example_model, held_out, record_property, name):
    result = cem(example_model(name), held_out(CROP))
    cc.assert_property(
        result, "support_radius", ">", PlainSR.receptive_radius, name="reaches_beyond_plain_cnn",
        description=f"some block farther than the plain CNN's {PlainSR.receptive_radius} px changes the ROI output",
    )
    report_far_context(record_property, result, PlainSR.receptive_radius)


@pytest.mark.cem(task="sr2")
def test_window_attention_reach_stays_within_its_windows(cem, example_model, held_out):
    model = example_model("window_sr2")
    result = cem(model, held_out(CROP))
    cc.assert_receptive_field_within(result, radius=model.receptive_radius)


@pytest.mark.cem(task="sr2")
def test_channel_attention_reach_is_global(cem, example_model, held_out):
    result = cem(example_model("attention_sr2"), held_out(CROP))
    # every block of the grid, even the farthest corner, can change the ROI output
    assert result.support.all()


@pytest.mark.cem(task="dn50")
def test_denoiser_channel_attention_reaches_beyond_the_plain_dncnn(cem, example_model, held_out, record_property):
    result = cem(example_model("attention_dncnn_dn50"), held_out(CROP))
    cc.assert_property(
        result, "support_radius", ">", SmallDnCNN.receptive_radius, name="reaches_beyond_plain_cnn",
        description=f"some block farther than the plain DnCNN's {SmallDnCNN.receptive_radius} px changes the ROI output",
    )
    # beyond changing the output, that far context carries a measurable share (>= 1 %) of the effect mass
    cc.assert_uses_context_beyond(result, radius=SmallDnCNN.receptive_radius, share=0.01)
    report_far_context(record_property, result, SmallDnCNN.receptive_radius)
