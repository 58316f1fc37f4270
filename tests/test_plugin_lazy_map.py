"""The cem fixture's lazy map: a receptive-field gate records only its support stage (JSON, junit, report), an
effect property the full map; --cem-cache-dir caches the support stage."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from plugin_inner import make_suite

pytest_plugins = ["pytester"]

SUITE = """
    @pytest.mark.cem(**TINY)
    def test_gate(cem):
        cc.assert_receptive_field_within(cem(ConvStack((1, 1)), IMG), radius=2)

    @pytest.mark.cem(**TINY)
    def test_gate_then_effects(cem):
        m = cem(ConvStack((1, 1)), IMG)
        cc.assert_receptive_field_within(m, radius=2)
        cc.check_negative_fraction_at_most(m, 1.0)

    @pytest.mark.cem(**TINY)
    def test_unused(cem):
        cem(ConvStack((1, 1)), IMG)
"""


def _maps(path):
    doc = json.loads(path.read_text())
    return {t["nodeid"].split("::")[1]: t["maps"] for t in doc["tests"]}


def test_each_map_records_the_stages_that_ran(pytester):
    make_suite(pytester, SUITE)
    pytester.runpytest("--cem-json", "r.json", "--cem-report", "r.html", "--junitxml", "j.xml").assert_outcomes(passed=3)
    maps = _maps(pytester.path / "r.json")
    (gate,), (full,) = maps["test_gate"], maps["test_gate_then_effects"]
    assert maps["test_unused"] == []  # a map no assertion consulted ran nothing
    assert gate["stage"] == "support" and full["stage"] == "map"
    assert "effect_db" not in gate and gate["support_radius_px"] == 2 and gate["within_px"] == 2.0
    assert gate["beyond_within"] is False and gate["group_tests"] == 2
    # the traced graph shows that nothing beyond 2 px can reach the ROI, which one group test on the full input
    # confirms; the ring just inside it is tested in the crop of the blocks the graph lets reach the ROI: the
    # validation forward + 6 on a window (determinism, batch independence) + the confirming test's 3 draws + 1
    # image checking the crop + the ring test's 3 draws
    assert gate["forward_passes"] == 1 + 6 + 3 + 1 + 3
    assert full["forward_passes"] > 5 * gate["forward_passes"]
    assert sum(gate["support"], []).count(True) == 0  # no block was tested alone: the gate passed
    assert full["support_radius_px"] == gate["support_radius_px"]
    html = (pytester.path / "r.html").read_text()
    assert html.count('class="map stage-support"') == 1 and html.count('class="map stage-map"') == 1
    junit = ET.parse(pytester.path / "j.xml").getroot()
    stages = {}
    for case in junit.iter("testcase"):
        for prop in case.iter("property"):
            if prop.get("name") == "cem":
                stages[case.get("name")] = [m["stage"] for m in json.loads(prop.get("value"))["maps"]]
    assert stages == {"test_gate": ["support"], "test_gate_then_effects": ["map"]}


def test_the_cache_dir_makes_a_rerun_of_the_gate_cost_only_the_validation(pytester):
    make_suite(pytester, SUITE)
    for name in ("cold.json", "warm.json"):
        pytester.runpytest("--cem-json", name, "--cem-cache-dir", "cache", "-k", "test_gate and not effects",
                           "-p", "no:cacheprovider").assert_outcomes(passed=1)
    cold, warm = _maps(pytester.path / "cold.json")["test_gate"], _maps(pytester.path / "warm.json")["test_gate"]
    assert cold[0]["forward_passes"] == 14 and warm[0]["forward_passes"] == 1
    assert warm[0]["support_radius_px"] == cold[0]["support_radius_px"] == 2
