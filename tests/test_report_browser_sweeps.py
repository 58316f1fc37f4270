"""A sweep's report section in headless Chromium: it renders without console errors, its histogram has as many bars
as computed, sorting the per-item table works, the maps of the worst items are drawn, and the page stays within an
800 px window.

Skipped when Chromium or the Playwright Python package is absent (see tests/test_report_browser.py).
"""

from __future__ import annotations

import json

import pytest

from cem_checks.reporting.html import histogram_chart
from sweep_inner import make_sweep_suite
from test_report_browser import open_page, page_box, sync_api

pytest_plugins = ["pytester"]


@pytest.fixture
def report(pytester) -> dict:
    make_sweep_suite(pytester)
    pytester.runpytest("--cem-report", "r.html", "--cem-json", "r.json").assert_outcomes(passed=1)
    return {"html": pytester.path / "r.html", "doc": json.loads((pytester.path / "r.json").read_text())}


def column(page, name: str) -> list[str]:
    """The texts of the per-item table's column ``name`` (data-column), in the rows' current order."""
    return page.evaluate(
        """name => {
            const table = document.querySelector("table.sweep-items");
            const col = Array.from(table.tHead.rows[0].cells).findIndex(c => c.dataset.column === name);
            return Array.from(table.tBodies[0].rows).map(r => r.cells[col].textContent);
        }""", name)


def test_sweep_section_in_chromium(report, tmp_path):
    (sweep,) = report["doc"]["tests"][0]["sweeps"]
    with sync_api.sync_playwright() as pw:
        context, page = open_page(pw, tmp_path, 800)
        try:
            console, errors = [], []
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(report["html"].as_uri())
            page.wait_for_function("() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
            assert errors == [] and [m for m in console if m[0] == "error"] == []
            scroll, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert scroll <= inner == 800, f"the page is {scroll} px wide in an 800 px window"

            # one histogram per metric the assertions used (support radius, negative share), bars as computed
            figures = page.query_selector_all("figure.sweep-histogram")
            assert [f.get_attribute("data-metric") for f in figures] == ["support_radius_px", "negative_fraction_mass"]
            for f in figures:
                metric = f.get_attribute("data-metric")
                expected = histogram_chart([r[metric] for r in sweep["items"]], metric=metric)
                bars = f.query_selector_all("rect.bar")
                assert len(bars) == expected["n_bars"] == int(f.get_attribute("data-bars"))
                assert sum(int(b.get_attribute("data-count")) for b in bars) == 4
                left, top, right, bottom = page_box(page, f.query_selector("svg"))
                assert right - left >= 300 and bottom - top >= 150 and right <= 800
                tall = [b for b in bars if int(b.get_attribute("data-count"))]
                assert all(b.bounding_box()["height"] > 5 for b in tall)  # drawn, not collapsed

            # sorting: by the negative share (numbers), both ways; by image (text)
            values = [r["negative_fraction_mass"] for r in sweep["items"]]
            page.click("table.sweep-items th[data-column='negative_fraction_mass']")
            ascending = [float(v) for v in column(page, "negative_fraction_mass")]
            assert ascending == sorted(ascending) and len(ascending) == len(values)
            assert column(page, "index") == [str(r["index"]) for r in sorted(sweep["items"],
                                                                           key=lambda r: r["negative_fraction_mass"])]
            page.click("table.sweep-items th[data-column='negative_fraction_mass']")
            assert [float(v) for v in column(page, "negative_fraction_mass")] == sorted(ascending, reverse=True)
            page.click("table.sweep-items th[data-column='image']")
            assert column(page, "image") == sorted(column(page, "image"))
            page.click("table.sweep-items th[data-column='index']")
            assert column(page, "index") == ["0", "1", "2", "3"]

            # the worst items' maps: heatmaps drawn by the map view
            heatmaps = page.query_selector_all("details.sweep-maps img.heatmap:not(.support)")
            assert len(heatmaps) == len(sweep["worst_maps"]) >= 3
            for h in heatmaps:
                left, top, right, bottom = page_box(page, h)
                assert right - left >= 100 and right <= 800
            assert errors == [] and [m for m in console if m[0] == "error"] == []
        finally:
            context.close()
