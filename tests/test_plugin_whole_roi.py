"""A map whose ROI covers every block is an error of that test alone: the session goes on and reports it."""

from __future__ import annotations

import json

from plugin_inner import make_suite

pytest_plugins = ["pytester"]

SUITE = """
    @pytest.mark.cem(**TINY)
    def test_whole_roi(cem):
        cc.assert_receptive_field_within(cem(ConvStack((1, 1)), IMG, roi=(0, 0, 32)), radius=2)

    @pytest.mark.cem(**TINY)
    def test_later(cem):
        cc.assert_receptive_field_within(cem(ConvStack((1, 1)), IMG), radius=2)
"""


def test_a_whole_roi_map_fails_its_test_and_the_session_goes_on(pytester):
    make_suite(pytester, SUITE)
    result = pytester.runpytest("--cem-json", "r.json", "--cem-report", "r.html")
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret == 1  # tests failed; no INTERNALERROR (exit 3)
    result.stdout.fnmatch_lines(["*ROIError: roi (0, 0, 32) covers every block of the 8x8 grid*"])
    tests = {t["nodeid"].split("::")[1]: t for t in json.loads((pytester.path / "r.json").read_text())["tests"]}
    assert tests["test_whole_roi"]["outcome"] == "failed" and tests["test_later"]["outcome"] == "passed"
    assert (pytester.path / "r.html").is_file()
