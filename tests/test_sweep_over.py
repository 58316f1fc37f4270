"""Assertions over a sweep (check_over / assert_over): statistics and bootstrap intervals on hand-built tables and
sweeps, the conservative decision, NaN items, the failure message, records, and errors in the project's style."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest

import cem_checks as cc


def _frame(values, images=None) -> pd.DataFrame:
    n = len(values)
    return pd.DataFrame({"index": range(n), "image": images or [f"img{k}" for k in range(n)],
                         "x": [4 * k for k in range(n)], "y": [0] * n, "size": [4] * n,
                         "v": np.asarray(values, dtype=np.float64)})


def _map_sweep(far_effects) -> cc.Sweep:
    """One hand-built 4x4 map (blocks of 4 px, ROI = block (0, 0)) per value: +1 dB at 1 px and ``e`` dB at 9 px."""
    items, results = [], []
    for k, e in enumerate(far_effects):
        effect = np.zeros((4, 4))
        effect[0, 1], effect[3, 3] = 1.0, e
        results.append(cc.CEMResult.from_effects(effect, roi=(0, 0, 4), block_size=4))
        items.append(cc.SweepItem(k, f"img{k}", (0, 0, 4), 0.0))
    return cc.Sweep(items, results, "map", {"task": "dn25", "seed": 0, "mode": "paper", "context_radius_px": 4})


def test_mean_max_min_median_and_quantile_of_a_known_table():
    f = _frame(np.arange(10.0))  # 0, 1, ..., 9
    cases = {"mean": 4.5, "max": 9.0, "min": 0.0, "median": 4.5, "quantile:0.9": 8.1, "quantile:0": 0.0}
    for statistic, value in cases.items():
        o = cc.check_over(f, "v", at_most=100, statistic=statistic)
        assert o.value == pytest.approx(value), statistic
        assert o.ci_low <= value <= o.ci_high and 0.0 <= o.ci_low and o.ci_high <= 9.0
        assert o.passed and o.n_items == 10 and o.confidence == 0.95 and o.op == "<="
    assert cc.check_over(f, "v", at_most=100, statistic="max").ci_high == 9.0  # a resample's max is at most the max
    assert cc.check_over(f, "v", at_most=100, statistic="min").ci_low == 0.0
    # the mean's interval is about mean +- 1.96 * sd / sqrt(n) = 4.5 +- 1.78
    o = cc.check_over(f, "v", at_most=100, n_boot=20000)
    assert o.ci_low == pytest.approx(4.5 - 1.78, abs=0.3) and o.ci_high == pytest.approx(4.5 + 1.78, abs=0.3)


def test_the_interval_is_seeded_and_a_constant_has_a_point_interval():
    f = _frame(np.random.default_rng(0).normal(size=30))
    a, b = cc.check_over(f, "v", at_most=9, seed=1), cc.check_over(f, "v", at_most=9, seed=1)
    c = cc.check_over(f, "v", at_most=9, seed=2)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high) != (c.ci_low, c.ci_high)
    o = cc.check_over(_frame([2.0] * 7), "v", at_least=2.0)
    assert o.value == o.ci_low == o.ci_high == 2.0 and o.passed


def test_the_mean_interval_covers_the_true_mean_about_as_often_as_its_level():
    rng = np.random.default_rng(123)
    hits = 0
    for k in range(200):
        f = _frame(rng.normal(loc=3.0, scale=2.0, size=40))
        o = cc.check_over(f, "v", at_most=1e9, n_boot=400, seed=k)
        hits += o.ci_low <= 3.0 <= o.ci_high
    assert 0.88 <= hits / 200 <= 0.99  # nominal 95 %, percentile bootstrap at n = 40


def test_the_decision_uses_the_far_end_of_the_interval_unless_asked_for_the_point():
    f = _frame([0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 6.0])  # mean 1.5, interval reaching above 2.5
    o = cc.check_over(f, "v", at_most=2.5)
    assert o.value == 1.5 < 2.5 < o.ci_high and not o.passed and o.decision == "interval"
    assert "decided on the upper end of the interval" in o.message()
    p = cc.check_over(f, "v", at_most=2.5, decision="point")
    assert p.passed and "decided on the mean itself" in p.message()
    low = cc.check_over(f, "v", at_least=1.0)
    assert low.ci_low < 1.0 and not low.passed  # the lower end decides at_least
    both = cc.check_over(f, "v", at_least=0.0, at_most=10.0)
    assert both.op == "between" and both.bound == (0.0, 10.0) and both.passed
    assert (o.n_outside, low.n_outside, both.n_outside) == (1, 3, 0)  # items beyond the bound on their own
    assert cc.check_over(f, "v", at_least=0.5, at_most=2.0).n_outside == 4


def test_the_failure_names_the_worst_items_statistic_interval_bound_and_settings():
    s = _map_sweep([0.0, -2.0, -0.5, 0.0, -3.0, 0.0])
    with pytest.raises(cc.SweepPropertyError) as info:
        cc.assert_over(s, "negative_fraction_mass", at_most=0.2, statistic="quantile:0.9")
    err = info.value
    assert isinstance(err, AssertionError) and err.outcome.passed is False
    o = err.outcome
    assert [w[0] for w in o.worst[:3]] == ["img4", "img1", "img2"]  # 3/4, 2/3, 1/3 of the mass hurts
    assert o.worst[0] == ("img4", (0, 0, 4), pytest.approx(0.75))
    text = str(err)
    for part in ("sweep property 'negative_fraction_mass' FAILED: quantile:0.9 of negative_fraction_mass over 6 items",
                 "measured: quantile:0.9 = ", "95% bootstrap CI [", "(2000 resamples, seed 0)",
                 "bound:    <= 0.2 (20.00%) (decided on the upper end of the interval)",
                 "worst items (3 of 6 outside the bound):",
                 "image 'img4' roi (x, y, size) = (0, 0, 4): 0.75 (75.00%)",
                 "sweep:    task=dn25 mode=paper seed=0 context_radius_px=4 items=6"):
        assert part in text, part
    again = pickle.loads(pickle.dumps(err))
    assert again.outcome == o
    record = o.to_record()
    json.dumps(record, allow_nan=False)
    assert record["worst"][0] == {"image": "img4", "roi": [0, 0, 4], "value": 0.75} and record["passed"] is False


def test_registered_metric_names_and_callables_are_evaluated_on_each_map():
    s = _map_sweep([0.0, -1.0, 2.0])
    o = cc.check_over(s, "context_share", at_most=1.0, beyond=4, statistic="max")
    assert o.value == pytest.approx(2 / 3) and o.expression == "context_share(beyond=4)" and o.unit == "share"
    col = cc.check_over(s, "context_share_beyond", at_most=1.0, statistic="max")
    assert col.value == o.value
    r = cc.check_over(s, "effective_radius", at_most=9, statistic="max", mass=0.9, sign="positive")
    assert r.value == 9 and r.unit == "px"
    far = lambda result, radius: float(np.abs(result.effect[result.distance > radius]).sum())  # noqa: E731
    c = cc.assert_over(s, far, at_most=2.0, statistic="max", radius=4, decision="point", name="far mass")
    assert c.value == 2.0 and c.name == "far mass" and c.metric == "<lambda>"


def test_a_nan_item_fails_with_a_note():
    o = cc.check_over(_frame([1.0, np.nan, 2.0]), "v", at_most=10)
    assert not o.passed and np.isnan(o.value) and o.n_nan == 1
    assert o.worst[0][0] == "img1" and "1 of 3 items have no value of v (NaN)" in o.note
    no_radius = cc.Sweep(_map_sweep([0.0]).items, _map_sweep([0.0]).results, "map", {})
    o = cc.check_over(no_radius, "context_share_beyond", at_most=1)
    assert not o.passed and "run without context_radius=" in o.note


def test_collect_over_outcomes_lists_passes_and_failures_in_order():
    f = _frame([1.0, 2.0])
    with cc.collect_over_outcomes() as got:
        cc.check_over(f, "v", at_most=5)
        with pytest.raises(cc.SweepPropertyError):
            cc.assert_over(f, "v", at_least=5)
    assert [o.passed for o in got] == [True, False]


@pytest.mark.parametrize("kwargs, match", [
    (dict(statistic="average"), r"statistic='average' is not understood; expected 'mean', 'max', 'min', 'median' or "
                                r"'quantile:q' with q in \[0, 1\], e.g. statistic='quantile:0.9'"),
    (dict(statistic="quantile:1.5"), "statistic='quantile:1.5' is not understood"),
    (dict(statistic="quantile:x"), "statistic='quantile:x' is not understood"),
    (dict(statistic=0.9), "statistic=0.9 is not understood"),
    (dict(at_most=None), "check_over needs a bound: at_most=..., at_least=... or both"),
    (dict(at_least=3, at_most=1), "at_least=3 is above at_most=1; give at_least <= at_most"),
    (dict(at_most="1"), "at_most='1' must be a number; got str"),
    (dict(confidence=1.0), r"confidence=1.0 must lie in \(0, 1\)"),
    (dict(n_boot=0), "n_boot=0 must be an integer >= 1"),
    (dict(decision="upper"), "decision='upper' is not 'interval'"),
    (dict(metric="radius"), "metric='radius' is neither a column of Sweep.frame .* nor a registered metric"),
    (dict(metric="v", beyond=3), "metric='v' is a column of Sweep.frame and takes no parameters"),
    (dict(metric="image"), "column 'image' of Sweep.frame is not numeric"),
    (dict(metric="gini"), "metric 'gini' is computed from the maps, which a DataFrame does not hold"),
])
def test_bad_arguments(kwargs, match):
    args = {"metric": "v", "at_most": 5, **kwargs}
    with pytest.raises(cc.CEMInputError, match=match):
        cc.check_over(_frame([1.0, 2.0]), **args)


def test_bad_sweeps_and_metrics_of_the_wrong_stage():
    with pytest.raises(cc.CEMInputError, match="sweep=.* is not a Sweep; pass the value returned by cem_checks.sweep"):
        cc.check_over([1, 2], "v", at_most=1)
    empty = cc.Sweep([], [], "map", {}, shard=(3, 4))
    with pytest.raises(cc.CEMInputError, match="the sweep has no items \\(an empty shard\\?\\)"):
        cc.check_over(empty, "effective_radius_px", at_most=1)
    support = cc.SupportResult(support=np.zeros((2, 2), bool), resolved=np.ones((2, 2), bool),
                               roi_mask=np.eye(2, dtype=bool), distance=np.zeros((2, 2), np.int64), radius_px=0,
                               block_size=4, scale=1, roi=(0, 0, 4), task="dn25", seed=0)
    s = cc.Sweep([cc.SweepItem(0, "a", (0, 0, 4), 0.0)], [support], "support", {"stage": "support"})
    with pytest.raises(cc.CEMInputError, match="metric 'gini' on item 0 \\(image 'a', roi \\(0, 0, 4\\)\\): this metric "
                                               "needs the effects of a map"):
        cc.check_over(s, "gini", at_most=1)
    o = cc.check_over(s, "effective_radius_px", at_most=1)
    assert not o.passed and "stage 'support' has no effects" in o.note
