"""pytest-xdist: the records travel in the test reports; the controller alone writes the JSON; nothing is lost."""

from __future__ import annotations

import json

import pytest

from plugin_inner import make_suite

pytest_plugins = ["pytester"]

SUITE = """
    @pytest.mark.cem(**TINY)
    @pytest.mark.parametrize("dilations, radius", [((1, 1), 2), ((1, 1), 0), ((1, 1, 1, 1, 1), 5), ((1, 1, 1, 1, 1), 1)])
    def test_reach(cem, dilations, radius):
        cc.assert_receptive_field_within(cem(ConvStack(dilations), IMG), radius=radius)
"""


def _records(doc):
    return {t["nodeid"]: (t["outcome"], [(p["name"], p["passed"], p["measured"]) for p in t["properties"]],
                          [m["support_radius_px"] for m in t["maps"]]) for t in doc["tests"]}


@pytest.mark.slow
def test_two_workers_lose_no_result(pytester):
    pytest.importorskip("xdist")
    make_suite(pytester, SUITE)
    serial = pytester.runpytest("--cem-json", "serial.json")
    serial.assert_outcomes(passed=2, failed=2)
    parallel = pytester.runpytest_subprocess("-n", "2", "--cem-json", "parallel.json", "-p", "no:cacheprovider")
    parallel.assert_outcomes(passed=2, failed=2)
    parallel.stdout.fnmatch_lines(["4 properties checked in 4 tests: 2 passed, 2 failed; 4 maps computed (4 of them the support stage only)"])
    a = json.loads((pytester.path / "serial.json").read_text())
    b = json.loads((pytester.path / "parallel.json").read_text())
    assert len(b["tests"]) == 4 and _records(a) == _records(b)
    assert b["summary"]["failed_properties"] == 2
    assert sorted(p.name for p in pytester.path.glob("*.json")) == ["parallel.json", "serial.json"]
