"""Paths in the records are written relative to the pytest rootdir: a baseline's path in a property's measured
text and message, and the results file named in the failure message, so the report's texts wrap and name the
same files on every machine."""

from __future__ import annotations

import json

from plugin_inner import make_suite

pytest_plugins = ["pytester"]

BASELINE_SUITE = """
    @pytest.mark.cem(**TINY)
    def test_base(cem, cem_baseline):
        cem_baseline(cem(ConvStack((1, 1)), IMG))
"""


def test_baseline_paths_in_records_are_relative_to_the_rootdir(pytester):
    make_suite(pytester, BASELINE_SUITE)
    result = pytester.runpytest("--cem-json", "out/r.json", "--cem-report", "out/r.html")
    result.assert_outcomes(failed=1)  # a missing baseline is created and the test fails saying so
    root = str(pytester.path)
    assert (pytester.path / "cem_baselines" / "test_suite" / "test_base.npz").is_file()
    doc = json.loads((pytester.path / "out" / "r.json").read_text())
    (test,) = doc["tests"]
    (p,) = test["properties"]
    assert p["params"]["baseline"] == "cem_baselines/test_suite/test_base"
    assert p["measured_text"] == ("blocks_beyond_tolerance(atol_db=0.05, use_ci=True, compare_support=True, "
                                  "baseline='cem_baselines/test_suite/test_base') = undefined (NaN)")
    assert "no baseline existed at 'cem_baselines/test_suite/test_base'" in p["message"]
    assert "written to the HTML report out/r.html and out/r.json" in p["message"]
    html = (pytester.path / "out" / "r.html").read_text(encoding="utf-8")
    assert root + "/" not in json.dumps(test) and root + "/" not in html
    # the terminal keeps pytest's own text (absolute paths, clickable in a terminal)
    assert f"{root}/cem_baselines/test_suite/test_base" in result.stdout.str()
