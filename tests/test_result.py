"""CEMResult: save/load round trip, tidy frame, JSON record, hand-built maps."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import cem_checks as cc
from nets import ConvStack, PixelShuffleSR


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


# ------------------------------------------------------------------------------------------ images
def _uint8(t):
    return torch.round(t.detach().double().clamp(0, 1) * 255.0).to(torch.uint8)[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("mode", ["fast", "paper"])
def test_the_engine_keeps_the_degraded_input_and_the_baseline_output(natural32, mode):
    model = ConvStack((1, 1))
    res = cc.compute_cem(model, natural32, task="dn25", roi=(8, 8, 8), block_size=4, coarse=2, fine=3, device="cpu",
                         progress=False, mode=mode)
    task = cc.parse_task("dn25")
    degraded = task.degrade(task.crop(cc.load_image(natural32))[None])
    assert res.input_image.dtype == np.uint8 and res.input_image.shape == (32, 32, 3)
    np.testing.assert_array_equal(res.input_image, _uint8(degraded))
    x = torch.from_numpy(np.ascontiguousarray(res.input_image)).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        np.testing.assert_array_equal(res.output_image, _uint8(model(x)))
    assert not res.input_image.flags.writeable and not res.output_image.flags.writeable


def test_super_resolution_images_have_the_input_and_output_shapes(natural32):
    res = cc.compute_cem(PixelShuffleSR(2), natural32, task="sr2", roi=(8, 8, 8), coarse=2, fine=3, device="cpu",
                         progress=False)
    assert res.input_image.shape == res.input_shape + (3,) == (16, 16, 3)
    assert res.output_image.shape == res.output_shape + (3,) == (32, 32, 3)


def test_images_round_trip_and_files_without_them_still_load(result, tmp_path):
    back = cc.CEMResult.load(result.save(tmp_path / "with.npz"))
    for name in ("input_image", "output_image"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
        assert getattr(back, name).dtype == np.uint8
    # a file as earlier versions wrote it: the arrays and the meta entry, no images
    with np.load(tmp_path / "with.npz", allow_pickle=False) as data:
        old = {k: data[k] for k in data.files if k not in ("input_image", "output_image")}
    np.savez_compressed(tmp_path / "old.npz", **old)
    legacy = cc.CEMResult.load(tmp_path / "old.npz")
    assert legacy.input_image is None and legacy.output_image is None
    np.testing.assert_array_equal(legacy.effect, result.effect)
    hand = cc.CEMResult.from_effects(np.zeros((2, 2)), roi=(0, 0, 1), block_size=2)
    assert hand.input_image is None and cc.CEMResult.load(hand.save(tmp_path / "hand.npz")).output_image is None


def test_to_record_leaves_the_pixels_out(result):
    rec = result.to_record()
    assert "input_image" not in rec and "output_image" not in rec and rec["has_images"] is True
    assert len(json.dumps(rec)) < 20_000


def test_images_are_checked():
    eff = np.zeros((2, 2))
    ok = np.zeros((4, 4, 3), np.uint8)
    res = cc.CEMResult.from_effects(eff, roi=(0, 0, 2), block_size=2, input_image=ok, output_image=ok)
    assert res.input_image.shape == (4, 4, 3)
    with pytest.raises(cc.CEMInputError, match=r"uint8 \(height, width, 3\)"):
        cc.CEMResult.from_effects(eff, roi=(0, 0, 2), block_size=2, input_image=ok.astype(float))
    with pytest.raises(cc.CEMInputError, match=r"input_image is 3x4 px .* input_shape is \(4, 4\)"):
        cc.CEMResult.from_effects(eff, roi=(0, 0, 2), block_size=2, input_image=ok[:, :3])
