"""``--cem-shard K/N`` beside pytest-split (``--splits N --group K+1``): pytest-split splits the tests, cem only the
items of each ``cem_sweep`` (scope ``sweeps``, the default beside another splitter), whose tests run on every
group; the merge of the groups has the unsharded counts. Both splitting the tests is a usage error."""

from __future__ import annotations

import json

import pytest

from cem_checks.cli import main as cem_main
from sweep_inner import make_sweep_suite
from test_plugin_shard_session import NODEIDS, SESSION_SUITE

pytest.importorskip("pytest_split")
pytest_plugins = ["pytester"]


def _outcomes(path) -> dict:
    return {t["nodeid"]: t["outcome"] for t in json.loads(path.read_text())["tests"]}


def test_pytest_split_splits_the_tests_and_cem_the_sweeps(pytester, capsys):
    make_sweep_suite(pytester, SESSION_SUITE)
    pytester.runpytest("--cem-json", "full.json").assert_outcomes(passed=7, failed=2)
    files = []
    for k in range(2):
        result = pytester.runpytest("--splits", "2", "--group", str(k + 1), "--cem-shard", f"{k}/2",
                                    "--cem-json", f"g{k}.json")
        assert result.ret in (0, 1), result.stdout.str()
        files.append(pytester.path / f"g{k}.json")
    groups = [set(_outcomes(f)) for f in files]
    # the sweep test ran in both groups (pytest-split alone puts it in one); every other test in one group
    assert groups[0] & groups[1] == {"test_suite.py::test_sweep"} and groups[0] | groups[1] == set(NODEIDS)
    assert json.loads(files[0].read_text())["settings"]["shard_scope"] == "sweeps"
    sweeps = [json.loads(f.read_text())["tests"] for f in files]
    parts = [next(t for t in tests if t["nodeid"].endswith("test_sweep"))["sweeps"][0] for tests in sweeps]
    assert [[r["index"] for r in p["items"]] for p in parts] == [[0, 2], [1, 3]]
    out = pytester.path / "merged.json"
    assert cem_main(["report", "merge", *map(str, files), "-o", str(out)]) == 0
    merged, whole = json.loads(out.read_text()), json.loads((pytester.path / "full.json").read_text())
    assert merged["summary"] == whole["summary"] and _outcomes(out) == _outcomes(pytester.path / "full.json")
    (sweep,) = next(t for t in merged["tests"] if t["nodeid"].endswith("test_sweep"))["sweeps"]
    assert sweep["complete"] is True and sweep["n_items"] == 4


def test_deselection_by_k_still_applies_to_the_sweep_tests(pytester):
    make_sweep_suite(pytester, SESSION_SUITE)
    result = pytester.runpytest("--splits", "2", "--group", "1", "--cem-shard", "0/2", "-k", "not sweep",
                                "--cem-json", "g.json")
    assert "test_suite.py::test_sweep" not in _outcomes(pytester.path / "g.json")
    assert result.parseoutcomes().get("deselected", 0) >= 1


def test_both_splitting_the_tests_is_a_usage_error(pytester):
    make_sweep_suite(pytester, SESSION_SUITE)
    result = pytester.runpytest("--splits", "2", "--group", "1", "--cem-shard", "0/2", "--cem-shard-scope", "session")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert ("--cem-shard-scope=session splits the tests, and pytest-split (--splits 2 --group 1) splits them too"
            in result.stderr.str())
    assert "--cem-shard-scope=sweeps" in result.stderr.str()
