"""The support stage alone (cem_checks.compute_support, SupportResult) and the lazy map (cem_checks.LazyMap):
exactness on models whose support is known, the cost of each question, no group test run twice, caching."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from nets import ConvStack, NearestUpsampleSR, PixelShuffleSR, PlantedNonLocal, StridedSR, jacobian_support

import cem_checks as cc
from cem_checks.engine import Job
from cem_checks.models import RCANLite

QUICK = dict(progress=False, device="cpu")
CASES = {  # name: (model, task, roi, block)
    "plain-r3": (ConvStack((1, 1, 1)), cc.Denoising(15), (12, 12, 4), 2),
    "dilated-r6": (ConvStack((1, 2, 3)), cc.Denoising(15), (14, 10, 4), 2),
    "plain-r5-derain": (ConvStack((1, 1, 1, 1, 1)), cc.Deraining(seed=3), (0, 20, 6), 2),
    "pixelshuffle-x2-r3": (PixelShuffleSR(2), cc.SuperResolution(2), (12, 16, 8), 1),
    "nearest-x2-r3": (NearestUpsampleSR(2), cc.SuperResolution(2), (20, 4, 4), 1),
}


class Log:
    """A record kept outside the model's own state (the engine restores the model's attributes and their lists
    after each call, so a list attribute of the model would not keep what it saw)."""

    def __init__(self):
        self.items: list[str] = []


class Counting(torch.nn.Module):
    """Wraps a model; records a digest of every input image it sees (in order) and how many it saw."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.log = Log()

    @property
    def seen(self) -> list[str]:
        return self.log.items

    def forward(self, x):
        for img in x:
            self.log.items.append(hashlib.sha256(img.detach().contiguous().numpy().tobytes()).hexdigest())
        return self.inner(x)


def _theory(res, radius):
    return res.distance <= radius


@pytest.mark.parametrize("name", sorted(CASES))
def test_support_is_exactly_the_receptive_field_and_every_block_is_resolved(name, natural32):
    model, task, roi, block = CASES[name]
    res = cc.compute_support(model, natural32, task=task, roi=roi, block_size=block, **QUICK)
    theory = _theory(res, model.radius)
    assert theory.any() and (~theory).any()
    assert res.complete and res.resolved.all()
    np.testing.assert_array_equal(res.support, theory)
    assert res.radius_px == model.radius  # exact in pixels, whatever the block size
    assert cc.support_radius(res) == res.radius_px == cc.max_reach(res, significant=False)


def test_support_matches_the_jacobian_of_a_strided_model(natural32):
    model = StridedSR()
    x = cc.SuperResolution(2).degrade(cc.load_image(natural32)[None])
    roi = (8, 12, 4)
    res = cc.compute_support(model, natural32, task="sr2", roi=roi, block_size=2, **QUICK)
    theory = jacobian_support(model, x, roi, 2, 2).numpy()
    np.testing.assert_array_equal(res.support, theory)
    assert res.complete


@pytest.mark.parametrize("name", sorted(CASES))
def test_within_answers_whether_anything_beyond_changes_the_roi_in_one_group_test(name, natural32):
    model, task, roi, block = CASES[name]
    counting = Counting(model)
    for r in (0, 1, model.radius - 1, model.radius, model.radius + 3):
        counting.seen.clear()
        res = cc.compute_support(counting, natural32, task=task, roi=roi, block_size=block, within=r, batch_size=8,
                                 **QUICK)
        d = res.distance
        assert res.beyond_within == (r < model.radius), r  # exact in pixels: the pixels beyond r px are replaced
        assert res.radius_px is None and res.within_px == r
        tests = res.meta["support_search"]["tests_run"]
        farthest = r >= res.far_distance.max()
        assert tests == (0 if farthest else 1)
        # the validation forward (also the baseline of the ring test's draws, run one image at a time), 6 on a
        # 16x16 window for the determinism and batch-independence checks, the ring test's 3 draws
        assert res.forward_passes == len(counting.seen) == 7 + (0 if farthest else 3)
        assert not res.support.any()
        assert res.resolved[d > r].all() != res.beyond_within or farthest
        assert not res.resolved[d <= r].any()


def test_a_planted_sparse_dependency_is_resolved_block_by_block(planted_map, natural32):
    result, far, dist = planted_map
    img = natural32.copy()
    img[20:24, 24:28] = img[4:8, 4:8]
    res = cc.compute_support(PlantedNonLocal((4, 4, 4), (24, 20, 4)), img, task=cc.Denoising(10), roi=(4, 4, 4),
                             block_size=4, **QUICK)
    expected = np.zeros_like(res.support)
    expected[far] = True  # the ROI output is a copy of that block: nothing else, not even the ROI's own input
    assert res.complete
    np.testing.assert_array_equal(res.support, expected)
    np.testing.assert_array_equal(res.support, result.support)  # the paper-mode map agrees
    assert res.radius_px == int(res.far_distance[far]) == dist + 3  # every pixel of the far 4-px block is copied
    assert res.group_tests < res.rows * res.cols / 2  # far fewer tests than blocks: the split pays where sparse


def test_a_global_model_answers_within_after_one_group_test(natural32):
    torch.manual_seed(0)
    model = Counting(RCANLite(scale=2, features=8, blocks=1).eval())
    res = cc.compute_support(model, natural32, task="sr2", roi=(8, 8, 8), block_size=2, within=3, batch_size=8,
                             **QUICK)
    assert res.beyond_within is True
    assert res.meta["support_search"]["tests_run"] == 1
    assert res.forward_passes == len(model.seen) == 1 + 6 + 3
    full = cc.compute_support(model, natural32, task="sr2", roi=(8, 8, 8), block_size=2, **QUICK)
    assert full.radius_px == int(full.far_distance.max())  # channel attention: every pixel reaches the ROI


def test_within_bounds_decide_the_receptive_field_property(natural32):
    model, task, roi, block = CASES["plain-r3"]
    kw = dict(task=task, roi=roi, block_size=block, **QUICK)
    inside = cc.compute_support(model, natural32, within=5, **kw)  # nothing beyond 5 px (radius 3)
    assert not inside.beyond_within
    ok = cc.check_receptive_field_within(inside, 6)
    assert ok.passed and ok.measured == 5 and "upper bound" in ok.note and ok.params == {"within": 5.0}
    outside = cc.compute_support(model, natural32, within=1, **kw)  # something at 2 and 3 px
    bad = cc.check_receptive_field_within(outside, 1)
    assert not bad.passed and bad.measured == 2 and "lower bound" in bad.note  # some pixel at least 2 px away
    with pytest.raises(cc.CEMInputError, match=r"within=5 .* does not decide a bound of 2 px"):
        cc.check_receptive_field_within(inside, 2)
    with pytest.raises(cc.CEMInputError, match="its support radius was not searched"):
        cc.support_radius(inside)
    with pytest.raises(cc.CEMInputError, match="significant=True"):
        cc.max_reach(inside)
    with pytest.raises(cc.CEMInputError, match="by='effect' compares effects"):
        cc.check_receptive_field_within(inside, 6, by="effect")
    with pytest.raises(cc.CEMInputError, match="needs the effects of a map"):
        cc.effective_radius(inside)


# ----------------------------------------------------------------------------------------------- lazy map
def _job(model, image, **kw):
    return Job(model, image, task="dn25", roi=(24, 24, 8), block_size=4, batch_size=8, seed=2, **QUICK, **kw)


@pytest.fixture(scope="module")
def natural64(natural32):
    return np.concatenate([np.concatenate([natural32] * 2, 0)] * 2, 1)


def test_a_receptive_field_assertion_runs_only_the_support_stage(natural64):
    model = Counting(ConvStack((1, 2, 1)))  # radius 4 px (blocks of 4 px: its support is the adjacent ring)
    m = cc.LazyMap(_job(model, natural64))
    assert m.computed is None and model.seen == []
    out = cc.assert_receptive_field_within(m, radius=4)
    assert m.computed == "support" and out.passed and out.measured == 4
    support = m.result
    assert isinstance(support, cc.SupportResult) and support.radius_px == 4
    # within=4: the pixels beyond 4 px (on the full input); then the pixels beyond 3 px, in a verified crop of the
    # blocks within 4 px (one image checks the crop); the validation forward + 6 for the model checks
    assert support.meta["support_search"]["tests_run"] == 2
    assert len(model.seen) == support.forward_passes == 1 + 6 + 3 + 1 + 3
    assert support.meta["support_search"]["frame"]["crop"] is not None


def test_a_failing_receptive_field_assertion_names_blocks_tested_alone(natural64):
    model = ConvStack((1, 2, 1))
    m = cc.LazyMap(_job(model, natural64))
    with pytest.raises(cc.CausalPropertyError) as err:
        cc.assert_receptive_field_within(m, radius=0)
    outcome = err.value.outcome
    assert m.computed == "support" and outcome.measured == 4
    assert outcome.worst_blocks and all(b.distance_px == 1 for b in outcome.worst_blocks)
    support = m.result
    for b in outcome.worst_blocks:
        assert support.support[b.row, b.col] and support.resolved[b.row, b.col]
    assert "changes the ROI output without other blocks (its pixels lie up to 4 px from the ROI" in err.value.args[0]


def test_an_effect_property_runs_the_map_reusing_the_support_stage_with_no_test_repeated(natural64):
    model = Counting(ConvStack((1, 2, 1)))
    m = cc.LazyMap(_job(model, natural64))
    cc.assert_receptive_field_within(m, radius=4)
    after_support = len(model.seen)
    cc.check_negative_fraction_at_most(m, 0.5)  # needs effects: the full map
    assert m.computed == "map" and isinstance(m.result, cc.CEMResult)
    fresh_model = Counting(ConvStack((1, 2, 1)))
    fresh = _job(fresh_model, natural64).map()
    for name in ("effect", "raw_effect", "samples_db", "support", "flagged", "n_samples"):
        np.testing.assert_array_equal(getattr(m.result, name), getattr(fresh, name), err_msg=name)
    # no intervened image is ever sent twice: the only repeated inputs are unchanged ones (the input, the window
    # of the model checks, the crops the tests and draws run in: baselines of each batch size)
    x = m.job.degraded[0]
    digest = lambda t: hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()  # noqa: E731
    unchanged = {digest(x[:, y0:y0 + h, x0:x0 + w]) for y0 in range(0, 64, 4) for x0 in range(0, 64, 4)
                 for h in range(4, 65 - y0, 4) for w in range(4, 65 - x0, 4)}
    repeats = {h for h in set(model.seen) if model.seen.count(h) > 1}
    assert repeats and repeats <= unchanged
    # the support stage's work is not done again: the lazy map costs at most what the fresh map costs, plus the
    # ring test at 4 px that the fresh map's binary search did not need
    assert len(model.seen) <= len(fresh_model.seen) + 3
    assert after_support < len(model.seen)
    assert m.result.forward_passes == len(model.seen)


def test_attributes_fall_through_to_the_map(natural64):
    m = cc.LazyMap(_job(ConvStack((1, 1)), natural64))
    assert m.support.dtype == bool and m.computed == "map"  # result.support: the map's array, not a stage
    assert "computed='map'" in repr(m)


def test_support_results_are_cached_across_a_rerun(natural64, tmp_path):
    kw = dict(task="dn25", roi=(24, 24, 8), block_size=4, batch_size=8, **QUICK)
    cold = cc.compute_support(ConvStack((1, 2, 1)), natural64, cache_dir=tmp_path, **kw)
    warm = cc.compute_support(ConvStack((1, 2, 1)), natural64, cache_dir=tmp_path, **kw)
    assert cold.forward_passes > 10 and warm.forward_passes == 1  # the validation forward alone
    np.testing.assert_array_equal(warm.support, cold.support)
    np.testing.assert_array_equal(warm.resolved, cold.resolved)
    # a map of the same job reuses the ring tests of the support run (one cache key for the support stage)
    full = cc.compute_cem(ConvStack((1, 2, 1)), natural64, cache_dir=tmp_path, **kw)
    assert full.meta["cache"]["hits"] >= full.meta["fast"]["group_tests"] > 0


def test_a_support_result_saves_loads_and_exports(natural32, tmp_path):
    model, task, roi, block = CASES["plain-r3"]
    res = cc.compute_support(model, natural32, task=task, roi=roi, block_size=block, **QUICK)
    back = cc.SupportResult.load(res.save(tmp_path / "support"))
    for name in ("support", "resolved", "roi_mask", "distance", "input_image", "output_image"):
        np.testing.assert_array_equal(getattr(back, name), getattr(res, name))
    assert (back.radius_px, back.group_tests, back.forward_passes) == (res.radius_px, res.group_tests, res.forward_passes)
    rec = res.to_record()
    assert rec["format"] == "cem-support" and rec["radius_px"] == res.radius_px and "input_image" not in rec
    frame = res.to_frame()
    assert len(frame) == res.rows * res.cols and frame["support"].sum() == res.support.sum()
    with pytest.raises(cc.CEMInputError, match="not a support result"):
        cc.SupportResult.load(cc.compute_cem(model, natural32, task=task, roi=roi, block_size=block, coarse=1, fine=2,
                                             **QUICK).save(tmp_path / "map"))


@pytest.mark.parametrize("kw, error, words", [
    (dict(roi=(40, 40, 8)), cc.ROIError, "outside the 32x32"),
    (dict(task="dn"), cc.CEMInputError, "is not a known task name"),
    (dict(task=cc.Denoising), cc.CEMInputError, "is a class"),
    (dict(block_size=0), cc.CEMInputError, "block_size=0 must be an integer >= 1"),
    (dict(seed=-1), cc.CEMInputError, "seed=-1 must be an integer >= 0"),
    (dict(device="tpu"), cc.DeviceError, "device='tpu' is unknown"),
    (dict(batch_size=0), cc.CEMInputError, "batch_size=0 must be 'auto'"),
    (dict(patches=np.zeros((8, 8, 3), np.uint8)), cc.PatchBankError, "arr[None]"),
])
def test_bad_input_gets_the_same_typed_errors_as_compute_cem(kw, error, words, natural32):
    args = dict(task="dn25", roi=(8, 8, 8), block_size=4, **QUICK)
    args.update(kw)
    with pytest.raises(error) as a:
        cc.compute_support(ConvStack((1,)), natural32, **args)
    with pytest.raises(error) as b:
        cc.compute_cem(ConvStack((1,)), natural32, **args)
    assert words in str(a.value) and str(a.value) == str(b.value)


@pytest.mark.parametrize("kw, words", [
    (dict(within=-1), "within=-1 must be a distance >= 0 in input px"),
    (dict(within="far"), "within='far' must be a distance"),
    (dict(draws=0), "draws=0 must be an integer >= 1"),
    (dict(max_tests=-2), "max_tests=-2 must be an integer >= 0"),
])
def test_bad_support_arguments_are_named(kw, words, natural32):
    with pytest.raises(cc.CEMInputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        cc.compute_support(ConvStack((1,)), natural32, task="dn25", roi=(8, 8, 8), **QUICK, **kw)


def test_the_confirmed_traced_reach_settles_rings_beyond_it_and_crops_the_tests(natural32):
    model, task, roi, block = CASES["plain-r3"]  # ConvStack((1, 1, 1)): traced, reach 3 px
    kw = dict(task=task, roi=roi, block_size=block, batch_size=8, **QUICK)
    beyond = cc.compute_support(model, natural32, within=model.radius, **kw)
    info = beyond.meta["support_search"]
    # one group test confirms the traced box: every pixel outside it replaced at once, on the full input
    assert beyond.beyond_within is False and info["tests_run"] == 1 and beyond.group_tests == 1
    assert info["reach"].startswith("traced and confirmed: the ROI output reads the input box (y 9:19, x 9:19)")
    assert beyond.resolved[beyond.distance > model.radius].all()
    # the validation forward, the model checks, the reach check's 3 draws, the crop check
    assert beyond.forward_passes == 1 + 6 + 3 + 1
    inside = cc.compute_support(model, natural32, within=model.radius - 2, **kw)
    info = inside.meta["support_search"]
    assert inside.beyond_within is True and info["tests_run"] == 2
    assert info["frame"]["crop"] == [8, 8, 12, 12]  # the blocks the reach touches: the ring test ran there
    full = cc.compute_support(model, natural32, **kw)
    np.testing.assert_array_equal(full.support, full.distance <= model.radius)
    assert full.radius_px == model.radius


def test_a_model_the_trace_refuses_is_tested_on_the_whole_input(natural32):
    torch.manual_seed(0)
    model = RCANLite(scale=2, features=8, blocks=1).eval()  # channel attention (global pooling): not traced
    res = cc.compute_support(model, natural32, task="sr2", roi=(8, 8, 8), block_size=2, within=3, **QUICK)
    info = res.meta["support_search"]
    assert info["reach"].startswith("not traced") and info["frame"]["crop"] is None and info["tests_run"] == 1


def test_a_support_result_hints_at_its_support_not_at_effects(natural32):
    """A failure on the support stage alone names what that result lists (its support), not effects it does not
    have; a collector's ``also`` (where the plugin wrote the results) is added to the hint of either kind."""
    s = cc.compute_support(ConvStack((1, 1, 1, 1, 1)), natural32, task="dn25", roi=(8, 8, 8), block_size=4,
                           progress=False, device="cpu")
    out = cc.check_receptive_field_within(s, 1)
    assert not out.passed and out.map_hint == cc.checks.SUPPORT_HINT and "effect_db" not in out.message()
    assert set(s.to_frame().columns) >= {"distance_px", "support", "resolved"}
    with cc.checks.collect_outcomes(also="written to r.json"):
        again = cc.check_receptive_field_within(s, 1)
        on_map = cc.check_receptive_field_within(cc.CEMResult.from_effects(np.ones((8, 8)), roi=(8, 8, 8),
                                                                           block_size=4), 1)
    assert again.map_hint == cc.checks.SUPPORT_HINT + "; written to r.json"
    assert on_map.map_hint == cc.checks.DEFAULT_MAP_HINT + "; written to r.json"
