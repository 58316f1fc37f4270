"""junit-xml: every property outcome is a property of its test case, plus the JSON record of the test."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from plugin_inner import MIXED_SUITE, make_suite

pytest_plugins = ["pytester"]


def test_property_outcomes_are_junit_properties(pytester):
    make_suite(pytester, MIXED_SUITE)
    pytester.runpytest("--junitxml", "junit.xml", "-k", "local or wide").assert_outcomes(passed=1, failed=1)
    cases = {c.get("name"): c for c in ET.parse(pytester.path / "junit.xml").iter("testcase")}
    props = {name: {p.get("name"): p.get("value") for p in c.iter("property")} for name, c in cases.items()}
    assert props["test_local"]["cem:receptive_field_within"] == "passed: support_radius() = 2 px; bound <= 2 px"
    assert props["test_too_wide"]["cem:receptive_field_within"] == "failed: support_radius() = 5 px; bound <= 1 px"
    data = json.loads(props["test_too_wide"]["cem"])
    assert data["maps"][0]["support_radius_px"] == 5 and data["properties"][0]["measured"] == 5
