"""Regression baselines: file format, comparison rules, creation and regeneration."""

from __future__ import annotations

import json

import numpy as np
import pytest

import cem_checks as cc
from cem_checks import baseline as B
from cem_checks.checks import CausalPropertyError, collect_outcomes
from cem_checks.errors import BaselineError
from nets import ConvStack

FAST = dict(mode="paper", coarse=2, fine=4, progress=False, device="cpu")


def _map(effect=None, **kwargs) -> cc.CEMResult:
    """4x5 blocks of 2 px, ROI (2, 2, 2) on block (1, 1)."""
    if effect is None:
        effect = np.arange(20, dtype=np.float64).reshape(4, 5) / 10 - 0.5
    kwargs.setdefault("seed", 3)
    return cc.CEMResult.from_effects(effect, roi=(2, 2, 2), block_size=2, mode="paper", **kwargs)


@pytest.fixture()
def base_map() -> cc.CEMResult:
    return _map()


def _shifted(res: cc.CEMResult, where=(3, 4), by=0.2, **kwargs) -> cc.CEMResult:
    e = np.array(res.effect)
    e[where] += by
    return _map(e, **kwargs)


# ------------------------------------------------------------------------------------------- format
def test_save_and_load_round_trip(tmp_path, base_map):
    npz, js = B.save_baseline(base_map, tmp_path / "sub" / "roi_map")
    assert (npz.name, js.name) == ("roi_map.npz", "roi_map.json")
    meta = json.loads(js.read_text())
    assert meta["format"] == "cem-baseline" and meta["format_version"] == B.BASELINE_FORMAT_VERSION == 1
    assert meta["arrays_file"] == "roi_map.npz" and meta["shape"] == [4, 5] and meta["roi"] == [2, 2, 2]
    assert meta["settings"]["seed"] == 3 and meta["summary"]["effect_max_db"] == pytest.approx(1.4)
    assert meta["summary"]["negative_blocks"] == 5
    loaded = B.load_baseline(tmp_path / "sub" / "roi_map.json")  # either suffix, or none
    for name in B.BASELINE_ARRAYS:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(base_map, name))
    assert loaded.roi == base_map.roi and loaded.block_size == 2 and loaded.task == "custom"
    assert loaded.path == str(tmp_path / "sub" / "roi_map")
    assert not loaded.effect.flags.writeable
    rec = json.loads(json.dumps(loaded.to_record(), allow_nan=False))
    assert rec["effect"][0][:2] == [-0.5, -0.4]


def test_metadata_is_deterministic(tmp_path, base_map):
    _, js1 = B.save_baseline(base_map, tmp_path / "a")
    _, js2 = B.save_baseline(B.load_baseline(tmp_path / "a"), tmp_path / "b")
    one, two = js1.read_text(), js2.read_text().replace('"b.npz"', '"a.npz"')
    assert one == two


def test_baseline_paths_accept_either_suffix(tmp_path):
    expected = (tmp_path / "m.v2.npz", tmp_path / "m.v2.json")
    assert B.baseline_paths(tmp_path / "m.v2") == expected
    assert B.baseline_paths(str(tmp_path / "m.v2.npz")) == expected
    with pytest.raises(BaselineError, match="must be a str or os.PathLike"):
        B.baseline_paths(3)


def test_unreadable_baselines_raise_baseline_errors(tmp_path, base_map):
    npz, js = B.save_baseline(base_map, tmp_path / "m")
    meta = json.loads(js.read_text())

    js.write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(BaselineError, match=r"format version 99; this cem_checks reads version 1; regenerate it with regen='all'"):
        B.load_baseline(tmp_path / "m")

    js.write_text("{not json")
    with pytest.raises(BaselineError, match=r"cannot read baseline metadata .* as JSON"):
        B.compare_to_baseline(base_map, tmp_path / "m")

    js.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(BaselineError, match=r"is not a CEM baseline"):
        B.load_baseline(tmp_path / "m")

    B.save_baseline(_shifted(base_map), tmp_path / "other")
    js.write_text(json.dumps(meta))
    npz.write_bytes((tmp_path / "other.npz").read_bytes())  # arrays of another map beside this JSON
    with pytest.raises(BaselineError, match=r"do not match the hash recorded .* not written together"):
        B.load_baseline(tmp_path / "m")

    js.unlink()
    with pytest.raises(BaselineError, match=r"is incomplete: found .*m\.npz.*missing .*m\.json"):
        B.load_baseline(tmp_path / "m")
    assert issubclass(BaselineError, cc.CEMInputError)


# --------------------------------------------------------------------------------------- comparison
def test_missing_baseline_is_created_and_fails(tmp_path, base_map):
    path = tmp_path / "maps" / "new"
    cmp = B.compare_to_baseline(base_map, path)
    assert (cmp.status, cmp.passed) == ("created", False)
    assert (tmp_path / "maps" / "new.npz").is_file() and (tmp_path / "maps" / "new.json").is_file()
    assert "no baseline existed" in cmp.summary and "it was created from this map" in cmp.summary
    again = B.compare_to_baseline(base_map, path)
    assert (again.status, again.passed, again.n_differing, again.max_abs_diff_db) == ("match", True, 0, 0.0)


def test_assert_matches_baseline_says_the_baseline_was_created(tmp_path, base_map):
    with pytest.raises(CausalPropertyError, match=r"(?s)'matches_baseline' FAILED.*no baseline existed at .*new.*"
                       r"created from this map.*review it, commit it and run again.*seed=3 mode=paper"):
        B.assert_matches_baseline(base_map, tmp_path / "new")
    assert B.assert_matches_baseline(base_map, tmp_path / "new").passed


def test_a_drifted_block_is_reported(tmp_path, base_map):
    B.save_baseline(base_map, tmp_path / "m")
    drifted = _shifted(base_map, (3, 4), 0.2)
    cmp = B.compare_to_baseline(drifted, tmp_path / "m")
    assert (cmp.status, cmp.passed, cmp.n_differing, cmp.n_blocks) == ("mismatch", False, 1, 20)
    assert cmp.max_abs_diff_db == pytest.approx(0.2)
    (w,) = cmp.worst
    assert (w.row, w.col, w.effect_db) == (3, 4, pytest.approx(1.6))
    assert "baseline +1.400 dB, difference +0.200 dB > tolerance 0.050 dB" in w.detail
    with pytest.raises(CausalPropertyError, match=r"(?s)blocks_beyond_tolerance\(atol_db=0\.05.*\) = 1\n.*"
                       r"1 of 20 blocks differ beyond the tolerance.*block \(x, y, w, h\) = \(8, 6, 2, 2\) px "
                       r"\[row 3, col 4\] at 5 px: \+1\.600 dB"):
        B.assert_matches_baseline(drifted, tmp_path / "m")
    assert B.compare_to_baseline(drifted, tmp_path / "m", atol_db=0.25).passed
    assert B.compare_to_baseline(_shifted(base_map, (3, 4), 0.04), tmp_path / "m").passed


def test_confidence_intervals_widen_the_tolerance(base_map):
    # stderr 0.05 on both maps: CI half width 1.96 * 0.05 = 0.098 each, tolerance 0.05 + 0.196 = 0.246 dB
    noisy_base = _map(stderr=0.05)
    drifted = _shifted(base_map, (0, 0), 0.2, stderr=0.05)
    assert B.compare_to_baseline(drifted, noisy_base).passed
    assert not B.compare_to_baseline(drifted, noisy_base, use_ci=False).passed
    assert not B.compare_to_baseline(_shifted(base_map, (0, 0), 0.3, stderr=0.05), noisy_base).passed


def test_support_changes_count_unless_disabled(base_map):
    sup = np.array(base_map.support)
    sup[0, 0] = not sup[0, 0]
    changed = _map(support=sup)
    cmp = B.compare_to_baseline(changed, base_map)
    assert (cmp.passed, cmp.n_support_changed, cmp.n_differing) == (False, 1, 0)
    assert "support True in the baseline, False now" in cmp.worst[0].detail
    assert B.compare_to_baseline(changed, base_map, compare_support=False).passed


def test_another_grid_is_incompatible(tmp_path, base_map):
    B.save_baseline(base_map, tmp_path / "m")
    moved = cc.CEMResult.from_effects(base_map.effect, roi=(4, 2, 2), block_size=2, seed=3)
    cmp = B.compare_to_baseline(moved, tmp_path / "m")
    assert (cmp.status, cmp.passed) == ("incompatible", False)
    assert cmp.reasons == ("roi (x, y, size) is (4, 2, 2) now, (2, 2, 2) in the baseline",)
    assert "computed for another grid" in cmp.summary and "regen='mismatch'" in cmp.summary
    small = cc.CEMResult.from_effects(np.zeros((3, 5)), roi=(2, 2, 2), block_size=2)
    assert "grid shape (rows, cols) is (3, 5) now, (4, 5) in the baseline" in B.compare_to_baseline(small, tmp_path / "m").reasons


def test_changed_settings_are_noted(base_map):
    other_seed = _map(seed=4)
    cmp = B.compare_to_baseline(other_seed, base_map)
    assert cmp.passed and cmp.notes == ("seed: 3 in the baseline, 4 now",)
    assert "setting changed: seed: 3 in the baseline, 4 now" in cmp.to_outcome().message()


# ------------------------------------------------------------------------------------- regeneration
def test_regen_mismatch_rewrites_a_differing_baseline_and_fails(tmp_path, base_map):
    B.save_baseline(base_map, tmp_path / "m")
    drifted = _shifted(base_map)
    same = B.compare_to_baseline(base_map, tmp_path / "m", regen="mismatch")
    assert (same.status, same.passed) == ("match", True)
    cmp = B.compare_to_baseline(drifted, tmp_path / "m", regen="mismatch")
    assert (cmp.status, cmp.passed, cmp.n_differing) == ("regenerated", False, 1)
    assert "was regenerated from this map (it differed: 1 of 20 blocks" in cmp.summary
    np.testing.assert_array_equal(B.load_baseline(tmp_path / "m").effect, drifted.effect)
    assert B.compare_to_baseline(drifted, tmp_path / "m").passed


def test_regen_all_rewrites_and_passes(tmp_path, base_map):
    created = B.compare_to_baseline(base_map, tmp_path / "m", regen="all")
    assert (created.status, created.passed) == ("created", True)
    moved = cc.CEMResult.from_effects(base_map.effect, roi=(4, 2, 2), block_size=2)
    cmp = B.compare_to_baseline(moved, tmp_path / "m", regen="all")
    assert (cmp.status, cmp.passed) == ("regenerated", True) and cmp.reasons
    assert B.load_baseline(tmp_path / "m").roi == cc.ROI(4, 2, 2)
    assert B.assert_matches_baseline(moved, tmp_path / "m", regen="all").passed


def test_regen_repairs_an_unreadable_baseline(tmp_path, base_map):
    _, js = B.save_baseline(base_map, tmp_path / "m")
    js.write_text("garbage")
    with pytest.raises(BaselineError):
        B.compare_to_baseline(base_map, tmp_path / "m")
    cmp = B.compare_to_baseline(base_map, tmp_path / "m", regen="mismatch")
    assert (cmp.status, cmp.passed) == ("regenerated", False) and "unreadable" in cmp.reasons[0]
    assert B.compare_to_baseline(base_map, tmp_path / "m").passed


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(regen="force"), r"regen='force' is not one of \(None, 'mismatch', 'all'\)"),
        (dict(atol_db=-0.1), r"atol_db=-0\.1 must lie in \[0, inf\] dB"),
        (dict(atol_db=float("inf")), r"atol_db=inf would accept every map"),
        (dict(use_ci="yes"), r"use_ci='yes' must be True or False"),
    ],
)
def test_bad_arguments_raise(tmp_path, base_map, kwargs, match):
    with pytest.raises(cc.CEMInputError, match=match):
        B.compare_to_baseline(base_map, tmp_path / "m", **kwargs)


def test_regen_needs_a_path(base_map):
    with pytest.raises(BaselineError, match=r"regen='all' needs a baseline path to write to; got a CEMResult"):
        B.compare_to_baseline(base_map, base_map, regen="all")
    with pytest.raises(BaselineError, match=r"baseline=42 of type int is not a baseline"):
        B.compare_to_baseline(base_map, 42)


def test_outcomes_are_collected_and_json_safe(tmp_path, base_map):
    with collect_outcomes() as outs:
        B.check_matches_baseline(base_map, tmp_path / "m")
        B.check_matches_baseline(base_map, tmp_path / "m")
    assert [(o.name, o.passed) for o in outs] == [("matches_baseline", False), ("matches_baseline", True)]
    assert json.loads(json.dumps(outs[0].to_record(), allow_nan=False))["measured"] is None
    rec = json.loads(json.dumps(B.compare_to_baseline(_shifted(base_map), tmp_path / "m").to_record(), allow_nan=False))
    assert rec["status"] == "mismatch" and rec["worst"][0]["row"] == 3


# ------------------------------------------------------------------------------------- real engine
def test_same_seed_maps_match_their_baseline_and_another_model_does_not(tmp_path, natural32):
    kwargs = dict(task=cc.Denoising(15), roi=(8, 8, 8), block_size=8, seed=2, **FAST)
    first = cc.compute_cem(ConvStack((1, 1)), natural32, **kwargs)
    assert B.compare_to_baseline(first, tmp_path / "dn").status == "created"
    again = cc.compute_cem(ConvStack((1, 1)), natural32, **kwargs)
    cmp = B.compare_to_baseline(again, tmp_path / "dn", use_ci=False, atol_db=0.0)
    assert (cmp.status, cmp.max_abs_diff_db) == ("match", 0.0)
    other = cc.compute_cem(ConvStack((1, 1), seed=5), natural32, **kwargs)
    assert not B.compare_to_baseline(other, tmp_path / "dn", use_ci=False).passed


def test_mangled_files_raise_baseline_errors(tmp_path, base_map):
    npz, js = B.save_baseline(base_map, tmp_path / "m")
    meta = json.loads(js.read_text())
    js.write_text(json.dumps({k: v for k, v in meta.items() if k != "roi"}))
    with pytest.raises(BaselineError, match=r"lacks or mangles a field \(KeyError\('roi'\)\)"):
        B.load_baseline(tmp_path / "m")
    js.write_text(json.dumps(meta))
    npz.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(BaselineError, match=r"cannot read the arrays of baseline"):
        B.load_baseline(tmp_path / "m")
