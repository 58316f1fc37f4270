"""--cem-json: every test of the session with its outcome, maps and property outcomes, written once by the
controller."""

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
    # every test of the session, test_plain (no map) too
    assert sorted(tests) == ["test_absent_device", "test_local", "test_plain", "test_too_wide"]
    assert [tests[k]["outcome"] for k in sorted(tests)] == ["skipped", "passed", "passed", "failed"]
    assert tests["test_plain"]["maps"] == tests["test_plain"]["properties"] == []
    assert "not available" in tests["test_absent_device"]["message"]
    local, wide = tests["test_local"], tests["test_too_wide"]
    assert [m["support_radius_px"] for m in local["maps"] + wide["maps"]] == [2, 5]
    assert all(m["settings"]["seed"] == 2 and m["grid"] == [8, 8] for m in local["maps"] + wide["maps"])
    (p_local,), (p_wide,) = local["properties"], wide["properties"]
    assert (p_local["name"], p_local["passed"], p_local["measured"], p_local["bound"]) == ("receptive_field_within", True, 2, 2)
    assert (p_wide["passed"], p_wide["measured"], p_wide["bound"]) == (False, 5, 1)
    assert p_wide["measured_text"] == "support_radius() = 5 px" and p_wide["bound_text"] == "<= 1 px"
    assert "out/results.json" in p_wide["map_hint"]  # the failure message says where the results are
    assert doc["summary"] == {"tests": 4, "maps": 2, "properties": 2, "failed_properties": 1, "exitstatus": 1}


def test_no_file_without_the_option(pytester):
    make_suite(pytester, MIXED_SUITE)
    pytester.runpytest("-k", "plain")
    assert not list(pytester.path.rglob("*.json"))


def test_xfail_outcomes_are_kept_apart_from_skips(pytester):
    make_suite(pytester, """
        @pytest.mark.xfail(strict=True, reason="the 5 px model is claimed to reach 1 px")
        @pytest.mark.cem(**TINY)
        def test_expected_to_fail(cem):
            cc.assert_receptive_field_within(cem(ConvStack((1, 1, 1, 1, 1)), IMG), radius=1)

        @pytest.mark.xfail(reason="not strict")
        @pytest.mark.cem(**TINY)
        def test_unexpectedly_passes(cem):
            cc.assert_receptive_field_within(cem(ConvStack((1, 1)), IMG), radius=2)
    """)
    result = pytester.runpytest("--cem-json", "r.json", "--cem-report", "r.html")
    result.assert_outcomes(xfailed=1, xpassed=1)
    result.stdout.fnmatch_lines(["XFAIL test_suite.py::test_expected_to_fail receptive_field_within: measured "
                                 "support_radius() = 5 px; bound <= 1 px"])
    doc = json.loads((pytester.path / "r.json").read_text())
    tests = {t["nodeid"].split("::")[1]: t for t in doc["tests"]}
    assert tests["test_expected_to_fail"]["outcome"] == "xfailed"
    assert tests["test_expected_to_fail"]["message"].startswith("expected failure (the 5 px model is claimed")
    assert tests["test_expected_to_fail"]["properties"][0]["passed"] is False  # the failure is still recorded
    assert tests["test_unexpectedly_passes"]["outcome"] == "xpassed"
    html = (pytester.path / "r.html").read_text()
    assert "2: 0 passed, 0 failed, 0 skipped, 1 xfailed, 1 xpassed" in html
    assert '<span class="status xfailed">xfailed</span>' in html
