"""--cem-report in headless Chromium: failures first, offending blocks outlined where they are, counts like pytest,
and a page no wider than the window at 1280 and 800 px (long test ids and paths wrap).

Skipped when Chromium or the Playwright Python package is absent (see tests/test_report_browser.py).
"""

from __future__ import annotations

import json

import pytest

from plugin_inner import OUTCOMES_SUITE, OUTCOMES_SUITE_COUNTS, make_suite
from test_report_browser import CHROMIUM, CHROMIUM_ARGS, page_box, sync_api

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


@pytest.fixture
def run(pytester) -> dict:
    make_suite(pytester, SUITE)
    result = pytester.runpytest("--cem-report", "r.html", "--cem-json", "r.json")
    counts = result.parseoutcomes()
    return {"html": pytester.path / "r.html", "doc": json.loads((pytester.path / "r.json").read_text()),
            "counts": counts}


def open_page(pw, tmp_path, width: int):
    context = pw.chromium.launch_persistent_context(
        str(tmp_path / f"chromium-profile-{width}"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        viewport={"width": width, "height": 900}, device_scale_factor=1,
    )
    return context, context.new_page()


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
