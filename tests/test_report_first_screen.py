"""The report's first screen says what failed, where and why (a card per failed property: measured vs bound, note,
hint, a thumbnail of its map with its offending blocks outlined, linking to the failure), and properties' notes
(e.g. a vacuous result: nothing was measured) are shown next to their verdicts in a warning style, from records
with or without the field."""

from __future__ import annotations

import json
import re

import numpy as np

import cem_checks as cc
from cem_checks.records import check_document, map_summary, property_record, record_test, results_document
from cem_checks.reporting.html import FIRST_SCREEN_CARDS, render_report, report_context

VACUOUS = "no block outside the ROI moved the ROI PSNR by tol_db: nothing was measured"


def hand_map(roi=(12, 12, 8)) -> cc.CEMResult:
    """8x8 blocks of 4 px: +0.3 dB around the ROI, +0.05 dB at (row 0, col 7), -0.02 dB at (row 7, col 0)."""
    e = np.zeros((8, 8))
    e[2:6, 2:6] = 0.3
    e[0, 7], e[7, 0] = 0.05, -0.02
    return cc.CEMResult.from_effects(e, roi=roi, block_size=4, task="dn25")


def rec(outcome, **changes) -> dict:
    r = json.loads(json.dumps(property_record(outcome), allow_nan=False))
    r.update(changes)
    return r


def first_screen(html: str) -> str:
    return html[:html.index("<h2>Summary</h2>")]


def test_one_card_per_failed_property_failures_first():
    res = hand_map()
    m = json.loads(json.dumps(map_summary(res), allow_nan=False))
    support = rec(cc.check_receptive_field_within(res, 1))
    effect = rec(cc.check_negative_fraction_at_most(res, 0.0))
    tests = [record_test("t.py::test_expected", outcome="xfailed", maps=[m], properties=[support]),
             record_test("t.py::test_fails", outcome="failed", maps=[m], properties=[support, effect]),
             record_test("t.py::test_ok", outcome="passed", maps=[m], properties=[rec(cc.check_receptive_field_within(
                 res, 20))])]
    ctx = report_context(results_document(tests))
    cards = ctx["first"]["cards"]
    assert [(c["nodeid"], c["name"], c["status"]) for c in cards] == [
        ("t.py::test_fails", "receptive_field_within", "failed"),
        ("t.py::test_fails", "negative_fraction_at_most", "failed"),
        ("t.py::test_expected", "receptive_field_within", "xfailed")]
    first = cards[0]
    assert (first["measured_expression"], first["measured_value"], first["bound"]) == ("support_radius()", "12 px",
                                                                                      "<= 1 px")
    assert first["hint"].startswith("the support reaches the image edge (12 px from the ROI)")
    # thumbnails: the support panel for the support property, the effect per block for the other; each outlines
    # the property's own offending blocks at their place in the 32x32 px grid
    assert [c["thumb"]["kind"] for c in cards] == ["support", "effect", "support"]
    outlines = {c["name"]: sorted(o["data"] for o in c["thumb"]["outlines"]) for c in cards[:2]}
    assert outlines == {"receptive_field_within": ["0,28,4,4", "28,0,4,4"], "negative_fraction_at_most": ["0,28,4,4"]}
    style = "left: 0.0000%; top: 87.5000%; width: 12.5000%; height: 12.5000%"
    assert cards[1]["thumb"]["outlines"][0]["style"] == style
    html = render_report(results_document(tests))
    top = first_screen(html)
    assert top.count('<div class="card failed"') == 2 and top.count('<div class="card xfailed"') == 1
    assert top.count("data-cem-offending=") == 5
    assert 'img class="thumb support"' in top and 'img class="thumb effect"' in top
    # each card links to its failure, which opens the property in the test's section
    for link in re.findall(r'<a class="thumb" href="#([^"]+)"', top):
        assert re.search(f'<summary id="{re.escape(link)}">', html), link
    assert html.index("<h2>What failed, where and why</h2>") < html.index('<table id="summary"')


def test_the_first_screen_shows_a_bounded_number_of_cards():
    res = hand_map()
    m = json.loads(json.dumps(map_summary(res), allow_nan=False))
    fail = rec(cc.check_receptive_field_within(res, 1))
    n = FIRST_SCREEN_CARDS + 3
    tests = [record_test(f"t.py::test_{k:02d}", outcome="failed", maps=[m], properties=[fail]) for k in range(n)]
    html = render_report(results_document(tests))
    top = first_screen(html)
    assert top.count('<div class="card failed"') == FIRST_SCREEN_CARDS
    assert "and 3 more failed properties: the properties table below lists them all" in top
    assert html.count('<tr class="property-row failed"') == n
    # no failure, no failure section
    ok = record_test("t.py::test_ok", outcome="passed", maps=[m],
                     properties=[rec(cc.check_receptive_field_within(res, 20))])
    assert "What failed" not in render_report(results_document([ok]))


def test_notes_are_shown_next_to_their_verdicts():
    """A results document whose property records carry notes: a vacuous pass, a failure with a note; and records
    with a null, a blank or no note (older files)."""
    res = hand_map()
    m = json.loads(json.dumps(map_summary(res), allow_nan=False))
    vacuous = rec(cc.check_receptive_field_within(res, 20), note=VACUOUS)
    failed = rec(cc.check_receptive_field_within(res, 1), note="an upper bound: the radius was not searched")
    null = rec(cc.check_effect_range_between(res, 0.0, 1.0), note=None)
    blank = rec(cc.check_effect_range_between(res, 0.0, 2.0), note="  ")
    older = rec(cc.check_effect_range_between(res, 0.0, 3.0))
    del older["note"]
    doc = check_document(json.loads(json.dumps(results_document([
        record_test("t.py::test_notes", outcome="failed", maps=[m],
                    properties=[vacuous, failed, null, blank, older])]))))
    html = render_report(doc)
    section = html[html.index('<section class="test"'):]
    # the vacuous pass: its note in its (collapsed) summary line, in the warning style
    passed = re.search(r'<details class="prop passed">\s*<summary id="([^"]+)">(.*?)</summary>', section, re.S)
    assert f'<span class="prop-note">{VACUOUS}</span>' in passed.group(2)
    # the failure: its note right under its verdict
    assert re.search(r'<details class="prop failure failed" open>\s*<summary id="[^"]+">[^\n]*</summary>\s*'
                     r'<p class="prop-note">an upper bound: the radius was not searched</p>', section)
    assert section.count('class="prop-note"') == 2  # null, blank and missing notes show nothing
    # the first screen: the failure's card carries its note; the vacuous pass is listed with a link to it
    top = first_screen(html)
    assert '<div class="prop-note">an upper bound: the radius was not searched</div>' in top
    noted = re.search(r'<section class="first-screen" id="noted">(.*?)</section>', top, re.S).group(1)
    assert re.findall(r'<li><a href="#([^"]+)">t.py::test_notes</a> receptive_field_within<div class="prop-note">'
                      r'([^<]*)</div></li>', noted) == [(passed.group(1), VACUOUS)]
    # the properties table flags the rows with a note
    assert html.count('<span class="note-flag" title=') == 2
    # the warning style is defined
    assert re.search(r"\.prop-note \{[^}]*background: #fff8e1", html)
