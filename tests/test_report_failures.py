"""Failures first: a failed property's section opens with its measured value, bound, a hint per kind of property
and its offending blocks as input-px boxes, outlined on the panels of the map of the same run; colour bars labelled
in text; ROI boxes drawn between dark lines; records without the new keys still render."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import cem_checks as cc
from cem_checks.records import (map_summary, outcome_counts, property_record, property_scalars, record_test,
                                relative_paths, results_document, scalar_summary)
from cem_checks.reporting import images as I
from cem_checks.reporting.hints import property_hint
from cem_checks.reporting.html import offending_boxes, render_report, report_context, section_anchor

ROI = (12, 12, 8)  # input px = output px; blocks of 4 px: ROI blocks (3..4, 3..4) of an 8x8 grid


def hand_map(**kwargs) -> cc.CEMResult:
    """8x8 blocks of 4 px: +0.3 dB around the ROI (distance 1), +0.05 dB at (row 0, col 7) and -0.02 dB at
    (row 7, col 0), both 9 px from the ROI."""
    e = np.zeros((8, 8))
    e[2:6, 2:6] = 0.3
    e[0, 7], e[7, 0] = 0.05, -0.02
    return cc.CEMResult.from_effects(e, roi=kwargs.pop("roi", ROI), block_size=4, task="dn25", **kwargs)


def rec(outcome: cc.PropertyOutcome) -> dict:
    return json.loads(json.dumps(property_record(outcome), allow_nan=False))


def summary(result) -> dict:
    return json.loads(json.dumps(map_summary(result), allow_nan=False))


# ------------------------------------------------------------------------------------------ blocks and hints
def test_offending_blocks_are_named_by_their_input_px_box():
    out = cc.check_receptive_field_within(hand_map(), 1)
    assert not out.passed and out.measured == 12  # per block: 9 to 12 px, the upper end
    boxes = [b.box_px for b in out.worst_blocks[:2]]
    assert sorted(boxes) == [(0, 28, 4, 4), (28, 0, 4, 4)]  # (x, y, w, h): col 7 of row 0, col 0 of row 7
    assert "block (x, y, w, h) = (28, 0, 4, 4) px [row 0, col 7] at 9 px: +0.050 dB" in out.message()
    assert rec(out)["worst_blocks"][0]["box_px"] in ([0, 28, 4, 4], [28, 0, 4, 4])
    frame = out.to_frame()
    assert sorted(frame[["x_px", "y_px", "w_px", "h_px"]].values.tolist()[:2]) == [[0, 28, 4, 4], [28, 0, 4, 4]]


@pytest.mark.parametrize("check, expected", [
    (lambda r: cc.check_receptive_field_within(r, 1),
     "the support reaches up to 12 px; the bound is 1 px: the model uses context up to 12 px: raise the bound if intended, "
     "or inspect the outlined blocks"),
    (lambda r: cc.check_receptive_field_within(r, 1, by="effect"),
     "blocks with a non-zero effect reach 9 px; the bound is 1 px"),
    (lambda r: cc.check_positive_effect_local(r, 1, mass=0.99),
     "99% of the positive effect needs blocks up to 9 px from the ROI; the bound is 1 px"),
    (lambda r: cc.check_negative_fraction_at_most(r, 0.0),
     "1.67% of the blocks hurt the ROI; at most 0% allowed"),
    (lambda r: cc.check_uses_context_beyond(r, 8, 0.5),
     "only 1.91% of the effect mass comes from beyond 8 px; at least 50% expected: the model acts locally"),
    (lambda r: cc.check_effect_range_between(r, 1.0, 2.0),
     "the effect range is 0.32 dB, below 1 dB: the map is nearly flat"),
    (lambda r: cc.check_effect_range_between(r, 0.0, 0.1),
     "the effect range is 0.32 dB, above 0.1 dB: some blocks move the ROI's PSNR strongly"),
    (lambda r: cc.check_property(r, "gini", "<=", 0.1),
     "gini() = 0.7957 misses the bound <= 0.1: adjust the bound if this is intended"),
])
def test_each_kind_of_property_gets_its_hint(check, expected):
    r = rec(check(hand_map()))
    assert not r["passed"]
    hint = property_hint(r)
    assert expected in hint, hint
    assert property_hint(dict(r, passed=True)) == ""


def test_an_undefined_measurement_and_a_new_baseline_get_their_hints():
    nan = rec(cc.check_property(cc.CEMResult.from_effects(np.zeros((4, 4)), roi=(4, 4, 4), block_size=2), "gini",
                                "<=", 0.5))
    assert nan["measured"] is None and "is undefined for this map" in property_hint(nan)
    created = {"name": "matches_baseline", "passed": False, "measured": None, "metric": "blocks_beyond_tolerance"}
    assert "review and commit the baseline or rerun with --cem-regen" in property_hint(created)


# ------------------------------------------------------------------------------------------ the page
def test_failed_property_opens_its_section_with_outlined_offenders():
    res = hand_map()
    m = summary(res)
    fail = rec(cc.check_receptive_field_within(res, 1, by="effect"))
    ok = rec(cc.check_effect_range_between(res, 0.0, 1.0))
    html = render_report(results_document([record_test("t.py::test_x", outcome="failed", maps=[m],
                                                       properties=[ok, fail])]))
    section = html[html.index('<section class="test"'):]
    # the failure comes first in the section, expanded: verdict, measured, bound, hint, offenders, message
    first = section.index('<details class="prop failure failed" open>')
    assert first < section.index('<div class="maps">') < section.index('<details class="prop passed">')
    assert '<td class="measured">max_reach(significant=False) = <span class="num">9 px</span></td>' in section
    assert '<td class="bound"><span class="num">&lt;= 1 px</span></td>' in section
    # the offenders are the farthest blocks of the map (9 px): the hint names the image edge, not a radius
    assert ("blocks with a non-zero effect reach the image edge (its farthest blocks, 9 px from the ROI); the bound "
            "is 1 px: the model draws on context from every block up to the image edge (global reach)") in section
    offenders = re.findall(r'<tr class="offending-block" data-box="([^"]*)"><td class="num">[^<]*</td>'
                           r'<td class="num">([^<]*)</td><td class="num">([^<]*)</td><td class="num">([^<]*)</td>'
                           r'<td class="num">([^<]*)</td>', section)
    assert sorted(offenders) == [("0, 28, 4, 4", "row 7, col 0", "9 px", "-0.020 dB", "[-0.020, -0.020] dB"),
                                 ("28, 0, 4, 4", "row 0, col 7", "9 px", "+0.050 dB", "[+0.050, +0.050] dB")]
    # blocks within the bound are listed for context, not outlined
    assert section.count('class="context-block"') == 3
    # outlined on the support panel and the heatmap, at their place in the 32x32 px grid
    outlines = re.findall(r'<div class="offending" data-cem-offending="([^"]*)" style="([^"]*)"', section)
    assert sorted(outlines) == sorted([
        ("0,28,4,4", "left: 0.0000%; top: 87.5000%; width: 12.5000%; height: 12.5000%"),
        ("28,0,4,4", "left: 87.5000%; top: 0.0000%; width: 12.5000%; height: 12.5000%"),
    ] * 2)


def test_offenders_go_to_the_map_of_their_run_only():
    a, b = hand_map(), hand_map(roi=(8, 8, 8))
    maps = [summary(a), summary(b)]
    props = [rec(cc.check_receptive_field_within(a, 1)), rec(cc.check_receptive_field_within(b, 20))]
    boxes = offending_boxes(maps, props)
    assert sorted(x["box"] for x in boxes[0]) == [[0, 28, 4, 4], [28, 0, 4, 4]]
    assert boxes[1] == []  # the second map's property passed; the first property is of another ROI


def test_records_of_older_versions_get_boxes_from_row_col_and_block_size():
    res = hand_map()
    p = rec(cc.check_receptive_field_within(res, 1))
    for b in p["worst_blocks"]:
        del b["box_px"]
    (boxes,) = offending_boxes([summary(res)], [p])
    assert sorted(x["box"] for x in boxes) == [[0, 28, 4, 4], [28, 0, 4, 4]]


def test_colour_bars_are_labelled_in_text_under_each_effect_panel():
    html = render_report(results_document([record_test("t.py::x", outcome="passed", maps=[summary(hand_map())])]))
    bars = re.findall(r'<div class="colorbar-box" style="width: (\d+)px"><img class="colorbar" src="data:image/png;'
                      r'base64,[^"]+" alt="[^"]*"><div class="ends"><span>([^<]*)</span><span>0</span><span>([^<]*)'
                      r'</span></div><div class="range">([^<]*)</div>', html)
    assert bars == [("256", "-1 dB", "+1 dB", "map min -0.02 dB, max +0.3 dB")]  # the heatmap's (no images here)


def test_sections_are_anchored_by_node_id_alone():
    ids = ["t.py::test_a", "t.py::test_b[x/y]", "t.py::test_b[x-y]"]
    ctx = report_context(results_document([record_test(n, outcome="failed", message="boom") for n in ids]))
    assert {t["nodeid"]: t["anchor"] for t in ctx["tests"]} == {n: section_anchor(n) for n in ids}
    assert len({section_anchor(n) for n in ids}) == 3 and section_anchor(ids[0]).startswith("t-t-py-test_a-")


def test_plain_tests_are_listed_in_one_table_and_counted():
    tests = [record_test("t.py::a", outcome="passed"), record_test("t.py::b", outcome="skipped", message="Skipped: no"),
             record_test("t.py::c", outcome="error", message="fixture boom"),
             record_test("t.py::d", outcome="passed", teardown_error="teardown boom")]
    assert outcome_counts(tests) == {"passed": 2, "failed": 0, "error": 2, "skipped": 1, "xfailed": 0, "xpassed": 0}
    ctx = report_context(results_document(tests))
    assert [t["nodeid"] for t in ctx["other_tests"]] == ["t.py::a", "t.py::b"]
    assert [t["nodeid"] for t in ctx["tests"]] == ["t.py::c", "t.py::d"]  # an error gets a section with its text
    assert dict(ctx["summary"])["tests"] == "4: 2 passed, 0 failed, 2 errors, 1 skipped"
    with pytest.raises(cc.CEMInputError, match=r"outcome='broken' is not a test outcome; expected one of 'passed', "
                                               r"'failed', 'error', 'skipped', 'xfailed', 'xpassed'"):
        record_test("t.py::e", outcome="broken")


# ------------------------------------------------------------------------------------------ records
def test_scalar_summaries_keep_numbers_not_grids():
    res = cc.CEMResult.from_effects(np.random.default_rng(0).normal(0, 0.1, (32, 32)), roi=(60, 60, 8),
                                    block_size=4, task="dn25")
    full = summary(res)
    small = scalar_summary(full)
    assert len(json.dumps(full)) > 20_000 and len(json.dumps(small)) < 1_000
    assert small["grid"] == [32, 32] and small["settings"] == full["settings"]
    assert {k: small[k] for k in ("effect_min_db", "effect_max_db", "support_radius_px", "positive_blocks")} == {
        k: full[k] for k in ("effect_min_db", "effect_max_db", "support_radius_px", "positive_blocks")}
    assert not {"effect_db", "support", "roi_mask", "images", "uncertainty"} & set(small)
    p = rec(cc.check_receptive_field_within(res, 1))
    assert set(property_scalars(p)) == {"name", "passed", "expression", "measured", "op", "bound", "unit",
                                        "measured_text", "bound_text"}


def test_paths_under_the_root_are_written_relative_to_it():
    record = {"params": {"baseline": "/work/x/cem_baselines/t/test_a"}, "texts": ["see /work/x/r.html", "/work/xy/z"],
              "n": 3}
    assert relative_paths(record, "/work/x") == {"params": {"baseline": "cem_baselines/t/test_a"},
                                                 "texts": ["see r.html", "/work/xy/z"], "n": 3}
    assert relative_paths(record, "/") == record


# ------------------------------------------------------------------------------------------ ROI boxes
def test_roi_boxes_have_a_dark_line_on_each_side_of_the_bright_band():
    arr = np.full((40, 40, 3), 128, np.uint8)
    I.draw_box(arr, (10, 10, 30, 30), thickness=2)
    green, dark = np.array(I.ROI_BOX_RGB), np.array(I.BOX_EDGE_RGB)
    assert (arr[9, 20] == dark).all() and (arr[10, 20] == green).all() and (arr[11, 20] == green).all()
    assert (arr[12, 20] == dark).all() and (arr[13, 20] == 128).all()  # inside the box: the image
    assert (arr[20, 9] == dark).all() and (arr[20, 30] == dark).all() and (arr[29, 20] == green).all()
    edge = np.full((20, 20, 3), 128, np.uint8)
    I.draw_box(edge, (0, 0, 10, 10), thickness=1)  # at the image's corner: the band stays on the box's edge
    assert (edge[0, 5] == green).all() and (edge[5, 0] == green).all() and (edge[10, 5] == dark).all()
