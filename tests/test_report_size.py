"""The report's size grows with the number of distances, not of blocks: above MAX_CHART_POINTS blocks outside the
ROI the effect-vs-distance chart is drawn per distance (min-max bar, mean line, extreme blocks), with a note."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import cem_checks as cc
from cem_checks.records import map_summary, record_test, results_document
from cem_checks.reporting.html import MAX_CHART_POINTS, profile_chart, render_report
from test_report_panels import parse

#: Bytes the report of four 128x128-block maps (with per-block stderr and draws, no images) may take. Measured:
#: 622 kB (each map: a 45 kB heatmap and a 51 kB stderr PNG of noise-like maps, the worst case for PNG, and a 52 kB
#: chart of 62 distances). The same report with one point per block took 13.5 MB (~16k circles with tooltips per
#: map, ~3.3 MB per map): the bound fails if the chart draws the blocks one by one again, and leaves ~60 % of
#: headroom for other PNG encoders.
MAX_REPORT_BYTES = 1_000_000


def big_map(seed: int) -> dict:
    """A 128x128-block map summary (blocks of 2 px, ROI 8 px at the centre: 4x4 ROI blocks): effects decaying with
    the distance plus noise, noisy stderr, 3 to 52 draws per block."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:128, :128]
    d = np.maximum(abs(yy - 63.5), abs(xx - 63.5))
    eff = np.exp(-d / 10.0) * rng.normal(0.3, 0.3, d.shape) + rng.normal(0.0, 0.005, d.shape)
    se = np.abs(rng.normal(0.02, 0.01, d.shape))
    n = rng.integers(3, 53, d.shape)
    res = cc.CEMResult.from_effects(eff, roi=(124, 124, 8), block_size=2, stderr=se, n_samples=n, task="dn25")
    return json.loads(json.dumps(map_summary(res), allow_nan=False))


@pytest.fixture(scope="module")
def maps():
    return [big_map(s) for s in range(4)]


@pytest.fixture(scope="module")
def html(maps):
    doc = results_document([record_test(f"t.py::test_{i}", outcome="passed", maps=[m]) for i, m in enumerate(maps)])
    return render_report(doc)


def test_four_maps_of_128x128_blocks_stay_small(html):
    size = len(html.encode("utf-8"))
    assert size < MAX_REPORT_BYTES, size
    # per map and distance: at most two extreme blocks and a mean (62 distances)
    assert html.count("<circle") <= 4 * 3 * 62


def test_the_report_says_how_the_chart_is_drawn(html):
    outside = 128 * 128 - 16
    note = (f"{outside} blocks: shown as per-distance min/mean/max (more than the {MAX_CHART_POINTS} drawn one by "
            "one)")
    assert " ".join(parse(html).text).count(note) == 4


def test_the_aggregated_chart_draws_exact_per_distance_numbers(maps, html):
    m = maps[0]
    first = html.split('<section class="test"')[1]  # the test sections are in node id order: test_0 first
    assert 'data-nodeid="t.py::test_0"' in first
    p = parse(first)
    effect = np.array(m["effect_db"], dtype=float)
    dist, roi = np.array(m["distance_px"]), np.array(m["roi_mask"])
    distances = np.unique(dist[~roi])
    # the y axis from two tick labels: y = y0 + (v - v0) * (y1 - y0) / (v1 - v0)
    ytick = r'<text class="ytick" x="[^"]+" y="([^"]+)"[^>]*>([^<]+)<'
    ticks = [(float(v), float(y) - 4) for y, v in re.findall(ytick, first)]
    (v0, y0), (v1, y1) = ticks[0], ticks[-1]
    # Chebyshev distances of 2-px blocks to the ROI (px 124..131 of 256): 1, 3, ..., 123 px
    assert len(p.means) == len(distances) == 62 and distances[-1] == 123
    bars = re.findall(r'<line class="range"[^>]*data-distance="(\d+)" data-count="(\d+)" data-min="([^"]+)" '
                      r'data-mean="([^"]+)" data-max="([^"]+)"', first)
    assert [int(b[0]) for b in bars] == distances.tolist()
    for mp, bar, dd in zip(p.means, bars, distances):
        sel = effect[(dist == dd) & ~roi]
        assert int(mp["data-distance"]) == dd
        assert mp["data-effect"] == bar[3] == f"{sel.mean():+.4g}"
        assert float(mp["cy"]) == pytest.approx(y0 + (sel.mean() - v0) * (y1 - y0) / (v1 - v0), abs=0.02)
        assert int(bar[1]) == sel.size and (bar[2], bar[4]) == (f"{sel.min():+.4g}", f"{sel.max():+.4g}")
    assert sum(int(b[1]) for b in bars) == 128 * 128 - 16
    # the points: the lowest and highest block of each distance, the map's extremes among them
    pts = {(int(q["data-block"].split(",")[0]), int(q["data-block"].split(",")[1])) for q in p.points}
    assert len(distances) < len(pts) <= 2 * len(distances)
    out = np.where(roi, np.nan, effect)
    assert np.unravel_index(np.nanargmax(out), out.shape) in pts
    assert np.unravel_index(np.nanargmin(out), out.shape) in pts


def test_the_cap_is_a_count_of_blocks_outside_the_roi():
    rng = np.random.default_rng(0)
    eff = rng.normal(0, 0.1, (6, 6))
    res = cc.CEMResult.from_effects(eff, roi=(4, 4, 4), block_size=2)  # 4 ROI blocks: 32 outside
    args = (eff.tolist(), res.roi_mask.tolist(), res.distance.tolist())
    full, capped = profile_chart(*args, max_points=32), profile_chart(*args, max_points=31)
    assert (full["aggregated"], full["n_points"], full["note"], full["ranges"]) == (False, 32, None, [])
    assert capped["aggregated"] and capped["n_blocks"] == 32 and capped["note"].startswith("32 blocks: shown as")
    assert sum(r["count"] for r in capped["ranges"]) == 32
    assert capped["means"] == full["means"] and capped["mean_line"] == full["mean_line"]
