"""cem_baseline file names: one file per test id and name; two tests of a session on one file are an error."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np

from plugin_inner import make_suite
from pytest_cem.fixtures import baseline_name

pytest_plugins = ["pytester"]

#: An inner test module body: a 4x4-block map whose one non-zero block is +1 dB for "model A" and -1 dB otherwise.
COLLIDING_IDS = """
    def a_map(value):
        eff = np.zeros((4, 4))
        eff[0, 0] = value
        return cc.CEMResult.from_effects(eff, roi=(4, 4, 4), block_size=2)

    @pytest.mark.parametrize("label", ["model A", "model/A"])
    def test_collide(cem_baseline, label):
        cem_baseline(a_map(1.0 if label == "model A" else -1.0))
"""


def sha8(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def test_names_that_need_no_sanitising_are_kept_and_others_get_a_hash():
    # the example suite's baselines keep their names
    assert baseline_name("test_plain_sr_map_matches_its_baseline") == "test_plain_sr_map_matches_its_baseline"
    assert baseline_name("roi-b.v2") == "roi-b.v2"
    assert baseline_name("test_collide[model A]") == "test_collide_model_A-" + sha8("test_collide[model A]")
    assert baseline_name("test_collide[model/A]") == "test_collide_model_A-" + sha8("test_collide[model/A]")
    assert sha8("test_collide[model A]") != sha8("test_collide[model/A]")
    assert baseline_name("test_x_") == "test_x_" and baseline_name("..") == ".."


def test_ids_that_sanitise_alike_get_their_own_baselines(pytester):
    make_suite(pytester, COLLIDING_IDS)
    first = pytester.runpytest("-p", "no:cacheprovider")
    first.assert_outcomes(failed=2)
    first.stdout.fnmatch_lines(["*no baseline existed*it was created from this map*"] * 2)
    folder = pytester.path / "cem_baselines" / "test_suite"
    a, b = ("test_collide_model_A-" + sha8(f"test_collide[{label}]") for label in ("model A", "model/A"))
    assert sorted(p.name for p in folder.iterdir()) == sorted([a + ".npz", a + ".json", b + ".npz", b + ".json"])
    # each test compares with its own map (+1 dB and -1 dB: a shared file would fail one of them)
    assert np.load(folder / (a + ".npz"))["effect"][0, 0] == 1.0
    assert np.load(folder / (b + ".npz"))["effect"][0, 0] == -1.0
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
    pytester.runpytest("-p", "no:cacheprovider", "--cem-regen-all").assert_outcomes(passed=2)
    assert np.load(folder / (a + ".npz"))["effect"][0, 0] == 1.0
    assert np.load(folder / (b + ".npz"))["effect"][0, 0] == -1.0


def test_two_tests_on_one_file_is_an_error_naming_both_and_the_fix(pytester):
    # "test_p[1]" becomes "test_p_1-<hash>"; test_p_1 with name=<hash> asks for the same file
    h = sha8("test_p[1]")
    make_suite(pytester, COLLIDING_IDS.split("@pytest")[0] + f"""
    @pytest.mark.parametrize("k", [1])
    def test_p(cem_baseline, k):
        cem_baseline(a_map(1.0))

    def test_p_1(cem_baseline):
        cem_baseline(a_map(-1.0), name={h!r})
    """)
    stem = pytester.path / "cem_baselines" / "test_suite" / f"test_p_1-{h}"
    # first run: test_p creates the file (and fails saying so); then --cem-regen: test_p matches it
    for args, outcomes in (((), dict(failed=2)), (("--cem-regen",), dict(passed=1, failed=1))):
        result = pytester.runpytest("-p", "no:cacheprovider", *args)
        result.assert_outcomes(**outcomes)
        result.stdout.fnmatch_lines([
            f"*BaselineError: cem_baseline: 'test_suite.py::test_p_1' (name={h!r}) and 'test_suite.py::test_p[[]1[]]' "
            f"resolve to the same baseline file {stem}.npz; one would compare against, and --cem-regen overwrite, "
            "the other's map. Give one of the two tests a baseline name of its own, e.g. "
            "cem_baseline(result, name='alt').",
        ])
        # the file keeps test_p's map (+1 dB): test_p_1 (-1 dB) neither compared with it nor overwrote it
        assert np.load(stem.with_name(stem.name + ".npz"))["effect"][0, 0] == 1.0


def test_names_that_differ_in_letter_case_only_are_an_error(pytester):
    make_suite(pytester, COLLIDING_IDS.split("@pytest")[0] + """
    def test_Map(cem_baseline):
        cem_baseline(a_map(1.0))

    def test_map(cem_baseline):
        cem_baseline(a_map(-1.0))
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    folder = pytester.path / "cem_baselines" / "test_suite"
    result.stdout.fnmatch_lines([
        f"*BaselineError: cem_baseline: 'test_suite.py::test_map' and 'test_suite.py::test_Map' resolve to the same "
        f"baseline file {folder / 'test_map'}.npz (test_Map and test_map differ in letter case only, and "
        "case-insensitive file systems hold them as one file)*",
    ])
    assert sorted(p.name for p in folder.iterdir()) == ["test_Map.json", "test_Map.npz"]


def test_a_baseline_under_the_old_sanitised_name_is_not_replaced_silently(pytester):
    make_suite(pytester, COLLIDING_IDS)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(failed=2)
    folder = pytester.path / "cem_baselines" / "test_suite"
    new = "test_collide_model_A-" + sha8("test_collide[model A]")
    # as an earlier pytest-cem named it: the sanitised id alone
    for suffix in (".npz", ".json"):
        shutil.move(folder / (new + suffix), folder / ("test_collide_model_A" + suffix))
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        f"*BaselineError: cem_baseline: 'test_suite.py::test_collide[[]model A[]]' has no baseline at "
        f"{folder / new}.npz, but {folder / 'test_collide_model_A'}.npz exists: the name earlier pytest-cem "
        "versions gave it*If that file is this test's baseline, rename it: "
        f"mv {folder / 'test_collide_model_A'}.npz {folder / new}.npz; mv *; else run pytest --cem-regen*",
    ])
    assert not (folder / (new + ".npz")).exists()  # nothing created from the current map
    for suffix in (".npz", ".json"):
        shutil.move(folder / ("test_collide_model_A" + suffix), folder / (new + suffix))
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
