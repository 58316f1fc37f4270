"""The words of the report are true: a reach to the image edge is named so (global reach), not as a radius;
listed blocks whose effect is below tol_db say so; the suggestions fit the result (a support-stage result has no
effects); the offending-block table of a support-stage result has no effect or CI column."""

from __future__ import annotations

import json
import re
from html import unescape as html_unescape

import numpy as np
import pytest

import cem_checks as cc
from cem_checks.records import property_record, record_test, result_summary, results_document
from cem_checks.reporting.hints import blocks_suggestion, property_hint
from cem_checks.reporting.html import failure_hint, render_report
from nets import ConvStack

IMG = (np.arange(32 * 32 * 3).reshape(32, 32, 3) * 37 % 256).astype(np.uint8)
TINY = dict(task="dn25", roi=(8, 8, 8), block_size=4, device="cpu")


def jsonable(rec: dict) -> dict:
    return json.loads(json.dumps(rec, allow_nan=False))


def report(result, *outcomes, outcome="failed") -> str:
    """The report of one test with ``result``'s map and the records of ``outcomes``."""
    test = record_test("t.py::test_x", outcome=outcome, maps=[jsonable(result_summary(result))],
                       properties=[jsonable(property_record(o)) for o in outcomes])
    return render_report(results_document([test]))


def section(html: str) -> str:
    return html[html.index('<section class="test"'):]


def global_map() -> cc.CEMResult:
    """8x8 blocks of 4 px, ROI blocks (2..3, 2..3): every block changes the ROI (a global model); the farthest
    blocks (row 7 or col 7) are 13 px from the ROI."""
    e = np.full((8, 8), 0.02)
    e[2:4, 2:4] = 1.0
    return cc.CEMResult.from_effects(e, roi=(8, 8, 8), block_size=4, task="dn25")


# ------------------------------------------------------------------------------------------ global reach
def test_a_support_reaching_the_image_edge_is_named_a_global_reach():
    res = global_map()
    # per block, the support radius is known up to the farthest pixel of the farthest supported block
    assert int(res.distance.max()) == 13 and cc.support_radius(res) == 16
    out = cc.check_receptive_field_within(res, 1)
    html = report(res, out)
    hint = ("the support reaches the image edge (16 px from the ROI); the bound is 1 px: the "
            "model uses context from every block up to the image edge (global reach)")
    assert hint in section(html) and hint in html[:html.index("<h2>Summary</h2>")]  # the first screen too
    assert "context up to 16 px" not in html
    # without the map (no edge known) the hint keeps the number; a reach short of the edge too
    assert "the model uses context up to 16 px" in property_hint(jsonable(property_record(out)))
    smaller = cc.CEMResult.from_effects(np.where(global_map().distance <= 9, global_map().effect, 0.0),
                                        roi=(8, 8, 8), block_size=4, task="dn25")
    rec = jsonable(property_record(cc.check_receptive_field_within(smaller, 1)))
    maps = [jsonable(result_summary(smaller))]
    assert "the model uses context up to 12 px" in failure_hint(maps, rec)  # blocks up to 9 px: pixels up to 12


@pytest.mark.parametrize("check, words", [
    (lambda r: cc.check_receptive_field_within(r, 1, by="effect"),
     "blocks with a non-zero effect reach the image edge (its farthest blocks, 13 px from the ROI); the bound is "
     "1 px: the model draws on context from every block up to the image edge (global reach)"),
    (lambda r: cc.check_positive_effect_local(r, 1, mass=0.99),
     "99% of the positive effect needs blocks up to the image edge (its farthest blocks, 13 px from the ROI)"),
])
def test_the_other_reach_properties_name_the_image_edge_too(check, words):
    res = global_map()
    rec = jsonable(property_record(check(res)))
    assert words in failure_hint([jsonable(result_summary(res))], rec)


# ------------------------------------------------------------------------------------------ below tol_db
def test_support_blocks_below_tol_db_are_labelled():
    """A support failure on a full map lists blocks that change the ROI output (the support) but whose effect is
    below tol_db (zero after thresholding): "+0.000 dB" alone reads as "no effect"."""
    e = np.zeros((8, 8))
    e[1:5, 1:5] = 0.3
    support = np.ones((8, 8), bool)  # every block changes the ROI output, the far ones by less than tol_db
    res = cc.CEMResult.from_effects(e, roi=(8, 8, 8), block_size=4, support=support, task="dn25", tol_db=0.01)
    out = cc.check_receptive_field_within(res, 5)
    assert not out.passed and all(b.effect_db == 0.0 for b in out.worst_blocks)
    html = section(report(res, out))
    rows = re.findall(r'<tr class="offending-block"[^>]*>(.*?)</tr>', html)
    assert len(rows) == len(out.worst_blocks) > 0
    assert all("<td class=\"num\">+0.000 dB</td>" in row for row in rows)
    # the label every listed block shares, said once above the table
    assert "<caption>every listed block: changes the ROI output (below tol_db 0.01 dB)</caption>" in html
    # with a block above tol_db among them, each block says it in its detail, that block does not
    e[0, 7] = 0.5
    res2 = cc.CEMResult.from_effects(e, roi=(8, 8, 8), block_size=4, support=support, task="dn25", tol_db=0.01)
    out2 = cc.check_receptive_field_within(res2, 5)
    rows = dict(re.findall(r'<tr class="offending-block" data-box="([^"]*)">(.*?)</tr>', section(report(res2, out2))))
    assert len(rows) == len(out2.worst_blocks) and "28, 0, 4, 4" in rows
    for box, row in rows.items():
        detail = re.findall(r"<td>([^<]*)</td>", row)
        if box == "28, 0, 4, 4":
            assert "<td class=\"num\">+0.500 dB</td>" in row and detail == [""]
        else:
            assert detail == ["changes the ROI output (below tol_db 0.01 dB)"]


# ------------------------------------------------------------------------------------------ fitting suggestions
@pytest.fixture(scope="module")
def support_failure():
    """A support-stage result of a 5 px model (the real support stage) and its failed receptive-field outcome."""
    res = cc.compute_support(ConvStack((1, 1, 1, 1, 1)), IMG, **TINY)
    return res, cc.check_receptive_field_within(res, 1)


def test_a_support_stage_failure_suggests_what_a_support_result_has(support_failure):
    res, out = support_failure
    assert isinstance(res, cc.SupportResult) and not out.passed
    frame = res.to_frame()
    assert {"distance_px", "support", "resolved"} <= set(frame.columns) and "effect_db" not in frame.columns
    rec = jsonable(property_record(out))
    words = blocks_suggestion(rec)
    assert "distance_px, support and resolved" in words and "effect_db" not in words
    html = section(report(res, out))
    suggestion = re.search(r'<td class="suggestion">([^<]*)</td>', html).group(1)
    assert html_unescape(suggestion) == words
    # a full map's failure suggests its effects, which it has
    m = cc.compute_cem(ConvStack((1, 1, 1, 1, 1)), IMG, coarse=2, fine=4, **TINY)
    full = jsonable(property_record(cc.check_receptive_field_within(m, 1)))
    assert "effect_db" in blocks_suggestion(full) and "effect_db" in m.to_frame().columns


def test_a_support_stage_table_has_no_effect_columns(support_failure):
    res, out = support_failure
    html = section(report(res, out))
    table = re.search(r'<table class="blocks">(.*?)</table>', html, re.S).group(1)
    assert re.findall(r"<th>([^<]*)</th>", table) == ["offending block (x, y, w, h) input px", "grid",
                                                     "distance to the ROI"]
    assert "not estimated" not in table.split("</caption>")[1] and "n/a" not in table
    assert re.search(r"<caption>every listed block: changes the ROI output without other blocks", table)
    rows = re.findall(r'<tr class="offending-block" data-box="([^"]*)">(.*?)</tr>', table)
    assert [box for box, _ in rows] == [", ".join(map(str, b.box_px)) for b in out.worst_blocks]
    for _, cells in rows:
        assert len(re.findall(r'<td class="num">', cells)) == 3
