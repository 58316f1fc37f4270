"""``--cem-shard K/N`` splits the whole session: each test runs on one shard (by a hash of its node id; the others
are deselected), a ``cem_sweep`` test on every shard (each computing its part), and ``cem report merge`` of all the
shards has the unsharded run's counts: tests, outcomes, maps and properties."""

from __future__ import annotations

import json

import pytest

from cem_checks.cli import main as cem_main
from cem_checks.records import outcome_counts
from pytest_cem.sharding import shard_of
from sweep_inner import SWEEP_SUITE, make_sweep_suite

pytest_plugins = ["pytester"]

#: The sweep test of SWEEP_SUITE, 6 plain tests (2 fail) and 2 tests with a map and a property each (one property
#: fails, recorded by check_: its test passes): 9 tests.
SESSION_SUITE = SWEEP_SUITE + """
    @pytest.mark.parametrize("k", range(6))
    def test_plain(k):
        assert k % 3 != 2

    @pytest.mark.cem(**TINY)
    def test_local(cem):
        cc.assert_receptive_field_within(cem(ConvStack((1, 1)), IMG), radius=2)

    @pytest.mark.cem(**TINY)
    def test_wide(cem):
        cc.check_receptive_field_within(cem(ConvStack((1, 1, 1)), IMG), radius=0)
"""
NODEIDS = ["test_suite.py::test_sweep", *(f"test_suite.py::test_plain[{k}]" for k in range(6)),
           "test_suite.py::test_local", "test_suite.py::test_wide"]


def _doc(path) -> dict:
    return json.loads(path.read_text())


def _outcomes(doc: dict) -> dict:
    return {t["nodeid"]: t["outcome"] for t in doc["tests"]}


@pytest.fixture
def runs(pytester):
    """The unsharded run and its two shards' results files."""
    make_sweep_suite(pytester, SESSION_SUITE)
    pytester.runpytest("--cem-json", "full.json").assert_outcomes(passed=7, failed=2)
    shards = []
    for k in range(2):
        result = pytester.runpytest("--cem-shard", f"{k}/2", "--cem-json", f"s{k}.json")
        mine = [n for n in NODEIDS if n.endswith("test_sweep") or shard_of(n, 2) == k]
        outcomes = result.parseoutcomes()
        assert outcomes.get("deselected", 0) == len(NODEIDS) - len(mine)
        assert sorted(_outcomes(_doc(pytester.path / f"s{k}.json"))) == sorted(mine)
        shards.append(pytester.path / f"s{k}.json")
    return pytester.path / "full.json", shards


def test_the_shards_split_the_tests_and_merge_into_the_unsharded_counts(runs, pytester, capsys):
    full, (s0, s1) = runs
    tests0, tests1 = set(_outcomes(_doc(s0))), set(_outcomes(_doc(s1)))
    # every test on one shard, the sweep test on both: the shards add up
    assert tests0 & tests1 == {"test_suite.py::test_sweep"} and tests0 | tests1 == set(NODEIDS)
    assert _doc(s0)["settings"]["shard"] == [0, 2] and _doc(s0)["settings"]["shard_scope"] == "session"
    assert cem_main(["report", "merge", str(s0), str(s1), "-o", str(pytester.path / "merged.json")]) == 0
    assert "2 results files (shards 0, 1 of 2): 9 tests" in capsys.readouterr().out
    merged, whole = _doc(pytester.path / "merged.json"), _doc(full)
    assert merged["summary"] == whole["summary"]  # tests, maps, properties, failed properties, exit status
    assert outcome_counts(merged["tests"]) == outcome_counts(whole["tests"])
    assert _outcomes(merged) == _outcomes(whole)
    assert whole["summary"]["tests"] == 9 and whole["summary"]["failed_properties"] == 2
    props = lambda doc: sorted((t["nodeid"], p["name"], p["passed"]) for t in doc["tests"]  # noqa: E731
                               for p in t["properties"])
    assert props(merged) == props(whole)
    assert merged["shards"] == {"n": 2, "merged": [0, 1], "missing": [], "complete": True}
    assert merged["merge_notes"] == []


def test_a_merge_notes_missing_shards_and_refuses_what_does_not_add_up(runs, pytester, capsys):
    full, (s0, s1) = runs
    out = pytester.path / "m.json"
    # a lone shard: merged into the half it holds, the missing one named
    assert cem_main(["report", str(s0), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert ("cem: note: the results files hold shard 0/2 of 2; shard 1/2 is missing: their tests and sweep items "
            "are not in this report.") in err
    doc = _doc(out)
    assert doc["shards"]["missing"] == [1] and doc["summary"]["tests"] == len(_outcomes(_doc(s0)))
    assert doc["tests"][[t["nodeid"] for t in doc["tests"]].index("test_suite.py::test_sweep")]["sweeps"][0][
        "complete"] is False

    def refused(*files) -> str:
        assert cem_main(["report", "merge", *map(str, files), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cem: error: ") and err.count("\n") == 1
        return err

    other_seed = pytester.path / "seed.json"
    doc = _doc(s1)
    doc["settings"]["seed"] = 3
    other_seed.write_text(json.dumps(doc))
    assert "s0.json and seed.json differ in settings.seed (0 vs 3)" in refused(s0, other_seed)
    other_n = pytester.path / "n3.json"
    doc = _doc(s1)
    doc["settings"]["shard"] = [1, 3]
    other_n.write_text(json.dumps(doc))
    assert "s0.json is shard 0/2 but n3.json is shard 1/3 (settings.shard)" in refused(s0, other_n)
    assert "s0.json is a shard of a pytest --cem-shard run but full.json is not (settings.shard is null)" in \
        refused(s0, full)
    other_split = pytester.path / "by_image.json"
    doc = _doc(s1)
    doc["settings"]["shard_by"] = "image"
    other_split.write_text(json.dumps(doc))
    assert "differ in settings.shard_by ('item' vs 'image')" in refused(s0, other_split)


def test_shards_of_two_plain_callables_of_one_name_do_not_merge_silently(pytester, capsys, monkeypatch):
    # the model of each shard is a different function named `model`: told by its cache_key when there is one
    make_sweep_suite(pytester, """
        import os

        if os.environ["WHICH"] == "a":
            def model(x):
                return x
        else:
            def model(x):
                return x.flip(-1)

        @pytest.mark.cem(task="dn25", seed=1)
        def test_sweep(cem_sweep):
            key = {"cache_key": os.environ["WHICH"]} if os.environ.get("KEYED") else {}
            cem_sweep(model, {"a": IMG[:16, :16].copy()}, rois=[(0, 0, 4), (8, 8, 4)], stage="support", block_size=4,
                      device="cpu", **key)
    """)
    files = []
    for keyed in ("", "1"):
        for k, which in enumerate("ab"):
            monkeypatch.setenv("WHICH", which)
            monkeypatch.setenv("KEYED", keyed)
            pytester.runpytest("--cem-shard", f"{k}/2", "--cem-json", f"{which}{keyed}.json").assert_outcomes(passed=1)
            files.append(str(pytester.path / f"{which}{keyed}.json"))
    out = str(pytester.path / "m.json")
    capsys.readouterr()
    assert cem_main(["report", "merge", *files[:2], "-o", out]) == 0
    assert ("cem: note: test 'test_suite.py::test_sweep', sweep 1: its model 'model' is a plain callable without "
            "cache_key, so the merge cannot check that every shard ran the same model") in capsys.readouterr().err
    assert cem_main(["report", "merge", *files[2:], "-o", out]) == 2
    assert ("test 'test_suite.py::test_sweep', sweep 1: a1.json and b1.json differ in settings.model_id ('key:a' vs "
            "'key:b'), so they are not shards of one sweep") in capsys.readouterr().err
