"""--cem-report: the plugin writes the HTML report (controller only), with passing and failing properties."""

from __future__ import annotations

import pytest

from plugin_inner import TWO_PROPERTY_SUITE, make_suite
from test_report_html import decode, parse

pytest_plugins = ["pytester"]



def test_report_lists_both_properties_failure_first(pytester):
    make_suite(pytester, TWO_PROPERTY_SUITE)
    result = pytester.runpytest("--cem-report", "out/report.html")
    result.assert_outcomes(passed=1, failed=1)
    path = pytester.path / "out" / "report.html"
    result.stdout.fnmatch_lines([f"HTML report: {path}"])
    result.stdout.fnmatch_lines([f"*this test's maps and properties are written to the HTML report {path}"])
    html = path.read_text(encoding="utf-8")
    assert not list(pytester.path.rglob("*.tmp"))
    p = parse(html)
    assert [(r[0], r[1], r[2]) for r in p.rows] == [
        ("failed", "test_suite.py::test_too_wide", "receptive_field_within"),
        ("passed", "test_suite.py::test_local", "receptive_field_within"),
    ]
    assert p.rows[0][4:] == ["support_radius() = 5 px", "<= 1 px"]
    heat = [decode(src) for cls, src in p.images if cls == "heatmap"]
    assert len(heat) == 2 and all(h.size == (256, 256) for h in heat)  # 8x8 blocks of 32 px
    assert '<details class="prop passed">' in html  # passing properties collapsed by default


def test_report_all_opens_passing_properties(pytester):
    make_suite(pytester, TWO_PROPERTY_SUITE)
    pytester.runpytest("--cem-report", "r.html", "--cem-report-all", "-k", "local").assert_outcomes(passed=1)
    html = (pytester.path / "r.html").read_text(encoding="utf-8")
    assert '<details class="prop passed" open>' in html and "prop failed" not in html


@pytest.mark.slow
def test_only_the_xdist_controller_writes_the_report(pytester):
    pytest.importorskip("xdist")
    make_suite(pytester, TWO_PROPERTY_SUITE)
    result = pytester.runpytest_subprocess("-n", "2", "--cem-report", "r.html", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([f"HTML report: {pytester.path / 'r.html'}"])
    rows = parse((pytester.path / "r.html").read_text(encoding="utf-8")).rows
    assert [r[0] for r in rows] == ["failed", "passed"]
    assert sorted(p.name for p in pytester.path.iterdir() if p.suffix in (".html", ".tmp")) == ["r.html"]
