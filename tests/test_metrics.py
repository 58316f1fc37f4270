"""Metrics of causal effect maps: hand-built maps with known answers, analytic models, invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cem_checks as cc
from cem_checks import metrics as M
from nets import Affine, Constant, ConvStack

FAST = dict(mode="paper", coarse=2, fine=4, progress=False, device="cpu")


# ------------------------------------------------------------------------------------ a known map
def _ring_map(**kwargs) -> cc.CEMResult:
    """5x5 blocks of 1 px around a 1-px ROI at the centre: ring 1 (8 blocks, distance 1) all +1 dB; ring 2
    (16 blocks, distance 2): +0.5 dB at (0, 0) and (0, 4), -2 dB at (4, 2), the rest 0; ROI block +5 dB."""
    e = np.zeros((5, 5))
    e[1:4, 1:4] = 1.0
    e[2, 2] = 5.0
    e[0, 0] = e[0, 4] = 0.5
    e[4, 2] = -2.0
    return cc.CEMResult.from_effects(e, roi=(2, 2, 1), block_size=1, **kwargs)


@pytest.fixture(scope="module")
def ring() -> cc.CEMResult:
    return _ring_map()


@pytest.fixture(scope="module")
def noisy_ring() -> cc.CEMResult:
    """The ring map with standard errors: ring 1 significant, every ring-2 block's CI straddles zero."""
    se = np.full((5, 5), 0.1)
    se[0, 0] = se[0, 4] = 0.3  # CI 0.5 +- 0.588
    se[4, 2] = 1.5  # CI -2 +- 2.94
    return _ring_map(stderr=se)


def test_the_known_map_has_the_expected_distances(ring):
    assert ring.roi_mask.sum() == 1 and ring.roi_mask[2, 2]
    assert (ring.distance[1:4, 1:4][ring.distance[1:4, 1:4] != 0] == 1).all()
    assert (ring.distance[0] == 2).all() and (ring.distance[:, 4] == 2).all()


def test_counts_and_fractions(ring):
    c = M.counts(ring)
    assert (c.positive, c.negative, c.zero, c.total) == (10, 1, 13, 24)
    assert c.positive_fraction == pytest.approx(10 / 24) and c.negative_fraction == pytest.approx(1 / 24)
    assert c.zero_fraction == pytest.approx(13 / 24)
    assert c.to_record()["negative_fraction"] == pytest.approx(1 / 24)
    with_roi = M.counts(ring, include_roi=True)
    assert (with_roi.positive, with_roi.total) == (11, 25)
    assert M.negative_fraction(ring) == pytest.approx(1 / 24)
    assert M.positive_fraction(ring) == pytest.approx(10 / 24)
    # by mass: positive mass 8 + 1 = 9, negative 2, absolute 11
    assert M.negative_fraction(ring, by="mass") == pytest.approx(2 / 11)
    assert M.positive_fraction(ring, by="mass") == pytest.approx(9 / 11)
    assert M.positive_fraction(ring, by="mass", include_roi=True) == pytest.approx(14 / 16)


def test_effect_range(ring):
    assert M.effect_range_db(ring) == pytest.approx(3.0)
    assert M.effect_range_db(ring, include_roi=True) == pytest.approx(7.0)


@pytest.mark.parametrize(
    "mass, sign, expected",
    [(0.8, "positive", 1), (8 / 9, "positive", 1), (0.9, "positive", 2), (1.0, "positive", 2),
     (0.1, "negative", 2), (0.7, "abs", 1), (0.75, "abs", 2)],
)
def test_effective_radius(ring, mass, sign, expected):
    assert M.effective_radius(ring, mass, sign) == expected


def test_effective_radius_with_the_roi_counts_distance_zero(ring):
    # positive mass 14 with the ROI's 5: within 0 px 5/14 = 0.357, within 1 px 13/14
    assert M.effective_radius(ring, 0.3, include_roi=True) == 0
    assert M.effective_radius(ring, 0.9, include_roi=True) == 1
    assert M.effective_radius(ring, 0.95, include_roi=True) == 2


def test_locality_and_context_share(ring):
    assert M.locality(ring, 1) == pytest.approx(8 / 9)
    assert M.locality(ring, 1.5) == pytest.approx(8 / 9)
    assert M.locality(ring, 2) == 1.0
    assert M.locality(ring, 1, "negative") == 0.0
    assert M.locality(ring, 1, "abs") == pytest.approx(8 / 11)
    assert M.context_share(ring, 1) == pytest.approx(3 / 11)
    assert M.context_share(ring, 0) == 1.0
    assert M.context_share(ring, 2) == 0.0
    assert M.context_share(ring, 0, include_roi=True) == pytest.approx(11 / 16)


def test_reach_and_support(ring):
    assert M.max_reach(ring) == 2
    assert M.support_radius(ring) == 2
    sup = np.zeros((5, 5), bool)
    sup[1:4, 1:4] = True
    assert M.support_radius(cc.CEMResult.from_effects(ring.effect, roi=(2, 2, 1), block_size=1, support=sup)) == 1


def _gini_pairwise(x: np.ndarray) -> float:
    x = np.abs(x)
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * x.size**2 * x.mean()))


def test_gini_and_diffusion_index(ring):
    outside = ring.effect[~ring.roi_mask]
    assert M.gini(ring) == pytest.approx(_gini_pairwise(outside), rel=1e-12)
    assert M.diffusion_index(ring) == pytest.approx((1 - _gini_pairwise(outside)) * 100, rel=1e-12)
    flat = cc.CEMResult.from_effects(np.full((3, 3), -0.4), roi=(1, 1, 1), block_size=1)
    assert M.gini(flat) == pytest.approx(0.0, abs=1e-15) and M.diffusion_index(flat) == pytest.approx(100.0)
    one = np.zeros((3, 3))
    one[0, 0] = 2.0
    single = cc.CEMResult.from_effects(one, roi=(1, 1, 1), block_size=1)
    assert M.gini(single) == pytest.approx(7 / 8)  # one of n = 8 blocks holds everything: (n - 1) / n
    assert M.diffusion_index(single) == pytest.approx(100 / 8)


def test_distance_profile(ring):
    df = M.distance_profile(ring)
    assert list(df.columns) == ["distance_px", "blocks", "mean_effect_db", "min_effect_db", "max_effect_db",
                                "positive_mass_db", "negative_mass_db"]
    assert df["distance_px"].tolist() == [1, 2] and df["blocks"].tolist() == [8, 16]
    np.testing.assert_allclose(df["mean_effect_db"], [1.0, -1.0 / 16])
    np.testing.assert_allclose(df["min_effect_db"], [1.0, -2.0])
    np.testing.assert_allclose(df["max_effect_db"], [1.0, 0.5])
    np.testing.assert_allclose(df["positive_mass_db"], [8.0, 1.0])
    np.testing.assert_allclose(df["negative_mass_db"], [0.0, 2.0])
    with_roi = M.distance_profile(ring, include_roi=True)
    assert with_roi["distance_px"].tolist() == [0, 1, 2] and with_roi["max_effect_db"].iloc[0] == 5.0


# ------------------------------------------------------------------------------- confidence-aware
def test_significant_effect_keeps_blocks_whose_ci_excludes_zero(noisy_ring):
    sig = M.significant_effect(noisy_ring)
    assert sig[0, 0] == 0 and sig[0, 4] == 0 and sig[4, 2] == 0
    assert (sig[1:4, 1:4] == noisy_ring.effect[1:4, 1:4]).all()


def test_confidence_aware_forms(noisy_ring):
    c = M.counts(noisy_ring, significant=True)
    assert (c.positive, c.negative, c.zero) == (8, 0, 16)
    assert M.negative_fraction(noisy_ring, significant=True) == 0.0
    assert M.negative_fraction(noisy_ring) == pytest.approx(1 / 24)
    assert M.max_reach(noisy_ring) == 1  # significant by default
    assert M.max_reach(noisy_ring, significant=False) == 2
    assert M.effective_radius(noisy_ring, 1.0, significant=True) == 1
    assert M.locality(noisy_ring, 1, significant=True) == 1.0
    assert M.context_share(noisy_ring, 1, significant=True) == 0.0
    assert M.effect_range_db(noisy_ring, significant=True) == pytest.approx(1.0)
    assert M.distance_profile(noisy_ring, significant=True)["negative_mass_db"].tolist() == [0.0, 0.0]


def test_blocks_without_a_confidence_interval_are_not_significant():
    e = np.array([[0.0, 0.3, -0.3], [0.0, 1.0, 0.0]])
    se = np.array([[0.0, np.nan, np.nan], [0.0, 0.0, 0.0]])  # one draw: no CI
    res = cc.CEMResult.from_effects(e, roi=(0, 0, 1), block_size=1, stderr=se)
    np.testing.assert_array_equal(M.significant_effect(res), [[0, 0, 0], [0, 1.0, 0]])
    assert M.counts(res, significant=True).positive == 1


# ------------------------------------------------------------------------------------- edge cases
@pytest.fixture(scope="module")
def only_roi() -> cc.CEMResult:
    """Effect on the ROI's own block only: nothing outside."""
    e = np.zeros((4, 4))
    e[1, 1] = 0.8
    return cc.CEMResult.from_effects(e, roi=(1, 1, 1), block_size=1)


def test_a_map_without_effect_outside_the_roi(only_roi):
    assert M.counts(only_roi).zero == 15
    assert M.negative_fraction(only_roi, by="mass") == 0.0
    assert M.positive_fraction(only_roi, by="mass") == 0.0
    assert M.effective_radius(only_roi, 0.9) == 0
    assert M.effective_radius(only_roi, 0.9, "abs") == 0
    assert M.locality(only_roi, 0) == 1.0
    assert M.context_share(only_roi, 0) == 0.0
    assert M.max_reach(only_roi) == 0 and M.support_radius(only_roi) == 0
    assert math.isnan(M.gini(only_roi)) and math.isnan(M.diffusion_index(only_roi))
    assert M.effect_range_db(only_roi) == 0.0
    # with the ROI block: everything at distance 0
    assert M.effective_radius(only_roi, 1.0, include_roi=True) == 0
    assert M.support_radius(only_roi, include_roi=True) == 0
    assert M.gini(only_roi, include_roi=True) == pytest.approx(15 / 16)


def test_a_map_whose_roi_covers_every_block_has_nothing_to_measure():
    res = cc.CEMResult.from_effects(np.ones((2, 2)), roi=(0, 0, 2), block_size=1)
    with pytest.raises(cc.CEMInputError, match=r"no block outside the ROI \(0, 0, 2\).*include_roi=True"):
        M.counts(res)
    assert M.counts(res, include_roi=True).positive == 4


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda r: M.effective_radius(r, mass=0.0), r"mass=0\.0 must lie in \(0, 1\]"),
        (lambda r: M.effective_radius(r, mass=1.5), r"mass=1\.5 must lie in \(0, 1\]"),
        (lambda r: M.effective_radius(r, sign="both"), r"sign='both' is not one of 'positive', 'negative', 'abs'"),
        (lambda r: M.negative_fraction(r, by="area"), r"by='area' is not one of 'count', 'mass'"),
        (lambda r: M.locality(r, -1), r"radius=-1 must lie in \[0, inf\] input px"),
        (lambda r: M.context_share(r, "far"), r"beyond='far' must be a number \(input px\); got str"),
        (lambda r: M.counts(r, include_roi="yes"), r"include_roi='yes' must be True or False"),
        (lambda r: M.counts(r.effect), r"is not a CEMResult; pass the value returned by cem_checks\.compute_cem"),
    ],
)
def test_invalid_arguments_raise_typed_errors(ring, call, match):
    with pytest.raises(cc.CEMInputError, match=match):
        call(ring)


# ---------------------------------------------------------------------------------- analytic models
@pytest.fixture(scope="module")
def natural16(natural32) -> np.ndarray:
    return np.ascontiguousarray(natural32[8:24, 8:24])


@pytest.mark.parametrize("dilations", [(1, 1, 1), (1, 2, 2)], ids=["r3", "r5"])
def test_conv_stack_reach_is_its_receptive_radius(dilations, natural16):
    model = ConvStack(dilations)
    res = cc.compute_cem(model, natural16, task=cc.Denoising(15), roi=(2, 2, 4), block_size=2, **FAST)
    # block distances are 1, 3, 5, ...: the support reaches the largest one within the radius, exactly; per block,
    # the pixel-exact radius lies between that block's nearest and farthest pixel, and the support radius of a
    # paper-mode map (no pixel-exact radius) is the upper end
    expected = int(res.distance[res.distance <= model.radius].max())
    assert res.radius_px is None
    assert M.support_radius_bounds(res) == (expected, expected + 1)
    assert expected <= model.radius <= expected + 1 and M.support_radius(res) == expected + 1
    assert M.max_reach(res, significant=False) <= expected
    assert M.context_share(res, beyond=expected) == 0.0
    assert M.effective_radius(res, 1.0, "abs") <= expected
    assert M.locality(res, expected, "abs") == 1.0
    prof = M.distance_profile(res)
    far = prof[prof["distance_px"] > expected]
    assert len(far) > 0 and (far["positive_mass_db"] == 0).all() and (far["negative_mass_db"] == 0).all()


def test_identity_denoiser_only_affects_the_roi(natural32):
    res = cc.compute_cem(Affine(1.0, 0.0), natural32, task=cc.Denoising(25), roi=(6, 6, 8), block_size=4, **FAST)
    c = M.counts(res)
    assert (c.positive, c.negative, c.zero) == (0, 0, 55)
    assert M.support_radius(res) == 0 and M.max_reach(res) == 0
    assert M.effective_radius(res) == 0 and M.locality(res, 0) == 1.0 and M.context_share(res, 0) == 0.0
    with_roi = M.counts(res, include_roi=True)
    assert with_roi.positive == 9  # noise in the ROI's own blocks: real content always helps
    assert M.effective_radius(res, 1.0, include_roi=True) == 0


def test_planted_non_local_block_holds_all_the_mass(planted_map):
    res, far, d = planted_map
    assert d >= 12
    assert M.max_reach(res) == d and M.support_radius_bounds(res) == (d, d + 3)  # the far 4-px block's pixels
    assert M.support_radius(res) == int(res.far_distance[far]) == d + 3
    assert M.effective_radius(res, 0.5) == d
    assert M.context_share(res, beyond=d - 1) == 1.0 and M.locality(res, d - 1) == 0.0
    assert M.positive_fraction(res, by="mass") == 1.0
    n = int((~res.roi_mask).sum())
    assert M.gini(res) == pytest.approx((n - 1) / n)
    assert M.diffusion_index(res) == pytest.approx(100 / n)


def test_constant_model_map_is_empty(natural32):
    res = cc.compute_cem(Constant(0.5, scale=2), natural32, task=cc.SuperResolution(2), roi=(8, 8, 8), **FAST)
    assert M.counts(res).zero == M.counts(res).total
    assert M.effect_range_db(res) == 0.0 and M.effective_radius(res) == 0 and M.max_reach(res) == 0
    assert math.isnan(M.gini(res))


# ----------------------------------------------------------------------------- property invariants
@st.composite
def maps(draw) -> cc.CEMResult:
    """Maps of up to 6x6 blocks with effects on a 0.01 dB grid in [-3, 3] dB and a 1-px ROI."""
    rows, cols = draw(st.integers(2, 6)), draw(st.integers(2, 6))
    cents = draw(st.lists(st.integers(-300, 300), min_size=rows * cols, max_size=rows * cols))
    x, y = draw(st.integers(0, cols - 1)), draw(st.integers(0, rows - 1))
    effect = np.array(cents, dtype=np.float64).reshape(rows, cols) / 100
    return cc.CEMResult.from_effects(effect, roi=(x, y, 1), block_size=1)


masses = st.floats(0.01, 1.0)
invariants = settings(max_examples=60, deadline=None, derandomize=True, database=None)


@invariants
@given(res=maps(), q1=masses, q2=masses, sign=st.sampled_from(M.SIGNS))
def test_effective_radius_is_monotone_in_mass(res, q1, q2, sign):
    lo, hi = sorted((q1, q2))
    assert M.effective_radius(res, lo, sign) <= M.effective_radius(res, hi, sign)


@invariants
@given(res=maps(), q=masses, sign=st.sampled_from(M.SIGNS))
def test_effective_radius_is_where_locality_reaches_the_mass(res, q, sign):
    d = M.effective_radius(res, q, sign)
    assert M.locality(res, d, sign) >= q - 1e-9
    if d > 0:
        assert M.locality(res, d - 1, sign) < q + 1e-9


@invariants
@given(res=maps(), significant=st.booleans())
def test_fractions_sum_to_one(res, significant):
    c = M.counts(res, significant=significant)
    assert c.positive + c.negative + c.zero == c.total == int((~res.roi_mask).sum())
    assert c.positive_fraction + c.negative_fraction + c.zero_fraction == pytest.approx(1.0)
    pos, neg = (f(res, by="mass", significant=significant) for f in (M.positive_fraction, M.negative_fraction))
    assert pos + neg == pytest.approx(1.0) if np.abs(res.effect[~res.roi_mask]).sum() > 0 else pos == neg == 0.0


@invariants
@given(res=maps(), c=st.floats(1e-3, 1e3), radius=st.integers(0, 6), sign=st.sampled_from(M.SIGNS))
def test_scaling_every_effect_by_c_leaves_shares_unchanged(res, c, radius, sign):
    scaled = cc.CEMResult.from_effects(res.effect * c, roi=res.roi, block_size=1)
    assert M.locality(scaled, radius, sign) == pytest.approx(M.locality(res, radius, sign), abs=1e-12)
    assert M.context_share(scaled, radius) == pytest.approx(M.context_share(res, radius), abs=1e-12)
    assert M.negative_fraction(scaled, by="mass") == pytest.approx(M.negative_fraction(res, by="mass"), abs=1e-12)
    assert M.counts(scaled) == M.counts(res)
    g0, g1 = M.gini(res), M.gini(scaled)
    assert (math.isnan(g0) and math.isnan(g1)) or g1 == pytest.approx(g0, abs=1e-12)


@invariants
@given(res=maps(), radius=st.integers(0, 6))
def test_locality_and_context_share_are_complements(res, radius):
    share = M.context_share(res, radius)
    assert 0.0 <= share <= 1.0
    assert M.locality(res, radius, "abs") + share == pytest.approx(1.0)
    n = int((~res.roi_mask).sum())
    g = M.gini(res)
    assert math.isnan(g) or -1e-12 <= g <= 1 - 1 / n + 1e-12
    assert M.effect_range_db(res) >= 0.0
    assert M.max_reach(res, significant=False) == max([0] + [int(d) for d, e, m in zip(
        res.distance.ravel(), res.effect.ravel(), res.roi_mask.ravel()) if e != 0 and not m])
