"""The sweep records of the results file and their report section: aggregates, validation, the merge of shards,
the histogram's layout and the section's HTML (escaped, self-contained)."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest

import cem_checks as cc
from cem_checks import records as R
from cem_checks.errors import CEMInputError, ResultsFileError
from cem_checks.reporting.html import MAX_BINS, histogram_chart, render_report
from nets import ConvStack

IMG = (np.arange(32 * 32 * 3).reshape(32, 32, 3) * 37 % 256).astype(np.uint8)
#: An image name with HTML in it: the report must show it as text.
EVIL = "<b>left</b>&"


def _sweep(shard=None):
    return cc.sweep(ConvStack((1, 1)), {EVIL: IMG[:16, :16].copy(), "right": IMG[16:, 16:].copy()}, task="dn25",
                    rois=[(0, 0, 4), (8, 8, 4)], block_size=4, coarse=2, fine=4, context_radius=2, device="cpu",
                    progress=False, shard=shard)


def _record(sweep) -> dict:
    with _collect() as out:
        cc.check_over(sweep, "negative_fraction_mass", at_most=0.01, decision="point", name="rarely_hurt")
    return R.sweep_record(sweep, [R.over_record(o, sweep=0) for o in out], max_image_px=16)


def _collect():
    from cem_checks.sweeps import collect_over_outcomes

    return collect_over_outcomes()


@pytest.fixture(scope="module")
def sweeps() -> dict:
    """The whole sweep and its two shards (4 items, tiny maps)."""
    return {"full": _sweep(), "s0": _sweep((0, 2)), "s1": _sweep((1, 2))}


@pytest.fixture(scope="module")
def records(sweeps) -> dict:
    return {k: _record(s) for k, s in sweeps.items()}


def _doc(*sweeps: dict, nodeid: str = "t.py::test_sweep") -> dict:
    props = [a for s in sweeps for a in s["assertions"]]
    return R.results_document([R.record_test(nodeid, outcome="passed", properties=props, sweeps=list(sweeps))])


# ------------------------------------------------------------------------------------------ aggregates, merge
def test_aggregates_by_hand():
    columns = ["index", "image", "x", "y", "size", "effective_radius_px", "wall_s"]
    items = [{"index": i, "image": "a", "x": 0, "y": 0, "size": 4, "effective_radius_px": v, "wall_s": 1.0}
             for i, v in enumerate([1, 3, None, 5, 9])]
    agg = R.sweep_aggregates(columns, list(reversed(items)))
    assert list(agg) == ["effective_radius_px"]  # no key columns, no timings
    assert agg["effective_radius_px"] == {"n": 4, "mean": 4.5, "std": float(np.std([1, 3, 5, 9], ddof=1)), "min": 1.0,
                                          "median": 4.0, "q90": float(np.quantile([1, 3, 5, 9], 0.9)), "max": 9.0}
    assert R.sweep_aggregates(columns, items[2:3])["effective_radius_px"] == {
        "n": 0, "mean": None, "std": None, "min": None, "median": None, "q90": None, "max": None}


def test_merge_sweeps_equals_the_whole(records):
    merged = R.merge_sweeps([records["s1"], records["s0"]], ["b.json", "a.json"])  # any order
    full = records["full"]
    table = lambda s: [{k: v for k, v in r.items() if k != "wall_s"} for r in s["items"]]  # noqa: E731
    assert table(merged) == table(full) and merged["aggregates"] == full["aggregates"]
    assert [w["index"] for w in merged["worst_maps"]] == [w["index"] for w in full["worst_maps"]]
    assert merged["merged_shards"] == [[0, 2], [1, 2]] and merged["merged_sources"] == ["a.json", "b.json"]
    assert R.check_document(json.loads(json.dumps(_doc(merged))))


def test_merge_sweeps_refuses_what_is_not_shards_of_one_sweep(records):
    with pytest.raises(CEMInputError, match="merges the shards of one sweep; got shard="):
        R.merge_sweeps([records["full"], records["s0"]])
    with pytest.raises(CEMInputError, match=r"got shard 0/2 more than once"):
        R.merge_sweeps([records["s0"], records["s0"]])
    other = copy.deepcopy(records["s1"])
    other["settings"]["seed"] = 7
    with pytest.raises(CEMInputError, match=r"records 0 and 1 differ in settings.seed \(0 vs 7\)"):
        R.merge_sweeps([records["s0"], other])
    # shards of two different splits of the items: named as such, not as an item found twice
    other = copy.deepcopy(records["s1"])
    other["settings"]["execution"]["shard_by"] = "image"
    with pytest.raises(CEMInputError, match=r"differ in settings.execution.shard_by \('item' vs 'image'\)"):
        R.merge_sweeps([records["s0"], other])


def test_sweeps_of_different_settings_are_not_merged_by_merge_documents(records):
    other = copy.deepcopy(records["s1"])
    other["settings"]["seed"] = 7
    doc = R.merge_documents([_doc(records["s0"]), _doc(other)], ["a.json", "b.json"])
    assert [[s["shard"] for s in t["sweeps"]] for t in doc["tests"]] == [[[0, 2]], [[1, 2]]]


@pytest.mark.parametrize("path, value, message", [
    (("shard",), [2, 2], "sweep 1: shard is [2, 2]; expected [K, N]"),
    (("items",), {"a": 1}, "sweep 1: items is {'a': 1}; expected a list"),
    (("items", 0, "x"), {"v": 1}, "sweep 1: items[0].x is {'v': 1}; expected a number, a string or null"),
    (("aggregates", "texture_energy"), {"mean": "high"}, "aggregates.texture_energy is"),
    (("worst_maps", 0, "map", "grid"), [0, 4], "sweep 1, worst map 1: grid is [0, 4]"),
    (("stage",), "everything", "stage is 'everything'"),
])
def test_check_document_names_a_bad_sweep_value(records, path, value, message):
    doc = json.loads(json.dumps(_doc(records["full"])))
    target = doc["tests"][0]["sweeps"][0]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ResultsFileError) as err:
        R.check_document(doc, "r.json")
    assert message in str(err.value) and "r.json: test 't.py::test_sweep'" in str(err.value)


# ------------------------------------------------------------------------------------------ histogram
def test_histogram_integer_values_get_one_bar_per_value():
    h = histogram_chart([1, 3, 3, None, 1, float("nan"), 2], metric="support_radius_px", bounds=[(2, "<= 2 px")])
    assert h["integer"] and [(b["range"], b["count"]) for b in h["bars"]] == [("1", 2), ("2", 1), ("3", 2)]
    assert h["n"] == 5 and h["n_missing"] == 2 and h["n_bars"] == 3
    (bound,) = h["bounds"]
    mid = [b for b in h["bars"] if b["range"] == "2"][0]
    assert mid["x"] < bound["x"] < mid["x"] + mid["width"]  # the bound line crosses the bar of its value


def test_histogram_continuous_values_get_sqrt_n_bins():
    values = np.linspace(0.0, 1.0, 30) ** 2
    h = histogram_chart(values, metric="context_share_beyond", marks=[(0.3, 0.2, 0.4, "mean 0.3")])
    assert not h["integer"] and h["n_bars"] == 6 and sum(b["count"] for b in h["bars"]) == 30
    assert all(b["height"] >= 0 and b["y"] + b["height"] <= h["plot_bottom"] + 0.01 for b in h["bars"])
    (mark,) = h["marks"]
    assert mark["band_x"] < mark["x"] < mark["band_x"] + mark["band_width"]
    assert histogram_chart(range(400), metric="x")["n_bars"] == MAX_BINS  # integers, too many values
    assert histogram_chart([None], metric="x")["empty"]


# ------------------------------------------------------------------------------------------ the section
def test_the_sweep_section(records):
    full = records["full"]
    html = render_report(_doc(full))
    (section,) = re.findall(r'<div class="sweep stage-map".*?(?=<details class="prop|</section>)', html, re.S)
    assert "sweep 1: ConvStack, maps of 4 items over 2 images" in section
    # the histogram of the metric the assertion used, with as many bars as computed
    expected = histogram_chart([r["negative_fraction_mass"] for r in full["items"]], metric="negative_fraction_mass")
    assert f'data-metric="negative_fraction_mass" data-bars="{expected["n_bars"]}"' in section
    assert section.count('<rect class="bar"') == expected["n_bars"]
    assert section.count('<line class="bound"') == 1
    # the assertion: statistic, interval, bound, worst items
    assert re.search(r'<tr class="assertion failed">.*rarely_hurt.*mean of negative_fraction_mass', section, re.S)
    # the sortable table: one row per item, the worst 3 marked; the image name escaped
    assert section.count('<tr class="item') == 4 and section.count('<tr class="item worst"') == 3
    assert "&lt;b&gt;left&lt;/b&gt;&amp;" in section and "<b>left</b>" not in html
    assert '<th data-col="2" data-kind="text" data-column="roi">ROI (x, y, size) px</th>' in section
    # the maps of the worst items, drawn by the map view
    assert section.count('<div class="map stage-map">') == 3 and "worst item #" in section
    assert 'src="http' not in html and "<link" not in html  # self-contained


def test_report_of_a_sweep_without_assertions_shows_the_default_metric(records):
    bare = dict(records["full"], assertions=[], worst_maps=[])
    html = render_report(_doc(bare))
    assert 'data-metric="context_share_beyond"' in html
    assert "no assertion over this sweep" in html and "no map is recorded" in html


def far_mass_db(result, beyond: float) -> float:
    """Absolute effect mass (dB) of the blocks farther than ``beyond`` px from the ROI."""
    return float(np.abs(result.effect[(~result.roi_mask) & (result.distance > beyond)]).sum())


def test_metrics_outside_the_frame_become_columns(sweeps):
    """A registered metric with parameters and a callable metric each get a column of their values per item (and
    a histogram); an assertion whose record lacks the values (a results file of an older version) gets a note."""
    s = sweeps["full"]
    with _collect() as out:
        cc.check_over(s, "context_share", beyond=2, at_most=0.5)
        cc.check_over(s, far_mass_db, beyond=2, at_most=1.0)
    rec = R.sweep_record(s, [R.over_record(o) for o in out], max_image_px=0)
    assert rec["columns"][-2:] == ["context_share(beyond=2)", "far_mass_db(beyond=2)"]
    assert [r["context_share(beyond=2)"] for r in rec["items"]] == [cc.context_share(r, beyond=2) for r in s.results]
    assert [r["far_mass_db(beyond=2)"] for r in rec["items"]] == [far_mass_db(r, beyond=2) for r in s.results]
    assert rec["aggregates"]["context_share(beyond=2)"]["n"] == rec["aggregates"]["far_mass_db(beyond=2)"]["n"] == 4
    html = render_report(_doc(rec))
    for metric in ("context_share(beyond=2)", "far_mass_db(beyond=2)"):
        assert f'data-metric="{metric}"' in html and f'data-column="{metric}"' in html
    # a record without the per-item values of its callable metric
    old = [R.over_record(o) for o in out]
    old[1].pop("values")
    html = render_report(_doc(R.sweep_record(s, old, max_image_px=0)))
    assert "no per-item values of far_mass_db(beyond=2) in the records" in html
