"""--cem-report in headless Chromium: failures first, offending blocks outlined where they are, counts like pytest,
and a page no wider than the window at 1280 and 800 px (long test ids and paths wrap). The first screen says what
failed, where and why: the first failure's outline is drawn inside the first viewport; support-only tables have one
line per block; numbers never wrap mid-value.

Skipped when Chromium or the Playwright Python package is absent (see tests/test_report_browser.py).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from plugin_inner import OUTCOMES_SUITE, OUTCOMES_SUITE_COUNTS, make_suite
from test_report_browser import open_page, page_box, sync_api

pytest_plugins = ["pytester"]

#: The suite of every outcome, plus a test with a long parametrize id whose baseline path (in its measured text)
#: is long and has no spaces.
SUITE = OUTCOMES_SUITE + """
    @pytest.mark.parametrize("variant", ["a_very_long_parameter_id_" * 6])
    @pytest.mark.cem(**TINY)
    def test_baseline_of_a_long_id(cem, cem_baseline, variant):
        cem_baseline(cem(ConvStack((1, 1)), IMG))
"""
WIDTHS = (1280, 800)
#: The colour of the offending blocks' outlines (CSS ``#ffd400``).
OUTLINE_RGB = (255, 212, 0)
#: The numbers of the page (``.num``): no value token (a run of non-space characters) is split over two lines.
SPLIT_NUMBERS_JS = """() => {
    const split = [];
    for (const el of document.querySelectorAll(".num")) {
        const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            for (const m of node.data.matchAll(/\\S+/g)) {
                const range = document.createRange();
                range.setStart(node, m.index);
                range.setEnd(node, m.index + m[0].length);
                const tops = new Set(Array.from(range.getClientRects()).filter(r => r.width > 0)
                                     .map(r => Math.round(r.top)));
                if (tops.size > 1) split.push(m[0]);
            }
        }
    }
    return split;
}"""


@pytest.fixture
def run(pytester) -> dict:
    make_suite(pytester, SUITE)
    result = pytester.runpytest("--cem-report", "r.html", "--cem-json", "r.json")
    counts = result.parseoutcomes()
    return {"html": pytester.path / "r.html", "doc": json.loads((pytester.path / "r.json").read_text()),
            "counts": counts}


def test_failures_outlines_counts_and_width(run, tmp_path):
    doc = run["doc"]
    tests = {t["nodeid"].split("::")[1]: t for t in doc["tests"]}
    expected = dict(OUTCOMES_SUITE_COUNTS, failed=OUTCOMES_SUITE_COUNTS["failed"] + 1)  # the new baseline fails
    assert run["counts"] == expected
    with sync_api.sync_playwright() as pw:
        for width in WIDTHS:
            context, page = open_page(pw, tmp_path, width)
            try:
                errors = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(run["html"].as_uri())
                page.wait_for_function("() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
                assert errors == []
                # nothing wider than the window
                scroll, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
                assert scroll <= inner == width, f"the page is {scroll} px wide in a {width} px window"
                check_first_screen(page, tests)
                assert page.evaluate(SPLIT_NUMBERS_JS) == []
                check_support_only_table(page, tests["test_expected_property_failure"])

                # the summary counts the tests as pytest's summary line does
                row = page.evaluate("""() => Array.from(document.querySelectorAll('#summary tr'))
                    .find(r => r.cells[0].textContent === 'tests').cells[1].textContent""")
                n_tests = sum(expected.values()) - 1  # the teardown error is a second report of a passed test
                parts = dict((w, int(n)) for n, w in (p.split(" ") for p in row.split(": ", 1)[1].split(", ")))
                assert row.startswith(f"{n_tests}: ") and parts == expected

                # a failed property's section starts with its verdict: measured, bound, a hint, the offenders
                section = page.query_selector(f"section[data-nodeid='test_suite.py::test_too_wide']")
                first = section.query_selector(":scope > :nth-child(2)")
                assert first.get_attribute("class") == "prop failure failed" and first.get_attribute("open") == ""
                assert first.query_selector("td.measured").text_content() == "support_radius() = 5 px"
                assert first.query_selector("td.bound").text_content() == "<= 1 px"
                assert first.query_selector("td.hint").text_content().startswith(
                    "the support reaches up to 5 px; the bound is 1 px: the model uses context up to 5 px")
                font = page.evaluate("() => parseFloat(getComputedStyle(document.querySelector("
                                     "'.colorbar-box .ends span')).fontSize)")
                assert font >= 12

                for name, panels in (("test_too_wide", ("support", "heatmap", "overlay")),
                                     ("test_expected_property_failure", ("support",))):
                    check_outlines(page, tests[name], panels)
            finally:
                context.close()


def check_outlines(page, test: dict, panels: tuple[str, ...]) -> None:
    """The offending blocks of the test's failed receptive-field property are outlined on each of ``panels``, at
    their place, and they are exactly the blocks of its support beyond the bound (those the property lists)."""
    (m,) = test["maps"]
    (p,) = test["properties"]
    assert p["name"] == "receptive_field_within" and not p["passed"]
    b = m["settings"]["block_size"]
    rows, cols = m["grid"]
    listed = {tuple(blk["box_px"]) for blk in p["worst_blocks"] if blk["distance_px"] > p["bound"]}
    assert listed, "the failed property names no block beyond its bound"
    for x, y, w, h in listed:  # each listed block changes the ROI output (the support) and lies beyond the bound
        assert (w, h) == (b, b) and m["support"][y // b][x // b] and m["distance_px"][y // b][x // b] > p["bound"]
    section = page.query_selector(f"section[data-nodeid='{test['nodeid']}']")
    for panel in panels:
        figure = section.query_selector(f"figure.panel-{panel}")
        img = figure.query_selector("img")
        left, top, right, bottom = page_box(page, img)
        outlines = figure.query_selector_all("[data-cem-offending]")
        boxes = {tuple(int(v) for v in o.get_attribute("data-cem-offending").split(",")) for o in outlines}
        assert boxes == listed, panel
        # frame: the grid of blocks (support, heatmap) or the whole input (overlay: 32x32 px here)
        frame_w, frame_h = (cols * b, rows * b) if panel != "overlay" else (32, 32)
        for o in outlines:
            x, y, w, h = (int(v) for v in o.get_attribute("data-cem-offending").split(","))
            ol, ot, orr, ob = page_box(page, o)
            sx, sy = (right - left) / frame_w, (bottom - top) / frame_h
            assert abs(ol - (left + x * sx)) <= 1.5 and abs(ot - (top + y * sy)) <= 1.5
            assert abs(orr - (left + (x + w) * sx)) <= 1.5 and abs(ob - (top + (y + h) * sy)) <= 1.5


def check_first_screen(page, tests: dict) -> None:
    """The first screen: a card per failed property, failures first (the new baseline has no offending block, the
    receptive field of test_too_wide has), then the expected one; the card of the first failure with offending
    blocks has its measured value, bound and hint, and its thumbnail (the support panel) with the offending blocks
    outlined, drawn inside the first viewport, linking to the failure in its test's section."""
    height = page.evaluate("window.innerHeight")
    cards = page.query_selector_all("#failures .card")
    assert [(c.get_attribute("class"), c.query_selector(".card-head a").text_content()) for c in cards] == [
        ("card failed", tests["test_baseline_of_a_long_id[variant0]"]["nodeid"]),
        ("card failed", "test_suite.py::test_too_wide"),
        ("card xfailed", "test_suite.py::test_expected_property_failure")]
    first = page.query_selector("[data-cem-offending]")
    card = cards[1]
    assert card.evaluate("(c, o) => c.contains(o)", first), "the first outline is not in test_too_wide's card"
    assert card.query_selector(".measured").text_content() == "5 px"
    assert card.query_selector(".bound").text_content() == "<= 1 px"
    assert card.query_selector(".hint").text_content().startswith("the support reaches up to 5 px; the bound is 1 px")
    assert card.query_selector("img.thumb").get_attribute("class") == "thumb support"
    box = first.bounding_box()
    assert 0 <= box["y"] and box["y"] + box["height"] < height, f"the first outline at {box} is below the first screen"
    # the outline is drawn there: its yellow border in a screenshot of the first viewport
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot(type="png"))).convert("RGB"), dtype=np.int16)
    x0, y0 = int(box["x"]), int(box["y"])
    region = shot[y0:y0 + int(box["height"]) + 1, x0:x0 + int(box["width"]) + 1]
    assert (abs(region - OUTLINE_RGB).max(axis=-1) < 40).sum() >= 8, "the first outline is not drawn"
    # the card and its thumbnail link to the failure, which exists in the test's section
    link = card.query_selector("a.thumb").get_attribute("href")
    assert link == card.query_selector(".card-head a").get_attribute("href")
    target = page.query_selector(f"[id='{link[1:]}']")
    assert target.evaluate("e => e.closest('section.test').dataset.nodeid") == tests["test_too_wide"]["nodeid"]
    assert target.evaluate("e => e.parentElement.classList.contains('failure')")


def check_support_only_table(page, test: dict) -> None:
    """The offending blocks of a support-stage result (no effect estimated): no effect or CI column, their shared
    detail said once above the table, one line per block."""
    section = page.query_selector(f"section[data-nodeid='{test['nodeid']}']")
    table = section.query_selector("table.blocks")
    headers = [th.text_content() for th in table.query_selector_all("thead th")]
    assert headers == ["offending block (x, y, w, h) input px", "grid", "distance to the ROI"]
    assert table.query_selector("caption").text_content().startswith("every listed block: changes the ROI output")
    line = page.evaluate("() => parseFloat(getComputedStyle(document.body).lineHeight) || 20")
    rows = table.query_selector_all("tbody tr")
    assert len(rows) == len(test["properties"][0]["worst_blocks"]) > 0
    for row in rows:
        assert row.bounding_box()["height"] < 2 * line, "a row of the support-only table takes two lines"
