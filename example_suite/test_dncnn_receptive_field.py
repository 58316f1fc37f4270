"""Causal-behaviour tests of the real pretrained DnCNN (20 conv layers: receptive radius 20 px).

Gating CI on receptive-field usage: a denoiser built from 20 3x3 convolutions must not be affected by
anything more than 20 px from the region it restores, and the content right around that region must help.
"""

from __future__ import annotations

import pytest

import cem_checks as cc


@pytest.fixture(scope="module")
def dncnn_map(real_dncnn, demo_crop) -> cc.CEMResult:
    return cc.compute_cem(
        real_dncnn,
        demo_crop,
        task=cc.Denoising(sigma=50),
        roi=(0, 0, 8),  # the top-left 8x8 px of the crop
        block_size=8,
        device="cpu",
    )


def test_dncnn_uses_no_context_beyond_its_receptive_field(dncnn_map, real_dncnn):
    cc.assert_receptive_field_within(dncnn_map, radius=real_dncnn.receptive_radius)


def test_dncnn_positive_effect_is_local(dncnn_map):
    cc.assert_positive_effect_local(dncnn_map, radius=9, mass=0.9)


def test_dncnn_context_next_to_the_roi_helps(dncnn_map):
    assert dncnn_map.effect[dncnn_map.roi_mask].min() > 1.0  # the ROI's own content matters most
    assert cc.counts(dncnn_map).positive >= 2  # and some of its context helps too
