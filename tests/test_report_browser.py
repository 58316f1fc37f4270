"""--cem-report in a real browser: the report of a tiny suite opens in headless Chromium without console errors,
its heatmaps, input/output/overlay images (with the ROI box) and effect-vs-distance charts are drawn (not blank),
and the sort/filter script of the property table works.

Skipped when Chromium (``chromium`` on PATH, or the binary named by ``CEM_CHROMIUM``) or the Playwright Python
package is absent. With ``CEM_SCREENSHOT_OUT=PATH`` the test also saves a small PNG screenshot of the report there
(cropped to the top of the page and scaled down, under 300 KB).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plugin_inner import TWO_PROPERTY_SUITE, make_suite

pytest_plugins = ["pytester"]

CHROMIUM = os.environ.get("CEM_CHROMIUM") or shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip("Chromium is not installed (no `chromium` on PATH; on Debian: apt-get install chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the Playwright Python package is not installed "
                                                             "(pip install playwright)")

#: Flags of a quiet, self-contained headless run (Playwright adds ``--headless`` itself).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


MAX_SCREENSHOT_BYTES = 300_000


@pytest.fixture
def report(pytester) -> Path:
    make_suite(pytester, TWO_PROPERTY_SUITE)
    pytester.runpytest("--cem-report", "report.html").assert_outcomes(passed=1, failed=1)
    return pytester.path / "report.html"


def open_page(pw, tmp_path: Path, width: int, height: int = 900):
    """A headless Chromium context (its profile under ``tmp_path``) with a ``width`` x ``height`` px window, and a
    page in it; the caller closes the context."""
    context = pw.chromium.launch_persistent_context(
        str(tmp_path / f"chromium-profile-{width}"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        viewport={"width": width, "height": height}, device_scale_factor=1,
    )
    return context, context.new_page()


@pytest.fixture
def page(tmp_path):
    with sync_api.sync_playwright() as pw:
        context, page = open_page(pw, tmp_path, 1280, 800)
        try:
            yield page
        finally:
            context.close()


def visible_rows(page) -> list[list[str]]:
    return page.evaluate(
        """() => Array.from(document.querySelectorAll("#properties tbody tr"))
                 .filter(r => r.style.display !== "none")
                 .map(r => Array.from(r.cells).map(c => c.textContent.trim()))"""
    )


def page_box(page, element) -> tuple[int, int, int, int]:
    """The element's box in page (full-page screenshot) pixels: left, top, right, bottom."""
    b = element.evaluate(
        """e => { const r = e.getBoundingClientRect();
                  return [r.left + window.scrollX, r.top + window.scrollY, r.right + window.scrollX,
                          r.bottom + window.scrollY]; }"""
    )
    return tuple(round(v) for v in b)


def coloured_pixels(img: Image.Image) -> tuple[int, int, int]:
    """Counts of non-white, clearly red and clearly blue pixels of an RGB image."""
    px = np.asarray(img.convert("RGB"), dtype=np.int16)
    r, b = px[..., 0], px[..., 2]
    return int((px.min(axis=-1) < 245).sum()), int((r - b > 40).sum()), int((b - r > 40).sum())


def save_docs_screenshot(shot: Image.Image, bottom: int, out: Path) -> None:
    """The top of the page down to ``bottom`` (below the first map's effect-vs-distance chart), at most 900 px
    wide, as a 256-colour palette PNG."""
    crop = shot.crop((0, 0, shot.width, min(shot.height, bottom)))
    if crop.width > 900:
        crop = crop.resize((900, round(crop.height * 900 / crop.width)), Image.LANCZOS)
    out.parent.mkdir(parents=True, exist_ok=True)
    crop.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(out, optimize=True)
    assert out.stat().st_size < MAX_SCREENSHOT_BYTES


def test_report_renders_in_chromium(report, page):
    console, errors = [], []
    page.on("console", lambda m: console.append((m.type, m.text)))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(report.as_uri())
    page.wait_for_load_state("load")
    page.wait_for_function(
        "() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
    )

    assert page.title() == "pytest-cem report"
    assert errors == []
    assert [m for m in console if m[0] == "error"] == []

    # the effect heatmap of the full map (test_too_wide) is decoded and drawn: non-white, with red/blue (signed
    # effect) cells; test_local ran its support stage only, so it has a support panel and no effect panels
    heatmaps = page.query_selector_all("img.heatmap:not(.support)")
    assert len(heatmaps) == 1
    shot = Image.open(io.BytesIO(page.screenshot(full_page=True, type="png"))).convert("RGB")
    # support panels: the full map's has supported (purple) blocks; the passing gate decided no block alone, so
    # its panel shows the blocks within the radius as undecided (grey)
    colours = {}
    for stage in ("map", "support"):
        (panel,) = page.query_selector_all(f"div.stage-{stage} img.heatmap.support")
        left, top, right, bottom = page_box(page, panel)
        px = np.asarray(shot.crop((left, top, right, bottom)), dtype=np.int16)
        colours[stage] = {
            "purple": int(((abs(px[..., 0] - 84) < 20) & (abs(px[..., 1] - 39) < 20) & (abs(px[..., 2] - 143) < 20)).sum()),
            "grey": int((abs(px - 200) < 8).all(axis=-1).sum()),
        }
    assert colours["map"]["purple"] > 1000 and colours["map"]["grey"] == 0
    assert colours["support"]["purple"] == 0 and colours["support"]["grey"] > 1000
    for h in heatmaps:
        left, top, right, bottom = page_box(page, h)
        assert right - left >= 100 and bottom - top >= 100
        assert 0 <= left and 0 <= top and right <= shot.width and bottom <= shot.height
        non_white, red, blue = coloured_pixels(shot.crop((left, top, right, bottom)))
        area = (right - left) * (bottom - top)
        assert non_white > area // 20, f"heatmap at {(left, top, right, bottom)} is (almost) blank"
        assert red + blue > area // 50, f"heatmap at {(left, top, right, bottom)} has no red/blue cells"

    # the input, output and overlay images are drawn, each with the green ROI box
    for cls, count in (("input", 2), ("output", 2), ("overlay", 1)):
        pictures = page.query_selector_all(f"img.picture.{cls}")
        assert len(pictures) == count, cls
        for img in pictures:
            left, top, right, bottom = page_box(page, img)
            assert right - left >= 100 and bottom - top >= 100
            px = np.asarray(shot.crop((left, top, right, bottom)), dtype=np.int16)
            assert px.std() > 5, f"{cls} image at {(left, top, right, bottom)} is flat"
            green = (px[..., 1] > 200) & (px[..., 0] < 60) & (px[..., 2] < 60)
            assert green.sum() > 20, f"{cls} image at {(left, top, right, bottom)} shows no ROI box"

    # the effect-vs-distance charts: one point per block outside the ROI (8x8 blocks, 2x2 in the ROI)
    charts = page.query_selector_all("svg.profile")
    assert len(charts) == 1
    for chart in charts:
        left, top, right, bottom = page_box(page, chart)
        assert right - left >= 300 and bottom - top >= 200
        assert len(chart.query_selector_all("circle.pt")) == 60
        non_white, red, blue = coloured_pixels(shot.crop((left, top, right, bottom)))
        assert non_white > 500 and red + blue > 0, "the chart is not drawn"

    out = os.environ.get("CEM_SCREENSHOT_OUT")
    if out:
        # down to the first map's chart and uncertainty summary
        bottom = max(page_box(page, page.query_selector(sel))[3] for sel in ("figure.panel-profile", "div.uncertainty"))
        save_docs_screenshot(shot, bottom + 12, Path(out))

    # the table: failures first; sorting by test name, then filtering
    rows = visible_rows(page)
    assert [(r[0], r[1]) for r in rows] == [("failed", "test_suite.py::test_too_wide"),
                                            ("passed", "test_suite.py::test_local")]
    page.click("#properties th[data-col='1']")
    assert page.get_attribute("#properties th[data-col='1']", "data-dir") == "asc"
    assert [r[1] for r in visible_rows(page)] == ["test_suite.py::test_local", "test_suite.py::test_too_wide"]
    page.click("#properties th[data-col='1']")
    assert page.get_attribute("#properties th[data-col='1']", "data-dir") == "desc"
    assert [r[1] for r in visible_rows(page)] == ["test_suite.py::test_too_wide", "test_suite.py::test_local"]

    page.fill("#filter-text", "LOCAL")
    assert [r[1] for r in visible_rows(page)] == ["test_suite.py::test_local"]
    page.fill("#filter-text", "")
    page.select_option("#filter-status", "failed")
    assert [(r[0], r[1]) for r in visible_rows(page)] == [("failed", "test_suite.py::test_too_wide")]
    page.fill("#filter-text", "local")
    assert visible_rows(page) == []

    assert errors == []
    assert [m for m in console if m[0] == "error"] == []


DEMO_REPORT = os.environ.get("CEM_DEMO_REPORT")


@pytest.mark.skipif(not DEMO_REPORT, reason="set CEM_DEMO_REPORT=cem-report.html (written by `make demo`) to check "
                                            "the demo's report; `make screenshot` does")
def test_demo_report_renders_in_chromium(page):
    """The report of `make demo` (real models) renders without errors, every heatmap is drawn, and a failed
    property's section is shown; its first screen shows the first failure's outlined blocks at 1280 and 800 px; with
    CEM_SCREENSHOT_OUT its screenshot (the first screen and the first test with a failed property) is saved for the
    README."""
    path = Path(DEMO_REPORT).resolve()
    assert path.is_file(), f"CEM_DEMO_REPORT={DEMO_REPORT!r} is not a file; run `make demo` first"
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    assert errors == []
    shot = Image.open(io.BytesIO(page.screenshot(full_page=True, type="png"))).convert("RGB")
    heatmaps = page.query_selector_all("img.heatmap:not(.support)")
    assert heatmaps
    for h in heatmaps:
        left, top, right, bottom = page_box(page, h)
        non_white, _, _ = coloured_pixels(shot.crop((left, top, right, bottom)))
        assert non_white > (right - left) * (bottom - top) // 20, "a heatmap is blank"
    # a failed property, or an expected one (a failed property inside an xfailed test)
    failed = page.query_selector("section.test:has(details.prop.failure)")
    assert failed is not None, "the demo report shows no failed property (the strict xfail tests should fail one)"
    # the first screen says what failed, where and why: the first failure's outlined blocks are inside the first
    # viewport, and the page is no wider than the window, at 1280 and 800 px
    for width in (1280, 800):
        page.set_viewport_size({"width": width, "height": 800})
        first = page.query_selector("[data-cem-offending]")
        assert first.evaluate("o => o.closest('#failures .card') !== null")
        box = first.bounding_box()
        assert 0 <= box["y"] and box["y"] + box["height"] < 800, f"first outline at {box} in a {width} px window"
        scroll = page.evaluate("document.documentElement.scrollWidth")
        assert scroll <= width, f"the page is {scroll} px wide in a {width} px window"
    page.set_viewport_size({"width": 1280, "height": 800})
    out = os.environ.get("CEM_SCREENSHOT_OUT")
    if out:
        # the first screen (what failed, where and why), then the section of the first failed property
        top_bottom = max(page_box(page, e)[3] for e in page.query_selector_all("section.first-screen")) + 12
        sec_left, sec_top, sec_right, _ = page_box(page, failed)
        chart = failed.query_selector("figure.panel-profile")
        sec_bottom = page_box(page, chart)[3] + 12 if chart else page_box(page, failed)[3]
        head = shot.crop((0, 0, shot.width, top_bottom))
        section = shot.crop((0, sec_top - 8, shot.width, sec_bottom))
        both = Image.new("RGB", (shot.width, head.height + section.height), "white")
        both.paste(head, (0, 0))
        both.paste(section, (0, head.height))
        save_docs_screenshot(both, both.height, Path(out))
