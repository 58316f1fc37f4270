"""--cem-shard K/N (ini cem_shard): each CI machine computes shard K of every cem_sweep's items, and `cem report
merge` joins the shards' --cem-json results into the whole sweep: the same per-item table, aggregates and worst
maps as an unsharded run."""

from __future__ import annotations

import json

import pytest

from cem_checks.cli import main as cem_main
from sweep_inner import make_sweep_suite

pytest_plugins = ["pytester"]


@pytest.mark.parametrize("args, ini, message", [
    (["--cem-shard", "2/2"], None, "--cem-shard='2/2' is not a shard (K=2 is not below N=2); expected K/N with N >= 1 "
                                   "and 0 <= K < N"),
    (["--cem-shard", "1"], None, "--cem-shard='1' is not a shard; expected K/N"),
    ([], "cem_shard = 0/0", "ini cem_shard='0/0' is not a shard; expected K/N"),
])
def test_bad_shard_stops_the_run_naming_the_value_and_the_fix(pytester, args, ini, message):
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str() and "e.g. " in result.stderr.str()


def test_shard_is_a_session_option_cli_over_ini(pytester):
    pytester.makeini("[pytest]\ncem_shard = 1/3\ncem_shard_scope = sweeps\n")
    pytester.makepyfile("""
        import pytest

        def test_settings(cem_settings):
            assert cem_settings.shard == (0, 2) and cem_settings.sources["shard"] == "cli"
            assert cem_settings.shard_scope == "sweeps"  # as given: this shard runs every test
    """)
    pytester.runpytest("--cem-shard", "0/2", "--cem-shard-scope", "sweeps").assert_outcomes(passed=1)
    pytester.makepyfile("""
        import pytest

        @pytest.mark.cem(shard=(0, 2))
        def test_marker(cem_settings):
            pass
    """)
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)  # stopped before any fixture ran
    result.stdout.fnmatch_lines(["SettingsError: @pytest.mark.cem got unknown keyword shard; allowed:*"])


def _sweep(path) -> tuple[dict, dict]:
    doc = json.loads(path.read_text())
    (test,) = [t for t in doc["tests"] if t.get("sweeps")]
    (sweep,) = test["sweeps"]
    return test, sweep


def _table(sweep: dict) -> list[dict]:
    """The per-item table without the timings (which differ run to run)."""
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in sweep["items"]]


def test_shards_merge_into_the_unsharded_sweep(pytester, capsys):
    make_sweep_suite(pytester)
    for shard in ("0/2", "1/2"):
        pytester.runpytest("--cem-shard", shard, "--cem-json", f"s{shard[0]}.json").assert_outcomes(passed=1)
    pytester.runpytest("--cem-json", "full.json").assert_outcomes(passed=1)
    _, s0 = _sweep(pytester.path / "s0.json")
    _, s1 = _sweep(pytester.path / "s1.json")
    _, full = _sweep(pytester.path / "full.json")
    # deterministic split by item index: K of N keeps index % N == K
    assert (s0["shard"], [r["index"] for r in s0["items"]]) == ([0, 2], [0, 2])
    assert (s1["shard"], [r["index"] for r in s1["items"]]) == ([1, 2], [1, 3])
    assert s0["settings"]["n_items"] == full["settings"]["n_items"] == 4

    assert cem_main(["report", "merge", str(pytester.path / "s0.json"), str(pytester.path / "s1.json"),
                     "-o", str(pytester.path / "merged.json")]) == 0
    assert cem_main(["report", "merge", str(pytester.path / "s0.json"), str(pytester.path / "s1.json"),
                     "-o", str(pytester.path / "merged.html")]) == 0
    assert ("sweep of test_suite.py::test_sweep merged from 2 of 2 shards: 4 items" in capsys.readouterr().out)
    doc = json.loads((pytester.path / "merged.json").read_text())
    # the sweep test ran on both shards: one entry, as in the unsharded run
    (test,) = doc["tests"]
    assert test["nodeid"] == "test_suite.py::test_sweep" and test["merged_shards"] == [[0, 2], [1, 2]]
    assert doc["shards"] == {"n": 2, "merged": [0, 1], "missing": [], "complete": True}
    (merged,) = test["sweeps"]
    # the same table, aggregates and worst maps as the unsharded run
    assert merged["shard"] is None and merged["merged_shards"] == [[0, 2], [1, 2]] and merged["complete"] is True
    assert merged["merged_sources"] == ["s0.json", "s1.json"]
    assert merged["n_items"] == full["n_items"] == 4 and merged["columns"] == full["columns"]
    assert _table(merged) == _table(full)
    assert merged["aggregates"] == full["aggregates"]
    strip = lambda s: {k: v for k, v in s.items() if k != "execution"}  # noqa: E731
    assert strip(merged["settings"]) == strip(full["settings"])
    assert [(w["index"], [r["assertion"] for r in w["reasons"]]) for w in merged["worst_maps"]] == [
        (w["index"], [r["assertion"] for r in w["reasons"]]) for w in full["worst_maps"]]
    assert [w["map"]["effect_db"] for w in merged["worst_maps"]] == [w["map"]["effect_db"] for w in full["worst_maps"]]
    assert merged["counts"]["items"] == 4 and merged["counts"]["shards"] == 2
    # the assertions recomputed over the whole sweep: the unsharded run's numbers and verdicts
    keys = ("name", "passed", "measured", "ci_low", "ci_high", "values", "n_items", "worst_items", "measured_text")
    assert [{k: a[k] for k in keys} for a in merged["assertions"]] == [{k: a[k] for k in keys} for a in full["assertions"]]
    assert [{k: p[k] for k in keys} for p in test["properties"]] == [
        {k: a[k] for k in keys} for a in full["assertions"]]
    # the assertions made on each shard are kept beside them, each naming its shard and file
    assert [(a["name"], a["shard"], a["source"]) for a in merged["shard_assertions"]] == [
        ("local_reach", [0, 2], "s0.json"), ("rarely_hurt", [0, 2], "s0.json"),
        ("local_reach", [1, 2], "s1.json"), ("rarely_hurt", [1, 2], "s1.json")]
    html = (pytester.path / "merged.html").read_text()
    assert html.count('<div class="sweep ') == 1 and "merged from 2 of 2 shards" in html


def test_one_shard_twice_is_refused(pytester, capsys):
    make_sweep_suite(pytester)
    pytester.runpytest("--cem-shard", "1/2", "--cem-json", "s1.json").assert_outcomes(passed=1)
    (pytester.path / "copy.json").write_text((pytester.path / "s1.json").read_text())
    capsys.readouterr()
    assert cem_main(["report", "merge", str(pytester.path / "s1.json"), str(pytester.path / "copy.json"),
                     "-o", str(pytester.path / "m.json")]) == 2
    assert capsys.readouterr().err == (
        "cem: error: s1.json and copy.json are both shard 1/2 (settings.shard): its tests would count twice; pass "
        "each shard's results file once.\n")
    assert not (pytester.path / "m.json").exists()


def test_a_shard_without_items_skips_and_still_completes_the_merge(pytester):
    # 4 items over 6 shards: shards 4/6 and 5/6 hold none; their tests skip saying why, and their (empty) sweeps
    # are recorded, so the merge of the 6 files is complete and equals the unsharded run
    make_sweep_suite(pytester)
    files = []
    for k in range(6):
        result = pytester.runpytest("--cem-shard", f"{k}/6", "--cem-json", f"s{k}.json", "-rs")
        if k < 4:
            result.assert_outcomes(passed=1)
        else:
            result.assert_outcomes(skipped=1)
            result.stdout.fnmatch_lines([f"*shard {k}/6 of this sweep holds none of its 4 items*"])
        files.append(str(pytester.path / f"s{k}.json"))
    pytester.runpytest("--cem-json", "full.json").assert_outcomes(passed=1)
    assert cem_main(["report", "merge", *files, "-o", str(pytester.path / "merged.json")]) == 0
    doc = json.loads((pytester.path / "merged.json").read_text())
    (merged,) = [s for t in doc["tests"] for s in t.get("sweeps") or []]
    _, full = _sweep(pytester.path / "full.json")
    assert merged["complete"] is True and len(merged["merged_shards"]) == 6
    assert _table(merged) == _table(full) and merged["aggregates"] == full["aggregates"]


def test_shard_by_image_keeps_the_rois_of_an_image_on_one_machine(pytester):
    make_sweep_suite(pytester)
    for k in range(2):
        pytester.runpytest("--cem-shard", f"{k}/2", "--cem-shard-by", "image", "--cem-json", f"s{k}.json"
                           ).assert_outcomes(passed=1)
    parts = [_sweep(pytester.path / f"s{k}.json")[1] for k in range(2)]
    assert [[(r["index"], r["image"]) for r in p["items"]] for p in parts] == [
        [(0, "left"), (1, "left")], [(2, "right"), (3, "right")]]
    assert all(p["settings"]["execution"]["shard_by"] == "image" for p in parts)
    pytester.runpytest("--cem-json", "full.json").assert_outcomes(passed=1)
    assert cem_main(["report", "merge", str(pytester.path / "s0.json"), str(pytester.path / "s1.json"),
                     "-o", str(pytester.path / "merged.json")]) == 0
    (merged,) = [s for t in json.loads((pytester.path / "merged.json").read_text())["tests"] for s in t.get("sweeps") or []]
    _, full = _sweep(pytester.path / "full.json")
    assert merged["complete"] is True and _table(merged) == _table(full) and merged["aggregates"] == full["aggregates"]
    bad = pytester.runpytest("--cem-shard-by", "images")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "--cem-shard-by='images' is not available; expected one of 'item', 'image'" in bad.stderr.str()
