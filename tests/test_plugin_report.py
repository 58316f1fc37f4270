"""--cem-report: the plugin writes the HTML report (controller only), with passing and failing properties, and the
size cap of its embedded images (--cem-report-max-image-px)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from cem_checks.errors import SettingsError
from plugin_inner import TWO_PROPERTY_SUITE, make_suite
from pytest_cem.options import (DEFAULT_MAX_IMAGE_PX, OPTIONS, OPTIONS_BY_NAME, Sources, marker_kwargs,
                                resolve_settings)
from pytest_cem.session import summary_image_px
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
    assert len(heat) == 1 and heat[0].size == (256, 256)  # 8x8 blocks of 32 px: test_too_wide's full map
    support = [decode(src) for cls, src in p.images if cls == "heatmap support"]
    assert len(support) == 2 and all(h.size == (256, 256) for h in support)  # a support panel for every map
    assert html.count('class="map stage-support"') == 1 and html.count('class="map stage-map"') == 1
    assert "Only the support stage ran" in html
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


# ------------------------------------------------------------------------------------------ --cem-report-max-image-px
def _sources(cli=None, ini=None, tmp=Path(".")):
    names = [o.name for o in OPTIONS]
    return Sources(cli={n: None for n in names} | (cli or {}), ini={n: None for n in names} | (ini or {}),
                   cli_dir=tmp, ini_dir=tmp, root_dir=tmp)


@pytest.mark.parametrize("cli, ini, expected, source", [
    (None, None, 384, "default"),
    (None, "100", 100, "ini"),
    ("0", "100", 0, "cli"),
    ("48", None, 48, "cli"),
])
def test_max_image_px_precedence_cli_over_ini_over_default(cli, ini, expected, source):
    s = resolve_settings(_sources({"report_max_image_px": cli}, {"report_max_image_px": ini}))
    assert s.report_max_image_px == expected and s.sources["report_max_image_px"] == source
    from cem_checks.reporting.images import DEFAULT_MAX_IMAGE_PX as library_default

    assert DEFAULT_MAX_IMAGE_PX == library_default == 384 == OPTIONS_BY_NAME["report_max_image_px"].default


@pytest.mark.parametrize("cli, ini, message", [
    ("-1", None, "--cem-report-max-image-px='-1' is not a size in pixels; expected an integer >= 0"),
    ("big", None, "--cem-report-max-image-px='big' is not a size in pixels"),
    (None, "3.5", "ini cem_report_max_image_px='3.5' is not a size in pixels"),
])
def test_bad_max_image_px_names_the_value_and_the_fix(cli, ini, message):
    with pytest.raises(SettingsError) as err:
        resolve_settings(_sources({"report_max_image_px": cli}, {"report_max_image_px": ini}))
    assert message in str(err.value) and "0 embeds none" in str(err.value) and "e.g." in str(err.value)


def test_max_image_px_is_a_session_option_not_a_marker_keyword():
    assert not OPTIONS_BY_NAME["report_max_image_px"].engine
    with pytest.raises(SettingsError, match="unknown keyword report_max_image_px"):
        marker_kwargs([pytest.mark.cem(report_max_image_px=10).mark])


def test_images_are_embedded_only_when_a_report_or_json_is_written():
    base = resolve_settings(_sources({"report_max_image_px": "50"}))
    assert summary_image_px(base) == 0
    assert summary_image_px(replace(base, report="r.html")) == 50
    assert summary_image_px(replace(base, json="r.json")) == 50


def test_the_ini_cap_reaches_the_report_and_the_json(pytester):
    make_suite(pytester, TWO_PROPERTY_SUITE)
    pytester.makeini("[pytest]\ncem_report_max_image_px = 16\n")
    pytester.runpytest("--cem-report", "r.html", "--cem-json", "r.json").assert_outcomes(passed=1, failed=1)
    doc = json.loads((pytester.path / "r.json").read_text())
    assert doc["settings"]["report_max_image_px"] == 16 and doc["settings"]["sources"]["report_max_image_px"] == "ini"
    for t in doc["tests"]:
        (m,) = t["maps"]
        assert m["images"]["max_px"] == 16
        for key in ("input", "output"):
            rec = m["images"][key]
            img = decode("data:image/png;base64," + rec["png"])
            assert img.size == (rec["width"], rec["height"]) == (16, 16)  # 32x32 image, cap 16
            assert rec["roi_box"] == [4, 4, 8, 8]  # ROI (8, 8, 8) halved
    p = parse((pytester.path / "r.html").read_text(encoding="utf-8"))
    pictures = [cls for cls, _ in p.images if cls and cls.startswith("picture")]
    # the full map (test_too_wide) has the overlay of its effects; the support stage alone (test_local) has none
    assert sorted(pictures) == sorted(["picture input", "picture output"] * 2 + ["picture overlay"])


def test_a_bad_cap_stops_the_run(pytester):
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--cem-report-max-image-px", "-5")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--cem-report-max-image-px='-5' is not a size in pixels" in result.stderr.str()
