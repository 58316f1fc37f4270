"""A test whose records cannot be built (e.g. a map summary that raises) fails with the reason, alone: the session
goes on, later tests run and are reported, and the results file is written (no INTERNALERROR)."""

from __future__ import annotations

import json

from plugin_inner import make_suite

pytest_plugins = ["pytester"]

SUITE = """
    import cem_checks.records

    def broken(result, max_image_px=0):
        raise ValueError("cannot summarise this map")

    @pytest.mark.cem(**TINY)
    def test_unrecordable(cem, monkeypatch):
        monkeypatch.setattr(cem_checks.records, "result_summary", broken)  # undone at teardown, after the report
        cc.assert_receptive_field_within(cem(ConvStack((1, 1)), IMG), radius=2)

    @pytest.mark.cem(**TINY)
    def test_unrecordable_and_failing(cem, monkeypatch):
        monkeypatch.setattr(cem_checks.records, "result_summary", broken)
        cc.assert_receptive_field_within(cem(ConvStack((1, 1)), IMG), radius=0)

    @pytest.mark.cem(**TINY)
    def test_later(cem):
        cc.assert_receptive_field_within(cem(ConvStack((1, 1)), IMG), radius=2)

    def test_plain():
        pass
"""


def test_a_failure_to_record_fails_that_test_only(pytester):
    make_suite(pytester, SUITE)
    result = pytester.runpytest("--cem-json", "r.json", "-rf")
    result.stdout.fnmatch_lines(["*- pytest-cem -*", "pytest-cem could not record this test's maps and properties: "
                                                     "ValueError: cannot summarise this map"])
    assert result.ret == 1  # tests failed; not 3 (INTERNALERROR)
    assert "INTERNALERROR" not in result.stdout.str()
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines([
        "FAILED test_suite.py::test_unrecordable - Failed: pytest-cem could not record*",
        "FAILED test_suite.py::test_unrecordable_and_failing - cem_checks.checks.Causa*",
    ])
    doc = json.loads((pytester.path / "r.json").read_text())
    tests = {t["nodeid"].split("::")[1]: t for t in doc["tests"]}
    assert {k: t["outcome"] for k, t in tests.items()} == {
        "test_unrecordable": "failed", "test_unrecordable_and_failing": "failed", "test_later": "passed",
        "test_plain": "passed"}
    assert "could not record this test's maps and properties: ValueError: cannot summarise this map" in \
        tests["test_unrecordable"]["message"]
    # the test's own failure is kept, the recording error added to it
    failing = tests["test_unrecordable_and_failing"]["message"]
    assert "receptive_field_within" in failing and "ValueError: cannot summarise this map" in failing
    # what could be recorded is kept: the property outcomes of the two tests
    assert [p["passed"] for p in tests["test_unrecordable_and_failing"]["properties"]] == [False]
    # the later test ran with its records
    assert [m["stage"] for m in tests["test_later"]["maps"]] == ["support"]
    assert [p["passed"] for p in tests["test_later"]["properties"]] == [True]
