"""CEMResult: save/load round trip, tidy frame, JSON record, hand-built maps."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import cem_checks as cc
from nets import ConvStack


@pytest.fixture(scope="module")
def result(natural32):
    return cc.compute_cem(ConvStack((1, 1)), natural32, task="dn25", roi=(8, 8, 8), block_size=4, coarse=2, fine=3,
                          device="cpu", progress=False, seed=4)


def test_save_load_round_trip(result, tmp_path):
    path = result.save(tmp_path / "sub" / "map")
    assert path.name == "map.npz"
    back = cc.CEMResult.load(path)
    for name in cc.result.ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
        assert getattr(back, name).dtype == getattr(result, name).dtype
    for name in ("base_psnr", "block_size", "scale", "roi", "task", "seed", "mode", "forward_passes", "device",
                 "input_shape", "output_shape", "task_params", "patch_bank", "model", "tol_db"):
        assert getattr(back, name) == getattr(result, name), name


def test_load_rejects_other_files(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros(2))
    with pytest.raises(cc.CEMInputError, match="not a CEM result file"):
        cc.CEMResult.load(tmp_path / "x.npz")
    with pytest.raises(cc.CEMInputError, match="no CEM result file"):
        cc.CEMResult.load(tmp_path / "missing.npz")


def test_arrays_are_read_only(result):
    with pytest.raises(ValueError):
        result.effect[0, 0] = 1.0


def test_to_frame_is_tidy(result):
    df = result.to_frame()
    assert len(df) == result.rows * result.cols == 64
    expected = {
        "row": "int64", "col": "int64", "top_px": "int64", "left_px": "int64", "distance_px": "int64",
        "in_roi": "bool", "effect_db": "float64", "raw_effect_db": "float64", "stderr_db": "float64",
        "ci_low_db": "float64", "ci_high_db": "float64", "n_samples": "int64", "support": "bool", "flagged": "bool",
    }
    assert {c: str(t) for c, t in df.dtypes.items()} == expected
    row = df[(df.row == 2) & (df.col == 3)].iloc[0]
    assert row.top_px == 8 and row.left_px == 12
    assert row.effect_db == result.effect[2, 3] and row.distance_px == result.distance[2, 3]
    assert df.in_roi.sum() == 4


def test_to_record_is_json_safe(result):
    rec = result.to_record()
    text = json.dumps(rec, allow_nan=False)
    back = json.loads(text)
    assert back["roi"] == [8, 8, 8] and back["task"] == "dn25" and back["format_version"] == 1
    assert np.allclose(np.array(back["effect"], dtype=float), result.effect)
    assert back["stderr"][0][0] is None or isinstance(back["stderr"][0][0], float)


def test_from_effects_derives_geometry():
    eff = np.zeros((4, 4))
    eff[1, 2] = 0.5
    res = cc.CEMResult.from_effects(eff, roi=(8, 8, 4), block_size=4, scale=2)
    assert res.output_shape == (32, 32) and res.input_shape == (16, 16)
    assert res.roi_mask.sum() == 1 and res.roi_mask[1, 1]
    # footprint: input px [4, 6) in both axes; block columns span [0,4) [4,8) [8,12) [12,16)
    np.testing.assert_array_equal(res.distance[1], [1, 0, 3, 7])
    assert res.distance[3, 3] == 7 and res.distance[0, 0] == 1
    assert res.support.sum() == 1 and res.flagged[1, 2]
    with pytest.raises(cc.CEMInputError, match="2-D"):
        cc.CEMResult.from_effects(np.zeros(3), roi=(0, 0, 1), block_size=1)
    with pytest.raises(cc.ROIError):
        cc.CEMResult.from_effects(eff, roi=(30, 0, 4), block_size=4, scale=2)


def test_settings_summary(result):
    s = result.settings()
    assert s["seed"] == 4 and s["mode"] == "fast" and s["device"] == "cpu" and s["roi"] == [8, 8, 8]
    assert isinstance(result.to_frame(), pd.DataFrame)
