"""--cem-json: the maps and property outcomes of every test, written once by the controller."""

from __future__ import annotations

import json

from plugin_inner import MIXED_SUITE, make_suite

pytest_plugins = ["pytester"]


def test_json_holds_every_cem_test_with_real_values(pytester):
    make_suite(pytester, MIXED_SUITE)
    result = pytester.runpytest("--cem-json", "out/results.json", "--cem-seed", "2")
    result.assert_outcomes(passed=2, failed=1, skipped=1)
    doc = json.loads((pytester.path / "out" / "results.json").read_text())
    assert (doc["format"], doc["format_version"]) == ("pytest-cem-results", 1)
    assert doc["settings"]["seed"] == 2 and doc["settings"]["sources"]["seed"] == "cli"
    tests = {t["nodeid"].split("::")[1]: t for t in doc["tests"]}
    assert sorted(tests) == ["test_absent_device", "test_local", "test_too_wide"]  # test_plain used no map
    assert [tests[k]["outcome"] for k in sorted(tests)] == ["skipped", "passed", "failed"]
    assert "not available" in tests["test_absent_device"]["message"]
    local, wide = tests["test_local"], tests["test_too_wide"]
    assert [m["support_radius_px"] for m in local["maps"] + wide["maps"]] == [1, 5]
    assert all(m["settings"]["seed"] == 2 and m["grid"] == [8, 8] for m in local["maps"] + wide["maps"])
    (p_local,), (p_wide,) = local["properties"], wide["properties"]
    assert (p_local["name"], p_local["passed"], p_local["measured"], p_local["bound"]) == ("receptive_field_within", True, 1, 2)
    assert (p_wide["passed"], p_wide["measured"], p_wide["bound"]) == (False, 5, 1)
    assert p_wide["measured_text"] == "support_radius() = 5 px" and p_wide["bound_text"] == "<= 1 px"
    assert "out/results.json" in p_wide["map_hint"]  # the failure message says where the results are
    assert doc["summary"] == {"tests": 3, "maps": 2, "properties": 2, "failed_properties": 1, "exitstatus": 1}


def test_no_file_without_the_option(pytester):
    make_suite(pytester, MIXED_SUITE)
    pytester.runpytest("-k", "plain")
    assert not list(pytester.path.rglob("*.json"))
