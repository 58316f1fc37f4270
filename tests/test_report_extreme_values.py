"""A results file may hold numbers near the float limit (an edited or damaged file, a model that blew up): effects of
+-1e308 dB still give a report, the charts' axes end at AXIS_LIMIT with the extreme points drawn at their ends, and
tick labels stay short."""

from __future__ import annotations

import json
import re

import numpy as np

import cem_checks as cc
from cem_checks.records import check_document, map_summary, record_test, results_document
from cem_checks.reporting.html import AXIS_LIMIT, histogram_chart, nice_ticks, profile_chart, render_report


def extreme_map() -> dict:
    """A map summary of 8x8 blocks of 4 px whose corner blocks have effects of +1e308 and -1e308 dB."""
    e = np.zeros((8, 8))
    e[0, 0], e[7, 7], e[2, 2] = 0.3, -0.2, 0.1
    m = json.loads(json.dumps(map_summary(cc.CEMResult.from_effects(e, roi=(12, 12, 8), block_size=4,
                                                                    task="dn25")), allow_nan=False))
    m["effect_db"][0][0], m["effect_db"][7][7] = 1e308, -1e308
    m["effect_max_db"], m["effect_min_db"] = 1e308, -1e308
    return m


def test_nice_ticks_of_a_range_wider_than_the_largest_float():
    lo, hi, ticks = nice_ticks(-1e308, 1e308)  # hi - lo overflows to inf
    assert all(np.isfinite(ticks)) and lo <= -AXIS_LIMIT * 0.99 and hi >= AXIS_LIMIT * 0.99 and 3 <= len(ticks) <= 7
    assert nice_ticks(-1.0, 2.0) == (-1.0, 2.0, [-1.0, 0.0, 1.0, 2.0])  # ordinary ranges as before


def test_a_results_file_with_effects_of_1e308_renders():
    m = extreme_map()
    doc = check_document(json.loads(json.dumps(results_document([record_test("t.py::test_x", outcome="passed",
                                                                             maps=[m])]))))
    html = render_report(doc)
    assert "map min -1e+308 dB, max +1e+308 dB (beyond the scale: clipped)" in html
    chart = profile_chart(m["effect_db"], m["roi_mask"], m["distance_px"])
    top, bottom = chart["top"], chart["plot_bottom"]
    ys = {p["effect"]: p["cy"] for p in chart["points"]}
    # the extreme blocks sit at the ends of the axis; their tooltips keep the recorded values
    assert ys["+1e+308"] == min(y for y, _ in chart["y_ticks"]) and ys["-1e+308"] == max(y for y, _ in chart["y_ticks"])
    assert all(top <= p["cy"] <= bottom for p in chart["points"])
    assert all(len(label) <= 8 for _, label in chart["y_ticks"]), chart["y_ticks"]
    assert 'data-effect="+1e+308"' in html and 'data-effect="-1e+308"' in html
    labels = re.findall(r'<text class="ytick"[^>]*>([^<]*)</text>', html)
    assert labels and all(len(label) <= 8 for label in labels), labels


def test_a_sweep_metric_of_1e308_gets_a_histogram():
    h = histogram_chart([1e308, -1e308, 0.0, 1.0], metric="support_radius_px")
    assert not h["empty"] and sum(b["count"] for b in h["bars"]) == 4
    assert all(np.isfinite([b["x"] for b in h["bars"]])) and all(len(label) <= 8 for _, label in h["x_ticks"])
