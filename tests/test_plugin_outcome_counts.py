"""Every test of the session is recorded, with or without maps, and counted as pytest's summary line counts it:
passed / failed / error (a failed setup; a failed teardown adds one) / skipped (also before the test ran) /
xfailed / xpassed. A failed property inside an xfailed test is an expected failure, apart from the failures."""

from __future__ import annotations

import json
import re

from cem_checks.records import outcome_counts
from plugin_inner import OUTCOMES_SUITE, OUTCOMES_SUITE_COUNTS, make_suite

pytest_plugins = ["pytester"]

#: ``RunResult.parseoutcomes()`` key -> the outcome of the results file.
PYTEST_TO_RECORDS = {"passed": "passed", "failed": "failed", "errors": "error", "skipped": "skipped",
                     "xfailed": "xfailed", "xpassed": "xpassed"}


def test_counts_equal_pytests_summary_line(pytester):
    make_suite(pytester, OUTCOMES_SUITE)
    result = pytester.runpytest("--cem-json", "r.json", "--cem-report", "r.html")
    pytest_counts = result.parseoutcomes()
    assert pytest_counts == OUTCOMES_SUITE_COUNTS
    doc = json.loads((pytester.path / "r.json").read_text())
    tests = {t["nodeid"].split("::")[1]: t for t in doc["tests"]}
    assert len(tests) == 14 and doc["summary"]["tests"] == 14  # every test of the file
    assert outcome_counts(doc["tests"]) == {PYTEST_TO_RECORDS[k]: v for k, v in pytest_counts.items()}

    assert {name: t["outcome"] for name, t in tests.items()} == {
        "test_local": "passed", "test_too_wide": "failed", "test_plain": "passed", "test_plain_fails": "failed",
        "test_setup_error": "error", "test_cem_setup_error": "error", "test_teardown_error": "passed",
        "test_skipped_by_marker": "skipped", "test_skipped_at_run_time": "skipped", "test_xfailed": "xfailed",
        "test_xfail_not_run": "xfailed", "test_expected_property_failure": "xfailed", "test_xpassed": "xpassed",
        "test_strict_xpass": "failed",
    }
    assert "fixture boom" in tests["test_setup_error"]["message"]
    assert "teardown boom" in tests["test_teardown_error"]["teardown_error"]
    assert tests["test_skipped_by_marker"]["message"] == "Skipped: never runs"
    assert tests["test_plain"]["maps"] == [] and len(tests["test_too_wide"]["maps"]) == 1

    html = (pytester.path / "r.html").read_text(encoding="utf-8")
    row = re.search(r"<tr><th>tests</th><td>([^<]*)</td></tr>", html).group(1)
    assert row == "14: 3 passed, 3 failed, 3 errors, 2 skipped, 3 xfailed, 1 xpassed"
    # the badge: one failed property (test_too_wide) and one expected failure (inside the xfailed test)
    badges = re.findall(r'<span class="badge (\w+)">([^<]*)</span>', html)
    assert badges == [("failed", "1 failed property"), ("xfailed", "1 expected failure (xfail)"),
                      ("failed", "tests: 3 failed, 3 errors")]
    statuses = re.findall(r'<tr class="property-row (\w+)"', html)
    assert statuses == ["failed", "xfailed", "passed"]
    # the terminal section still counts the tests that use the plugin, and counts the properties as the report does:
    # the failed property of the xfailed test is an expected failure, not a failure
    properties = re.search(r"<tr><th>properties</th><td>3: ([^<]*)</td></tr>", html).group(1)
    assert properties == "1 passed, 1 failed, 1 expected failure (in xfailed tests)"
    result.stdout.fnmatch_lines([
        "XFAIL test_suite.py::test_expected_property_failure receptive_field_within: measured support_radius() = "
        "5 px; bound <= 1 px",
        f"3 properties checked in 4 tests: {properties}; 3 maps computed (2 of them the support stage only)",
    ])


def test_a_collection_error_is_an_error_test(pytester):
    make_suite(pytester, "def test_fine():\n    pass\n")
    pytester.makepyfile(test_broken="import no_such_module_here\n")
    result = pytester.runpytest("--cem-json", "r.json", "--continue-on-collection-errors")
    assert result.parseoutcomes() == {"passed": 1, "errors": 1}
    doc = json.loads((pytester.path / "r.json").read_text())
    assert outcome_counts(doc["tests"])["error"] == 1 and outcome_counts(doc["tests"])["passed"] == 1
    (broken,) = [t for t in doc["tests"] if t["outcome"] == "error"]
    assert broken["nodeid"] == "test_broken.py" and "no_such_module_here" in broken["message"]


def test_the_plugin_and_the_records_know_the_same_outcomes():
    from cem_checks.records import OUTCOMES
    from pytest_cem.session import OUTCOMES as PLUGIN_OUTCOMES

    assert PLUGIN_OUTCOMES == OUTCOMES == tuple(PYTEST_TO_RECORDS.values())
