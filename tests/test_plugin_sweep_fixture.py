"""The cem_sweep fixture: settings precedence as cem (call > marker > CLI > ini > default), the sweep and the
assertions over it recorded in --cem-json (table, aggregates, worst maps; the assertions also as properties), and
junit-xml kept small (scalar summary) unless --cem-junit-maps."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from sweep_inner import SWEEP_SUITE, make_sweep_suite

pytest_plugins = ["pytester"]


@pytest.fixture
def run(pytester):
    make_sweep_suite(pytester)
    result = pytester.runpytest("--cem-json", "r.json", "--cem-seed", "5", "--junitxml", "j.xml",
                                "--cem-report-max-image-px", "16")
    result.assert_outcomes(passed=1)
    return pytester, result, json.loads((pytester.path / "r.json").read_text())


def test_sweep_and_its_assertions_are_recorded(run):
    pytester, result, doc = run
    (test,) = doc["tests"]
    (sweep,) = test["sweeps"]
    # the marker's seed (1) wins over --cem-seed 5; the call's block size is used
    assert sweep["settings"]["seed"] == 1 and sweep["settings"]["block_size"] == 4 and sweep["settings"]["task"] == "dn25"
    assert sweep["shard"] is None and sweep["n_items"] == 4 and sweep["stage"] == "map"
    assert sweep["model"] == "ConvStack" and sweep["counts"]["items"] == 4
    assert [(r["index"], r["image"], r["x"], r["y"], r["size"]) for r in sweep["items"]] == [
        (0, "left", 0, 0, 4), (1, "left", 8, 8, 4), (2, "right", 0, 0, 4), (3, "right", 8, 8, 4)]
    assert sweep["columns"][:6] == ["index", "image", "x", "y", "size", "texture_energy"]
    assert all(r["support_radius_px"] == 2 for r in sweep["items"])  # radius-2 model, exact in pixels
    agg = sweep["aggregates"]
    assert "wall_s" not in agg and "index" not in agg and agg["support_radius_px"]["max"] == 2
    assert agg["negative_fraction_mass"]["n"] == 4
    # the assertions: a passing assert_over and a failing check_over (the test passes: check_* never raises)
    local, hurt = sweep["assertions"]
    assert (local["name"], local["kind"], local["passed"], local["statistic"], local["measured"]) == (
        "local_reach", "sweep", True, "max", 2.0)
    assert local["measured_text"].startswith("max of support_radius_px over 4 items = 2 px (95% CI [2 px, 2 px])")
    assert local["bound_text"] == "<= 2 px"
    assert hurt["name"] == "rarely_hurt" and hurt["passed"] is False and len(hurt["worst_items"]) == 4
    worst = hurt["worst_items"][0]
    assert worst["value"] == max(r["negative_fraction_mass"] for r in sweep["items"])
    # ... listed among the test's properties too, which the summaries count
    assert [p["name"] for p in test["properties"]] == ["local_reach", "rarely_hurt"]
    assert all(p["sweep"] == 0 for p in test["properties"])
    assert doc["summary"]["properties"] == 2 and doc["summary"]["failed_properties"] == 1
    # the maps of the worst items of each assertion (3 each, 4 items in all here), full map summaries with images
    assert 3 <= len(sweep["worst_maps"]) <= 4
    rarely = [w for w in sweep["worst_maps"] if any(r["assertion"] == "rarely_hurt" for r in w["reasons"])]
    assert [(w["image"], w["roi"]) for w in sorted(rarely, key=lambda w: -w["reasons"][-1]["value"])] == [
        (w["image"], w["roi"]) for w in hurt["worst_items"][:3]]
    m = rarely[0]["map"]
    assert m["stage"] == "map" and m["grid"] == [4, 4] and m["images"]["max_px"] == 16
    assert m["settings"]["roi"] == rarely[0]["roi"]
    # the terminal summary names the failed check and counts the sweep
    result.stdout.fnmatch_lines(["FAILED test_suite.py::test_sweep rarely_hurt: measured mean of "
                                 "negative_fraction_mass over 4 items = * (95% CI *); bound <= 0.01 (1.00%)",
                                 "*2 properties checked in 1 test: 1 passed, 1 failed; 0 maps computed; 1 sweep of "
                                 "4 items"])


def test_junit_holds_the_scalar_summary_only(run):
    pytester, _, doc = run
    props = {p.get("name"): p.get("value")
             for p in ET.parse(pytester.path / "j.xml").getroot().iter("property")}
    data = json.loads(props["cem"])
    (sweep,) = data["sweeps"]
    assert "items" not in sweep and "worst_maps" not in sweep
    assert sweep["n_items"] == 4 and sweep["aggregates"] == doc["tests"][0]["sweeps"][0]["aggregates"]
    assert [a["name"] for a in sweep["assertions"]] == ["local_reach", "rarely_hurt"]
    assert sweep["worst_items"] == [w["index"] for w in doc["tests"][0]["sweeps"][0]["worst_maps"]]
    assert len(props["cem"]) < 8000
    assert props["cem:rarely_hurt"].startswith("failed: mean of negative_fraction_mass over 4 items")


def test_junit_maps_writes_the_full_sweep_records(pytester):
    make_sweep_suite(pytester)
    pytester.runpytest("--junitxml", "j.xml", "--cem-junit-maps").assert_outcomes(passed=1)
    props = {p.get("name"): p.get("value") for p in ET.parse(pytester.path / "j.xml").getroot().iter("property")}
    (sweep,) = json.loads(props["cem"])["sweeps"]
    assert len(sweep["items"]) == 4 and sweep["worst_maps"] and sweep["worst_maps"][0]["map"]["effect_db"]


@pytest.mark.parametrize("call, message", [
    ("cem_sweep(ConvStack((1, 1)), IMAGES, roi=(0, 0, 4))", "cem_sweep(...) got roi=(0, 0, 4); a sweep takes rois="),
    ("cem_sweep(ConvStack((1, 1)), IMAGES)", "cem_sweep(...) needs rois: a list of (x, y, size)"),
    ("cem_sweep(ConvStack((1, 1)), IMAGES, rois=ROIS, colour=1)", "cem_sweep(...) got unknown keyword colour; allowed:"),
])
def test_bad_calls_name_the_fix(pytester, call, message):
    make_sweep_suite(pytester, SWEEP_SUITE + f"""
    @pytest.mark.cem(task="dn25")
    def test_bad(cem_sweep):
        {call}
    """)
    result = pytester.runpytest("-k", "test_bad")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*SettingsError: {message}*"])


def test_call_keywords_win_and_support_stage_drops_map_settings(pytester):
    """The call's seed wins over the marker's; with stage="support" the session's mode (a map setting) is not
    passed to compute_support, and the support radius is recorded."""
    make_sweep_suite(pytester, SWEEP_SUITE.replace("def test_sweep", "def _unused") + """
    @pytest.mark.cem(task="dn25", seed=1, mode="paper")
    def test_support(cem_sweep):
        s = cem_sweep(ConvStack((1, 1)), IMAGES, rois=ROIS[:1], seed=3, stage="support", block_size=4, device="cpu")
        assert s.settings["seed"] == 3 and "mode" not in s.settings
        cc.assert_over(s, "support_radius_px", at_most=2, statistic="max")
    """)
    pytester.runpytest("--cem-json", "r.json").assert_outcomes(passed=1)
    (sweep,) = json.loads((pytester.path / "r.json").read_text())["tests"][0]["sweeps"]
    assert sweep["stage"] == "support" and [r["support_radius_px"] for r in sweep["items"]] == [2, 2]
    assert sweep["items"][0]["negative_fraction_mass"] is None
    assert sweep["worst_maps"][0]["map"]["stage"] == "support"


@pytest.mark.slow
def test_sweeps_travel_to_the_xdist_controller(pytester):
    pytest.importorskip("xdist")
    make_sweep_suite(pytester)
    result = pytester.runpytest_subprocess("-n", "2", "--cem-json", "r.json", "--cem-shard", "1/2",
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    (test,) = json.loads((pytester.path / "r.json").read_text())["tests"]
    (sweep,) = test["sweeps"]
    assert sweep["shard"] == [1, 2] and [r["index"] for r in sweep["items"]] == [1, 3]
    assert [a["name"] for a in sweep["assertions"]] == ["local_reach", "rarely_hurt"] and sweep["worst_maps"]


def test_sweep_progress_reaches_the_terminal_past_the_capture(pytester):
    # a subprocess, as a real run: the lines must get past pytest's file-descriptor capture of the test
    make_sweep_suite(pytester)
    pytester.makeconftest(  # a line per finished image (by default at most one every 10 s)
        "import pytest\nimport cem_checks.progress as p\n\n\n@pytest.fixture(autouse=True)\n"
        "def every_line(monkeypatch):\n    monkeypatch.setattr(p, 'LOG_EVERY_S', 0.0)\n")
    out = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider").stdout.str()
    assert "cem sweep: 2/4 items (0 cached)" in out and "cem sweep: 4/4 items (0 cached)" in out, out
    quiet = pytester.runpytest_subprocess("-q", "-p", "no:randomly", "-p", "no:cacheprovider").stdout.str()
    assert "cem sweep:" not in quiet
