"""Causal property assertions: each one passes, fails with a full message, and has a check_* twin."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

import cem_checks as cc
from cem_checks import checks as C
from nets import ConvStack

FAST = dict(mode="paper", coarse=2, fine=4, progress=False, device="cpu")


def _map(**kwargs) -> cc.CEMResult:
    """7x7 blocks of 1 px, ROI at the centre block (3, 3). Positive effect +1 dB on ring 1 (distance 1),
    +0.5 dB at (0, 0) (distance 3), -0.4 dB at (6, 3) (distance 3), -0.1 dB at (3, 5) (distance 2)."""
    e = np.zeros((7, 7))
    e[2:5, 2:5] = 1.0
    e[3, 3] = 4.0
    e[0, 0] = 0.5
    e[6, 3] = -0.4
    e[3, 5] = -0.1
    kwargs.setdefault("seed", 11)
    return cc.CEMResult.from_effects(e, roi=(3, 3, 1), block_size=1, mode="paper", device="cpu", **kwargs)


@pytest.fixture(scope="module")
def res() -> cc.CEMResult:
    return _map()


# ----------------------------------------------------------------------------- positive_effect_local
def test_positive_effect_local_passes(res):
    # positive mass 8.5; within 1 px: 8 (94 %)
    out = C.assert_positive_effect_local(res, radius=1, mass=0.9)
    assert out.passed and out.measured == 1 and out.bound == 1.0 and out.name == "positive_effect_local"


def test_positive_effect_local_fails_with_the_offending_block(res):
    with pytest.raises(C.CausalPropertyError, match=r"(?s)'positive_effect_local' FAILED: at least 95% of the positive "
                       r"effect mass lies within 1 px of the ROI.*= 3 px.*bound:    <= 1 px.*"
                       r"block \(x, y, w, h\) = \(0, 0, 1, 1\) px \[row 0, col 0\] "
                       r"at 3 px: \+0\.500 dB.*seed=11 mode=paper device=cpu.*see the map:") as info:
        C.assert_positive_effect_local(res, radius=1, mass=0.95)
    out = info.value.outcome
    assert isinstance(info.value, AssertionError)
    assert (out.passed, out.measured, out.bound, out.op) == (False, 3, 1.0, "<=")
    assert [(b.row, b.col, b.distance_px, b.effect_db) for b in out.worst_blocks] == [(0, 0, 3, 0.5)]
    assert out.settings["seed"] == 11 and out.settings["mode"] == "paper" and out.settings["device"] == "cpu"


def test_check_twin_returns_the_failure_without_raising(res):
    out = C.check_positive_effect_local(res, radius=2, mass=1.0)
    assert not out.passed and out.measured == 3
    assert "FAILED" in out.message()


# -------------------------------------------------------------------------- negative_fraction_at_most
def test_negative_fraction_passes_and_fails(res):
    # 2 negative blocks of 48
    assert C.assert_negative_fraction_at_most(res, 0.05).measured == pytest.approx(2 / 48)
    with pytest.raises(C.CausalPropertyError, match=r"(?s)at most 4% of the blocks hurt the ROI.*"
                       r"= 0\.04167 \(4\.17%\).*<= 0\.04 \(4\.00%\).*"
                       r"block \(x, y, w, h\) = \(3, 6, 1, 1\) px \[row 6, col 3\] "
                       r"at 3 px: -0\.400 dB.*block \(x, y, w, h\) = \(5, 3, 1, 1\) px \[row 3, col 5\] "
                       r"at 2 px: -0\.100 dB"):
        C.assert_negative_fraction_at_most(res, 0.04)
    by_mass = C.check_negative_fraction_at_most(res, 0.05, by="mass")  # 0.5 of 9 dB = 5.6 %
    assert not by_mass.passed and by_mass.measured == pytest.approx(0.5 / 9)


def test_negative_fraction_counts_only_significant_blocks_when_asked():
    se = np.zeros((7, 7))
    se[6, 3] = 0.3  # CI -0.4 +- 0.59 straddles 0
    noisy = _map(stderr=se)
    assert not C.check_negative_fraction_at_most(noisy, 0.03).passed  # 2 / 48 = 4.2 %
    out = C.assert_negative_fraction_at_most(noisy, 0.03, significant=True)  # 1 / 48 = 2.1 %
    assert out.measured == pytest.approx(1 / 48)
    assert "significantly (95% CI below zero)" in out.description


# ---------------------------------------------------------------------------- receptive_field_within
def test_receptive_field_within_by_support_effect_and_significance():
    sup = np.zeros((7, 7), bool)
    sup[1:6, 1:6] = True  # distance <= 2
    se = np.zeros((7, 7))
    se[0, 0] = se[6, 3] = 1.0  # the distance-3 effects are not significant
    r = _map(support=sup, stderr=se)
    assert C.assert_receptive_field_within(r, 2).measured == 2
    assert C.assert_receptive_field_within(r, 2, by="significant").measured == 2
    with pytest.raises(C.CausalPropertyError, match=r"(?s)no block farther than 2 px from the ROI \(its nearest pixel\) "
                       r"has a non-zero effect.*"
                       r"max_reach\(significant=False\) = 3 px.*block \(x, y, w, h\) = \(0, 0, 1, 1\) px \[row 0, col 0\] "
                       r"at 3 px: \+0\.500 dB, 95% CI "
                       r"\[-1\.460, \+2\.460\]\n    block \(x, y, w, h\) = \(3, 6, 1, 1\) px \[row 6, col 3\] "
                       r"at 3 px: -0\.400 dB"):
        C.assert_receptive_field_within(r, 2, by="effect")
    with pytest.raises(C.CausalPropertyError, match=r"(?s)changes the ROI output in any draw.*support_radius\(\) = 2 px.*<= 1 px"):
        C.assert_receptive_field_within(r, 1)


def test_receptive_field_of_a_conv_stack(natural32):
    model = ConvStack((1, 1, 1))
    r = cc.compute_cem(model, natural32, task=cc.Denoising(15), roi=(12, 12, 8), block_size=4, **FAST)
    # a paper-mode map knows its support per block: the adjacent ring of 4-px blocks (pixels 1 to 4 px away) reaches
    # the ROI, so the radius lies between 1 and 4 px, and a bound of 3 px is undecided there: the gate fails
    assert r.radius_px is None and cc.support_radius_bounds(r) == (1, 4)
    with pytest.raises(C.CausalPropertyError, match=r"(?s)support_radius\(\) = 4 px.*bound:    <= 3 px.*resolution of "
                       r"the blocks \(4 px\): the support radius lies between 1 and 4 px.*undecided at 3 px.*"
                       r"compute_support\(\.\.\., within=3\)"):
        C.assert_receptive_field_within(r, model.radius)
    assert C.assert_receptive_field_within(r, 4).measured == 4  # every supported block lies within 4 px: decided
    assert C.assert_receptive_field_within(r, model.radius, by="effect").measured <= 1
    with pytest.raises(C.CausalPropertyError, match=r"(?s)support_radius\(\) = 4 px.*bound:    <= 0 px.*at 1 px.*"
                       rf"model=ConvStack task=dn15 roi=\(12, 12, 8\) block_size=4 scale=1 seed=0 mode={r.mode} device=cpu"):
        C.assert_receptive_field_within(r, 0)
    # the support stage answers in pixels: exactly the model's radius, whatever the block size
    s = cc.compute_support(model, natural32, task=cc.Denoising(15), roi=(12, 12, 8), block_size=4, progress=False,
                           device="cpu")
    assert s.radius_px == model.radius and C.assert_receptive_field_within(s, model.radius).passed
    with pytest.raises(C.CausalPropertyError, match=r"support_radius\(\) = 3 px"):
        C.assert_receptive_field_within(s, model.radius - 1)
    # so does a fast-mode map (its group tests decide the radius in pixels)
    f = cc.compute_cem(model, natural32, task=cc.Denoising(15), roi=(12, 12, 8), block_size=4, coarse=2, fine=4,
                       progress=False, device="cpu")
    assert f.radius_px == model.radius and cc.support_radius(f) == model.radius
    assert C.assert_receptive_field_within(f, model.radius).note == ""


# ------------------------------------------------------------------------------- uses_context_beyond
def test_uses_context_beyond(res):
    # |effect| mass 9: 1.0 at distance 3 (11.1 %), 0.1 at distance 2
    assert C.assert_uses_context_beyond(res, 2, 0.1).measured == pytest.approx(0.9 / 9)
    with pytest.raises(C.CausalPropertyError, match=r"(?s)at least 20% of the absolute effect mass comes from blocks "
                       r"farther than 2 px.*context_share\(beyond=2\.0.*= 0\.1 \(10\.00%\).*>= 0\.2.*"
                       r"block \(x, y, w, h\) = \(0, 0, 1, 1\) px \[row 0, col 0\] "
                       r"at 3 px: \+0\.500 dB.*block \(x, y, w, h\) = \(3, 6, 1, 1\) px \[row 6, col 3\] "
                       r"at 3 px: -0\.400 dB"):
        C.assert_uses_context_beyond(res, 2, 0.2)


def test_planted_non_local_model_uses_context_and_is_not_local(planted_map):
    r, far, d = planted_map
    assert C.assert_uses_context_beyond(r, 8, 0.9).measured == 1.0
    with pytest.raises(C.CausalPropertyError,
                       match=rf"(?s)= {d} px.*block \(x, y, w, h\) = \({far[1] * 4}, {far[0] * 4}, 4, 4\) px "
                       rf"\[row {far[0]}, col {far[1]}\] at {d} px: \+"):
        C.assert_positive_effect_local(r, 8)


def test_a_map_without_context_does_not_use_it():
    e = np.zeros((3, 3))
    e[1, 1] = 1.0
    only_roi = cc.CEMResult.from_effects(e, roi=(1, 1, 1), block_size=1)
    assert not C.check_uses_context_beyond(only_roi, 0, 0.01).passed
    assert C.check_positive_effect_local(only_roi, 0).passed  # nothing positive outside the ROI
    assert C.check_receptive_field_within(only_roi, 0).passed


# ------------------------------------------------------------------------------ effect_range_between
def test_effect_range_between(res):
    # outside the ROI: max +1.0, min -0.4
    assert C.assert_effect_range_between(res, 1.0, 2.0).measured == pytest.approx(1.4)
    with pytest.raises(C.CausalPropertyError, match=r"(?s)lies between 0\.1 and 1 dB.*= 1\.4 dB.*between 0\.1 dB and 1 dB "
                       r"\(inclusive\).*\(\d, \d, 1, 1\) px \[row \d, col \d\] at 1 px: \+1\.000 dB"
                       r".*\(3, 6, 1, 1\) px \[row 6, col 3\] at 3 px: -0\.400 dB"):
        C.assert_effect_range_between(res, 0.1, 1.0)
    assert C.check_effect_range_between(res, 4.0, 5.0, include_roi=True).passed  # +4.0 - (-0.4)


# ------------------------------------------------------------------------------------ assert_property
def test_assert_property_with_named_metrics(res):
    assert C.assert_property(res, "max_reach", "==", 3, significant=False).passed
    assert C.assert_property(res, "locality", ">=", 0.9, radius=1).measured == pytest.approx(8 / 8.5)
    with pytest.raises(C.CausalPropertyError, match=r"(?s)'diffusion_index' FAILED.*diffusion_index\(\) = .*bound:    > 90"):
        C.assert_property(res, "diffusion_index", ">", 90)
    out = C.check_property(res, "effect_range_db", "between", (0.0, 1.0), name="tight_range", description="small range")
    assert not out.passed and out.name == "tight_range" and out.description == "small range"


def test_assert_property_with_a_callable_metric(res):
    def roi_effect_db(result):
        return float(result.effect[result.roi_mask].sum())

    assert C.assert_property(res, roi_effect_db, ">=", 4.0).measured == 4.0
    with pytest.raises(C.CausalPropertyError, match=r"roi_effect_db\(\) = 4\n  bound:    < 1\n"):
        C.assert_property(res, roi_effect_db, "<", 1)


def test_an_undefined_metric_fails_with_a_note():
    zero = cc.CEMResult.from_effects(np.zeros((3, 3)), roi=(1, 1, 1), block_size=1)
    out = C.check_property(zero, "gini", "<=", 1.0)
    assert not out.passed and np.isnan(out.measured)
    assert "undefined (NaN)" in out.message() and "the metric is undefined for this map" in out.note


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(metric="entropy", op="<", bound=1), r"metric='entropy' is not a known metric; expected one of .*diffusion_index"),
        (dict(metric="locality", op="~", bound=1), r"op='~' is not a comparison"),
        (dict(metric="locality", op="<", bound="one", radius=1), r"bound='one' must be a number"),
        (dict(metric="locality", op="between", bound=(2, 1), radius=1), r"has low > high"),
        (dict(metric="locality", op="<", bound=1, raduis=1), r"metric 'locality' does not take the parameters \['raduis'\]"),
        (dict(metric="locality", op="<", bound=1, radius=1, sign="up"), r"sign='up' is not one of"),
    ],
)
def test_assert_property_rejects_bad_arguments(res, kwargs, match):
    with pytest.raises(cc.CEMInputError, match=match):
        C.assert_property(res, **kwargs)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda r: C.assert_positive_effect_local(r, radius=-2), r"radius=-2 must lie in \[0, inf\]"),
        (lambda r: C.assert_positive_effect_local(r, 2, mass=0), r"mass=0 must lie in \(0, 1\]"),
        (lambda r: C.assert_negative_fraction_at_most(r, 1.5), r"bound=1\.5 must lie in \[0, 1\]"),
        (lambda r: C.assert_receptive_field_within(r, 2, by="jacobian"), r"by='jacobian' is not one of 'support'"),
        (lambda r: C.assert_uses_context_beyond(r, 2, 0), r"share=0 must lie in \(0, 1\]"),
        (lambda r: C.assert_effect_range_between(r, 2, 1), r"low_db=2 is above high_db=1"),
        (lambda r: C.assert_effect_range_between(r.effect, 0, 1), r"is not a CEMResult"),
    ],
)
def test_assertions_reject_bad_arguments(res, call, match):
    with pytest.raises(cc.CEMInputError, match=match):
        call(res)


# ------------------------------------------------------------------------------ outcomes and records
def test_outcome_records_are_json_safe_and_frames_tidy(res):
    out = C.check_positive_effect_local(res, 1, mass=0.95)
    rec = json.loads(json.dumps(out.to_record(), allow_nan=False))
    assert rec["name"] == "positive_effect_local" and rec["passed"] is False and rec["measured"] == 3
    assert rec["worst_blocks"][0] == {"row": 0, "col": 0, "box_px": [0, 0, 1, 1], "distance_px": 3, "effect_db": 0.5,
                                      "ci_low_db": 0.5, "ci_high_db": 0.5, "detail": ""}
    assert rec["settings"]["roi"] == [3, 3, 1] and rec["params"]["mass"] == 0.95
    frame = out.to_frame()
    assert frame[["row", "col", "distance_px"]].values.tolist() == [[0, 0, 3]]
    nan = C.check_property(cc.CEMResult.from_effects(np.zeros((2, 2)), roi=(0, 0, 1), block_size=1), "gini", "<", 1)
    assert json.loads(json.dumps(nan.to_record(), allow_nan=False))["measured"] is None


def test_causal_property_error_pickles_with_its_outcome(res):
    err = C.CausalPropertyError(C.check_negative_fraction_at_most(res, 0.0))
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.outcome.measured == pytest.approx(2 / 48)


def test_collect_outcomes_lists_passes_and_failures_in_order(res):
    with C.collect_outcomes() as outer:
        C.assert_positive_effect_local(res, 1)
        with C.collect_outcomes(map_hint="report.html#test_x") as inner:
            with pytest.raises(C.CausalPropertyError, match=r"see the map: report\.html#test_x"):
                C.assert_negative_fraction_at_most(res, 0.0)
        C.check_uses_context_beyond(res, 2, 0.5)
    assert [(o.name, o.passed) for o in outer] == [
        ("positive_effect_local", True), ("negative_fraction_at_most", False), ("uses_context_beyond", False)]
    assert [o.name for o in inner] == ["negative_fraction_at_most"]
    assert outer[0].map_hint == C.DEFAULT_MAP_HINT and outer[1].map_hint == "report.html#test_x"
    C.check_positive_effect_local(res, 1)
    assert len(outer) == 3  # the block has ended


def test_map_hint_from_the_result_meta():
    r = _map(meta={"map_hint": "maps/sr4.npz"})
    assert C.check_positive_effect_local(r, 1).map_hint == "maps/sr4.npz"
    assert C.with_map_hint(C.check_positive_effect_local(r, 1), "elsewhere").map_hint == "elsewhere"
