"""Hypothesis-driven ROI placement: the receptive-field gate holds wherever the ROI lies.

A test at one hand-picked ROI can miss what happens at the image border (zero padding), at a ROI that
straddles blocks, or at a ROI of another size. Here Hypothesis draws the ROI (position and side, aligned to
the x2 scale) inside the output of the plain x2 SR CNN and the exact support check must hold for each:
nothing beyond the theoretical 5 px changes the ROI output, and the ROI's own input footprint matters.

The ``"cem"`` profile of :mod:`cem_checks.strategies` makes the draws reproducible (derandomized, no example
database, no deadline); ``max_examples`` is kept small because each example computes a map.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

import cem_checks as cc
from cem_checks.strategies import cem_hypothesis_settings, rois

SIZE = 64  # clean crop side (output px): a 32x32 input, 8x8 blocks of 4 px


@settings(
    parent=cem_hypothesis_settings,
    max_examples=6,
    # the fixtures (cem, the model, the image) do not change between examples
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(roi=rois((SIZE, SIZE), size=(4, 16), scale=2))
@pytest.mark.cem(task="sr2")
def test_plain_sr_reach_holds_for_any_roi(cem, example_model, held_out, roi):
    model = example_model("plain_sr2")
    result = cem(model, held_out(SIZE), roi=roi)
    cc.assert_receptive_field_within(result, radius=model.receptive_radius)
    assert result.support[result.roi_mask].any()
