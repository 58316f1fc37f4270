"""Sweeps (cem_checks.sweeps): ROI helpers and texture classes, identity with separate maps, the frame's columns,
images and ROIs in every accepted form, save/load, and the errors for bad images, ROIs, shards and arguments."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch
from nets import ConvStack, PixelShuffleSR
from PIL import Image

import cem_checks as cc
from cem_checks.sweeps import COLUMNS

QUICK = dict(progress=False, device="cpu")
MAP = dict(block_size=8, mode="paper", coarse=2, fine=2, seed=5, **QUICK)


def _noise(seed: int, h: int = 32, w: int = 32) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).round().astype(np.uint8)


def _flat_and_checkerboard() -> np.ndarray:
    """32x32: columns 0-15 flat gray (128), columns 16-31 a 1-px black and white checkerboard."""
    img = np.full((32, 32, 3), 128, np.uint8)
    yy, xx = np.mgrid[0:32, 16:32]
    img[:, 16:] = (((yy + xx) % 2) * 255).astype(np.uint8)[..., None]
    return img


class Refuse(torch.nn.Module):
    """Fails when called: the errors below are raised before any forward pass."""

    def forward(self, x):
        raise AssertionError("the model was called")


# ------------------------------------------------------------------------------------- ROI helpers
def test_roi_grid_lists_every_roi_row_major():
    assert cc.roi_grid((32, 32), 16) == [(0, 0, 16), (16, 0, 16), (0, 16, 16), (16, 16, 16)]
    assert cc.roi_grid((20, 30), 10, 8) == [(0, 0, 10), (8, 0, 10), (16, 0, 10), (0, 8, 10), (8, 8, 10), (16, 8, 10)]
    assert cc.roi_grid((8, 8), 8) == [(0, 0, 8)]
    assert len(cc.roi_grid((32, 32), 1)) == 32 * 32


@pytest.mark.parametrize("args, error, match", [
    (((32, 32), 40), cc.ROIError, "size=40 px does not fit in the 32x32"),
    (((3, 32, 32), 8), cc.ROIError, r"is not an \(H, W\) pair .* image.shape\[-2:\]"),
    (((32, 32), 0), cc.CEMInputError, "size=0 must be an integer >= 1"),
    (((32, 32), 8, 0), cc.CEMInputError, "step=0 must be an integer >= 1"),
])
def test_roi_grid_errors(args, error, match):
    with pytest.raises(error, match=match):
        cc.roi_grid(*args)


def test_texture_energy_is_zero_on_flat_and_two_on_a_one_pixel_checkerboard():
    img = _flat_and_checkerboard()
    assert cc.texture_energy(img, (0, 0, 16)) == 0.0
    assert cc.texture_energy(img, (16, 8, 8)) == pytest.approx(2.0)
    assert cc.texture_energy(img, (16, 8, 1)) == 0.0  # one pixel: no pair of neighbours
    # by hand on a 2x2 ROI: luma [[0, 1], [1, 1]] -> dx^2 mean (1 + 0) / 2, dy^2 mean (1 + 0) / 2
    tiny = np.array([[[0, 0, 0], [255, 255, 255]], [[255, 255, 255], [255, 255, 255]]], np.uint8)
    assert cc.texture_energy(tiny, (0, 0, 2)) == pytest.approx(1.0)
    assert cc.texture_energy(torch.from_numpy(tiny).permute(2, 0, 1), (0, 0, 2)) == pytest.approx(1.0)
    with pytest.raises(cc.ROIError, match=r"roi \(x=28, y=0, size=8\) reaches column 36 .* outside the 32x32"):
        cc.texture_energy(img, (28, 0, 8))


def test_roi_sample_texture_classes_on_a_flat_and_textured_image():
    img = _flat_and_checkerboard()
    flat = cc.roi_sample(img, 4, 8, seed=1, texture="flat")
    textured = cc.roi_sample(img, 4, 8, seed=1, texture="textured")
    assert len(flat) == len(set(flat)) == 4 and len(textured) == len(set(textured)) == 4
    assert all(x + 8 <= 16 for x, _, _ in flat) and all(cc.texture_energy(img, r) == 0.0 for r in flat)
    assert all(x >= 16 for x, _, _ in textured)
    assert all(cc.texture_energy(img, r) == pytest.approx(2.0) for r in textured)
    grid = cc.roi_grid((32, 32), 8, 4)  # the default step is size // 2
    assert set(flat) <= set(grid) and set(textured) <= set(grid)
    assert flat == sorted(flat, key=lambda r: (r[1], r[0]))  # grid order


def test_roi_sample_is_exact_and_reproducible():
    img = _noise(0)
    assert cc.roi_sample(img, 9, 16, texture="any", step=8) == cc.roi_grid((32, 32), 16, 8)  # every ROI of the pool
    a = cc.roi_sample(img, 5, 8, seed=3)
    assert a == cc.roi_sample(img, 5, 8, seed=3)
    assert a != cc.roi_sample(img, 5, 8, seed=4)
    # the pool of a class is ceil(49 / 3) = 17 ROIs: all of them, and no more
    assert len(cc.roi_sample(img, 17, 8, texture="flat")) == 17
    with pytest.raises(cc.ROIError, match="asks for n=18 ROIs but the 32x32 image has only 17 'flat' grid ROIs"):
        cc.roi_sample(img, 18, 8, texture="flat")


def test_roi_sample_aligns_to_the_scale():
    rois = cc.roi_sample(_noise(0), 6, 8, scale=4, step=6)  # step rounded down to 4
    assert all(x % 4 == 0 and y % 4 == 0 for x, y, _ in rois)
    with pytest.raises(cc.ROIError, match="size=6 px is not a multiple of scale=4.*use size=4"):
        cc.roi_sample(_noise(0), 2, 6, scale=4)
    with pytest.raises(cc.CEMInputError, match="texture='smooth' is not one of 'any', 'flat', 'textured'"):
        cc.roi_sample(_noise(0), 2, 8, texture="smooth")


# ---------------------------------------------------------------------------------- the sweep itself
def test_cem_checks_sweep_is_the_function_of_the_sweeps_module():
    import cem_checks.sweeps as module

    assert cc.sweep is module.sweep and cc.sweeps is module
    assert "rois" in inspect.signature(cc.sweep).parameters
    assert {"Sweep", "SweepItem", "OverOutcome", "check_over", "roi_grid"} <= set(cc.__all__)


@pytest.mark.slow
def test_a_sweep_equals_separate_maps_item_by_item():
    model = ConvStack((1, 1))
    images = {"first": _noise(1), "second": _noise(2)}
    rois = [(0, 0, 8), (16, 8, 8), (8, 24, 8)]
    s = cc.sweep(model, images, task="dn25", rois=rois, **{**MAP, "seed": 7})
    assert [(i.index, i.image, i.roi) for i in s.items] == [
        (k, name, roi) for k, (name, roi) in enumerate((n, r) for n in images for r in rois)]
    for item, res in zip(s.items, s.results):
        alone = cc.compute_cem(model, images[item.image], task="dn25", roi=item.roi, **{**MAP, "seed": 7})
        for name in ("effect", "raw_effect", "stderr", "n_samples", "samples_db", "support", "flagged", "distance"):
            np.testing.assert_array_equal(getattr(res, name), getattr(alone, name), err_msg=f"{item}: {name}")
        assert res.base_psnr == alone.base_psnr and res.forward_passes == alone.forward_passes
        assert res.meta["sweep_item"]["index"] == item.index
    assert s.counts["items"] == s.counts["items_computed"] == 6 and s.counts["items_cached"] == 0
    # paper mode: the ROIs of an image read their maps from shared forwards; each item counts what it read
    read = sum(r.forward_passes for r in s.results)
    assert s.counts["forward_passes"] + s.counts["forward_passes_saved"] == read
    assert s.counts["forward_passes"] == sum(s.results[k].meta["shared"]["image_forward_passes"] for k in (0, 3))
    assert s.counts["forward_passes_saved"] > read / 3
    assert s.settings["seed"] == 7 and s.settings["mode"] == "paper" and s.settings["n_items"] == 6
    assert s.settings["tol_db"] == 0.01 and s.settings["batch_size"] == "auto"  # compute_cem's defaults too
    json.dumps(s.settings, allow_nan=False)


def test_the_frame_on_a_hand_checkable_sweep():
    # 4x4 blocks of 4 px, ROI = block (0, 0); +1 dB at 1 px, +1 dB at 5 px, -2 dB at 9 px
    effect = np.zeros((4, 4))
    effect[0, 1], effect[0, 2], effect[3, 3] = 1.0, 1.0, -2.0
    r = cc.CEMResult.from_effects(effect, roi=(0, 0, 4), block_size=4, base_psnr=30.0, forward_passes=17, wall_s=0.5)
    assert (r.distance[0, 1], r.distance[0, 2], r.distance[3, 3]) == (1, 5, 9)
    s = cc.Sweep([cc.SweepItem(0, "img", (0, 0, 4), 0.25)], [r], "map", {"context_radius_px": 4})
    row = s.frame.iloc[0].to_dict()
    assert list(s.frame.columns) == list(COLUMNS)
    # support radius 9 to 12 px per block (the frame gives the upper end); 0.9 of the positive mass lies within 5 px; |1| + |-2| of 4 dB lies beyond 4 px
    expected = {"index": 0, "x": 0, "y": 0, "size": 4, "texture_energy": 0.25, "support_radius_px": 12.0,
                "effective_radius_px": 5.0, "positive_fraction_count": 2 / 15, "positive_fraction_mass": 0.5,
                "negative_fraction_count": 1 / 15, "negative_fraction_mass": 0.5, "context_share_beyond": 0.75,
                "base_psnr_db": 30.0, "forward_passes": 17, "wall_s": 0.5}
    assert row["image"] == "img"
    assert {k: row[k] for k in expected} == pytest.approx(expected)
    no_context = cc.Sweep(s.items, s.results, "map", {}).frame
    assert np.isnan(no_context["context_share_beyond"][0])  # no context_radius: NaN


def test_the_frame_of_a_real_sweep_agrees_with_the_metrics():
    s = cc.sweep(ConvStack((1, 1)), [_noise(3)], task="dn25", rois=[(0, 0, 8), (16, 16, 8)], context_radius=3, **MAP)
    f = s.frame
    assert list(f["image"]) == ["image0", "image0"] and f["index"].tolist() == [0, 1]
    for k, r in enumerate(s.results):
        assert f["effective_radius_px"][k] == cc.effective_radius(r, mass=0.9, sign="positive")
        assert f["support_radius_px"][k] == cc.support_radius(r)
        assert f["negative_fraction_mass"][k] == cc.negative_fraction(r, by="mass")
        assert f["context_share_beyond"][k] == cc.context_share(r, beyond=3)
        assert f["base_psnr_db"][k] == r.base_psnr and f["forward_passes"][k] == r.forward_passes
        assert f["texture_energy"][k] == pytest.approx(cc.texture_energy(_noise(3), s.items[k].roi))


def test_the_support_stage_alone():
    model = ConvStack((1, 1))
    s = cc.sweep(model, [_noise(4)], task="dn25", rois=[(8, 8, 8)], stage="support", block_size=8, **QUICK)
    alone = cc.compute_support(model, _noise(4), task="dn25", roi=(8, 8, 8), block_size=8, **QUICK)
    assert isinstance(s.results[0], cc.SupportResult)
    np.testing.assert_array_equal(s.results[0].support, alone.support)
    f = s.frame
    assert f["support_radius_px"][0] == alone.radius_px == 2  # radius 2 px, exact in pixels
    assert f[["effective_radius_px", "positive_fraction_count", "context_share_beyond"]].isna().all().all()
    within = cc.sweep(model, [_noise(4)], task="dn25", rois=[(8, 8, 8)], stage="support", block_size=8, within=4,
                      **QUICK)
    assert within.results[0].beyond_within is False and np.isnan(within.frame["support_radius_px"][0])


def test_images_as_a_folder_paths_a_dict_or_arrays(tmp_path):
    a, b = _noise(5), _noise(6)
    Image.fromarray(b).save(tmp_path / "b.png")
    Image.fromarray(a).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    kw = dict(task="dn25", rois=[(8, 8, 8)], stage="support", block_size=8, within=0, **QUICK)
    folder = cc.sweep(ConvStack((1,)), tmp_path, **kw)
    assert [i.image for i in folder.items] == ["a", "b"]  # sorted by file name
    paths = cc.sweep(ConvStack((1,)), [tmp_path / "b.png", str(tmp_path / "a.png")], **kw)
    assert [i.image for i in paths.items] == ["b", "a"]
    named = cc.sweep(ConvStack((1,)), {"x": a, "y": torch.from_numpy(b).permute(2, 0, 1)}, **kw)
    assert [i.image for i in named.items] == ["x", "y"]
    arrays = cc.sweep(ConvStack((1,)), [a, b], **kw)
    assert [i.image for i in arrays.items] == ["image0", "image1"]
    hashes = lambda s: [r.meta["sweep_item"]["image_sha256"] for r in s.results]  # noqa: E731
    assert hashes(folder) == hashes(arrays) == hashes(named) == hashes(paths)[::-1]
    assert [r.base_psnr for r in folder.results] == [r.base_psnr for r in arrays.results]


def test_rois_from_a_callable_get_the_clean_image():
    seen = []

    def rois(img):
        seen.append(tuple(img.shape))
        assert img.dtype == torch.float32 and 0.0 <= float(img.min()) and float(img.max()) <= 1.0
        return cc.roi_sample(img, 2, 8, seed=0, texture="textured")

    s = cc.sweep(ConvStack((1,)), {"cb": _flat_and_checkerboard(), "n": _noise(7)}, task="dn25", rois=rois,
                 stage="support", block_size=8, within=0, **QUICK)
    assert seen == [(3, 32, 32), (3, 32, 32)]
    cb = [i for i in s.items if i.image == "cb"]
    assert len(s.items) == 4 and all(i.roi[0] >= 16 and i.texture_energy == pytest.approx(2.0) for i in cb)


def test_save_and_load_round_trip(tmp_path):
    s = cc.sweep(ConvStack((1,)), [_noise(8)], task="dn25", rois=[(0, 0, 8), (16, 8, 8)], shard=(1, 2), **MAP)
    assert [i.index for i in s.items] == [1] and s.shard == (1, 2)
    folder = s.save(tmp_path / "sweep")
    assert sorted(p.name for p in folder.iterdir()) == ["item-1.npz", "sweep.json"]
    back = cc.Sweep.load(folder)
    assert back.shard == (1, 2) and back.stage == "map" and back.settings == s.settings and back.counts == s.counts
    assert back.items == s.items
    np.testing.assert_array_equal(back.results[0].effect, s.results[0].effect)
    assert back.frame.equals(s.frame)
    assert cc.Sweep.load(folder / "sweep.json").items == s.items
    json.dumps(back.to_record(), allow_nan=False)
    with pytest.raises(cc.CEMInputError, match="no sweep at .* pass a folder written by Sweep.save"):
        cc.Sweep.load(tmp_path / "nothing")


# -------------------------------------------------------------------------------------------- errors
GOOD = dict(task="dn25", rois=[(0, 0, 8)], block_size=8, **QUICK)


@pytest.mark.parametrize("images, error, match", [
    ([], cc.ImageError, "images is empty; a sweep needs at least one image"),
    ({}, cc.ImageError, "images is empty"),
    (np.zeros((2, 32, 32, 3), np.uint8), cc.ImageError, r"is a single array; pass a list of images \(\[image\]\)"),
    ("/no/such/folder", cc.ImageError, "'/no/such/folder' is neither an image file nor a folder"),
    ([_noise(0), np.zeros((0, 4, 3), np.uint8)], cc.ImageError, "image 'image1': image .* is empty"),
    ({"a": _noise(0), "b": "/no/such.png"}, cc.ImageError, "image 'b': image path '/no/such.png' does not exist"),
    (["/x/a.png", "/y/a.png"], cc.CEMInputError, "both named 'a' .* pass a dict name -> image"),
    ({1: _noise(0)}, cc.CEMInputError, "the key 1; the keys of an images dict name the images"),
    ([np.zeros((4, 4, 3), np.uint8)], cc.ImageError, "image 'image0' \\(4x4 px\\) is smaller than one block of 8"),
])
def test_bad_images(images, error, match):
    with pytest.raises(error, match=match):
        cc.sweep(Refuse(), images, **GOOD)


def test_an_empty_folder(tmp_path):
    with pytest.raises(cc.ImageError, match="holds no image file"):
        cc.sweep(Refuse(), tmp_path, **GOOD)


@pytest.mark.parametrize("rois, match", [
    ([(0, 0, 8), (28, 0, 8)], r"rois\[1\] for image 'image0' \(32x32 px\): roi \(x=28, y=0, size=8\) reaches column 36"),
    ([], r"rois=\[\] is empty; give at least one"),
    ((0, 0, 8), r"rois\[0\] for image 'image0' .* roi 0 is not understood; expected \(x, y, size\)"),
    (8, "rois is 8; expected a list of \\(x, y, size\\) ROIs"),
    (lambda img: None, r"rois\('image0'\) is None; expected a list"),
    (lambda img: [], "the rois callable returned no ROI for any of the 1 images"),
    ([(0, 0, 8.0)], "roi size=8.0 must be an integer number of output pixels"),
])
def test_bad_rois(rois, match):
    with pytest.raises(cc.ROIError, match=match):
        cc.sweep(Refuse(), [_noise(0)], **{**GOOD, "rois": rois})


def test_roi_errors_name_the_trimming_and_the_scale():
    with pytest.raises(cc.ROIError, match=r"for image 'image0' \(32x32 px, trimmed from 36x36 so that whole 8-px blocks tile the input\): roi "
                                         r"\(x=0, y=28, size=8\) reaches column 8 and row 36"):
        cc.sweep(Refuse(), [_noise(0, 36, 36)], **{**GOOD, "rois": [(0, 28, 8)]})
    with pytest.raises(cc.ROIError, match=r"not aligned with the x2 scale.*e.g. use roi=\(2, 2, 8\)"):
        cc.sweep(PixelShuffleSR(2), {"sr": _noise(0)}, task="sr2", rois=[(3, 3, 8)], block_size=4, **QUICK)


@pytest.mark.parametrize("shard", [(2, 2), (0, 0), (-1, 2), (0, 2, 1), "0/2", (True, 2), (0.0, 2)])
def test_bad_shards(shard):
    with pytest.raises(cc.CEMInputError, match=r"shard=.* is not a \(K, N\) pair of integers with 0 <= K < N; e.g. "
                                               r"shard=\(0, 2\)"):
        cc.sweep(Refuse(), [_noise(0)], shard=shard, **GOOD)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(stage="maps"), cc.CEMInputError, "stage='maps' is not one of 'map', 'support'"),
    (dict(coarse_draws=3), cc.CEMInputError, "unknown keyword argument coarse_draws; it passes these to compute_cem"),
    (dict(within=4), cc.CEMInputError, r"within belongs to compute_support: stage='support'"),
    (dict(stage="support", mode="paper"), cc.CEMInputError, "mode belongs to compute_cem: stage='map'"),
    (dict(mode="exact"), cc.CEMInputError, "mode='exact' is not available"),
    (dict(seed=-1), cc.CEMInputError, "seed=-1 must be an integer >= 0"),
    (dict(task="dn"), cc.CEMInputError, "task 'dn' is not a known task name"),
    (dict(context_radius=-1), cc.CEMInputError, "context_radius=-1 must lie in"),
    (dict(workers=0), cc.CEMInputError, "workers=0 must be an integer >= 1"),
    (dict(executor=object()), cc.CEMInputError, "has no submit\\(\\); pass a concurrent.futures.Executor"),
    (dict(workers=2, executor=object()), cc.CEMInputError, "pass one or the other"),
    (dict(devices=["cpu"], device="cpu"), cc.CEMInputError, "device='cpu' and devices=\\['cpu'\\] were both given"),
    (dict(devices="cpu"), cc.CEMInputError, "devices='cpu' must be 'all'"),
    (dict(devices=["gpu"]), cc.DeviceError, "device='gpu' is unknown"),
    (dict(progress="loud"), cc.CEMInputError, "progress='loud' must be True \\(a bar\\), False"),
])
def test_bad_arguments(kwargs, error, match):
    args = {**GOOD, **kwargs}
    if "devices" in kwargs and "device" not in kwargs:
        del args["device"]
    with pytest.raises(error, match=match):
        cc.sweep(Refuse(), [_noise(0)], **args)


def test_devices_all_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(cc.DeviceError, match="devices='all' asks for one worker per CUDA device, but this machine has "
                                             "none .* use workers=N"):
        cc.sweep(Refuse(), [_noise(0)], devices="all", **{k: v for k, v in GOOD.items() if k != "device"})


def test_a_model_error_names_the_image_and_roi():
    with pytest.raises(cc.ModelError) as info:
        cc.sweep(lambda x: x[:, :1], {"one": _noise(0)}, **GOOD)
    assert "(sweep: image 'one', roi (0, 0, 8))" in info.value.__notes__


def test_a_plain_callable_needs_a_cache_key_for_cache_dir(tmp_path):
    with pytest.raises(cc.CEMInputError, match="pass cache_key="):
        cc.sweep(lambda x: x, [_noise(0)], cache_dir=tmp_path, **GOOD)


def test_progress_lines_follow_the_rule_of_a_maps_lines(monkeypatch):
    import cem_checks.progress as progress
    import cem_checks.sweeps as S

    lines: list[str] = []
    bar = S._Progress(lines.append, 4, 0)
    bar.update(2), bar.update(2)
    assert lines == []  # a sweep shorter than 10 s stays silent
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    bar = S._Progress(lines.append, 4, 1)
    bar.update(2), bar.update(1)
    assert lines[0].startswith("cem sweep: 3/4 items (1 cached), ") and lines[1].startswith("cem sweep: 4/4 items")
