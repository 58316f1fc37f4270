"""The map panels as pytest-html extras, in headless Chromium: pytest-html's media viewer draws each panel whole
(its aspect ratio kept, nothing cropped), so the offending blocks of row 0 stay visible.

Skipped when pytest-html, Chromium or the Playwright Python package is absent (see tests/test_report_browser.py).
"""

from __future__ import annotations

import pytest

from plugin_inner import MIXED_SUITE, make_suite
from test_report_browser import open_page, sync_api

pytest.importorskip("pytest_html", reason="pytest-html is not installed (pip install pytest-html)")

pytest_plugins = ["pytester"]

#: The shown image and its box in the media viewer of a test's row: natural size, drawn size, name.
VIEWER_JS = """row => {
    const img = row.querySelector(".media-container__viewport img");
    return [img.naturalWidth, img.naturalHeight, img.clientWidth, img.clientHeight,
            row.querySelector(".media__name").textContent];
}"""


def test_the_media_viewer_shows_each_panel_whole(pytester, tmp_path):
    make_suite(pytester, MIXED_SUITE)
    pytester.runpytest("--html", "pytest.html", "--self-contained-html").assert_outcomes(passed=2, failed=1,
                                                                                         skipped=1)
    with sync_api.sync_playwright() as pw:
        context, page = open_page(pw, tmp_path, 1280)
        try:
            page.goto((pytester.path / "pytest.html").as_uri())
            page.wait_for_selector("tbody.results-table-row .media-container__viewport img")
            row = next(r for r in page.query_selector_all("tbody.results-table-row")
                       if "test_too_wide" in r.query_selector(".col-testId, .col-name").text_content())
            seen = {}
            for _ in range(3):  # the effect over the input, the effect per block, the support
                natural_w, natural_h, shown_w, shown_h, name = row.evaluate(VIEWER_JS)
                seen[name] = (natural_w, natural_h, shown_w, shown_h)
                row.query_selector(".media-container__nav--right").click()
            assert set(seen) == {"cem: CEM over the input", "cem: CEM per block", "cem: support"}
            for name, (natural_w, natural_h, shown_w, shown_h) in seen.items():
                # drawn with the image's own aspect ratio: object-fit: cover crops nothing
                assert shown_w > 100 and abs(shown_w / shown_h - natural_w / natural_h) < 0.02, (name, seen[name])
        finally:
            context.close()
