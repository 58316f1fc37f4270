"""Hypothesis strategies of cem_checks.strategies, the "cem" profile, and a property test built on them."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cem_checks as cc
from cem_checks import metrics as M
from cem_checks import strategies as S
from nets import ConvStack


def test_importing_cem_checks_does_not_import_hypothesis():
    code = "import sys, cem_checks, cem_checks.metrics, cem_checks.checks, cem_checks.baseline; print('hypothesis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_cem_profile_is_registered():
    prof = settings.get_profile(S.CEM_PROFILE)
    assert prof.deadline is None and prof.max_examples == 10 and prof.derandomize and prof.database is None
    assert S.cem_hypothesis_settings.max_examples == 10


@S.cem_hypothesis_settings
@given(roi=S.rois((24, 40), size=(4, 12), scale=4))
def test_rois_are_inside_the_output_and_aligned_to_the_scale(roi):
    assert isinstance(roi, cc.ROI)
    assert 4 <= roi.size <= 12 and roi.size % 4 == 0 and roi.x % 4 == 0 and roi.y % 4 == 0
    assert roi.x + roi.size <= 40 and roi.y + roi.size <= 24
    roi.validate((24, 40), 4)


@S.cem_hypothesis_settings
@given(roi=S.rois((9, 9)))
def test_rois_without_a_size_cover_every_side(roi):
    assert 1 <= roi.size <= 9 and roi.x + roi.size <= 9 and roi.y + roi.size <= 9


@S.cem_hypothesis_settings
@given(b=S.block_sizes(2, 12, divides=24), c=S.block_sizes(3, 5))
def test_block_sizes(b, c):
    assert b in (2, 3, 4, 6, 8, 12) and 3 <= c <= 5


@S.cem_hypothesis_settings
@given(img=S.natural_images(size=(16, 24)), textured=S.natural_images(size=8, min_std=20.0))
def test_natural_images_are_uint8_crops(img, textured):
    assert img.shape == (16, 24, 3) and img.dtype == np.uint8
    assert textured.shape == (8, 8, 3) and textured.std() >= 20.0


def test_min_std_skips_flat_regions():
    flat = [s for s in range(200) if S.natural_crop(s, 8).std() < 1.0]
    assert flat, "the bundled images hold flat 8x8 regions (black background, sky)"
    for s in flat[:5]:
        assert S.natural_crop(s, 8, min_std=10.0).std() >= 10.0


@pytest.mark.parametrize("seed", [0, 1, 12345, S.MAX_SEED])
def test_a_seed_selects_one_crop_of_a_bundled_image(seed):
    name, top, left = S.crop_origin(seed, 20)
    crop = S.natural_crop(seed, 20)
    full = cc.load_image(cc.bundled_images()[name])
    expected = (full[:, top : top + 20, left : left + 20].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(crop, expected)
    np.testing.assert_array_equal(S.natural_crop(seed, 20), crop)
    crop.fill(0)  # the returned array is a copy
    assert S.natural_crop(seed, 20).any()


def test_different_seeds_give_different_crops():
    origins = {S.crop_origin(seed, 32) for seed in range(20)}
    assert len(origins) == 20
    assert {name for name, _, _ in origins} == set(cc.bundled_images())
    assert {S.crop_origin(s, 32, names=["chelsea"])[0] for s in range(5)} == {"chelsea"}


@S.cem_hypothesis_settings
@given(task=S.tasks())
def test_tasks_are_task_objects(task):
    assert isinstance(task, cc.Task) and isinstance(task, (cc.SuperResolution, cc.Denoising, cc.Deraining))
    if isinstance(task, cc.SuperResolution):
        assert task.scale in (2, 4)
    if isinstance(task, cc.Denoising):
        assert task.sigma in (15, 25, 50)


@S.cem_hypothesis_settings
@given(task=S.tasks(["dn"], sigmas=[5]))
def test_tasks_of_one_kind(task):
    assert isinstance(task, cc.Denoising) and task.sigma == 5


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: S.rois((8, 8), size=3, scale=2), r"size=3 allows no ROI side that is a multiple of scale=2"),
        (lambda: S.rois((8, 8), size=(9, 12)), r"size=\(9, 12\) allows no ROI side"),
        (lambda: S.rois((8, "8")), r"output_shape\[1\]='8' must be an integer >= 1"),
        (lambda: S.block_sizes(5, 7, divides=32), r"no block size in \[5, 7\] divides 32"),
        (lambda: S.block_sizes(4, 2), r"min_size=4 is above max_size=2"),
        (lambda: S.natural_images(size=400), r"a 400x400 crop .* does not fit the bundled images \['chelsea'"),
        (lambda: S.natural_images(names=["lena"]), r"names \['lena'\] are not bundled images"),
        (lambda: S.natural_crop(-1), r"seed=-1 must be an integer in \[0, 4294967295\]"),
        (lambda: S.natural_images(min_std=-1), r"min_std=-1 must be a number in \[0, 128\)"),
        (lambda: S.natural_crop(0, 8, ["astronaut"], min_std=127.0), r"no 8x8 crop with a pixel standard deviation >= 127"),
        (lambda: S.tasks(["sr", "jpeg"]), r"kinds=\['sr', 'jpeg'\] must be a non-empty list drawn from"),
        (lambda: S.tasks(["dn"], sigmas=[300]), r"Denoising sigma=300 must be a number in \[0, 255\]"),
    ],
)
def test_invalid_strategy_arguments_raise_typed_errors(call, match):
    with pytest.raises(cc.CEMInputError, match=match):
        call()


# ---------------------------------------------------------------- the example property: reach <= r
MODEL = ConvStack((1, 1, 1))  # receptive radius 3 input px


@S.cem_hypothesis_settings
@given(image=S.natural_images(size=24), roi=S.rois((24, 24), size=(2, 8)), block=S.block_sizes(3, 6, divides=24),
       seed=st.integers(0, 1000))
def test_a_conv_stack_never_reaches_beyond_its_receptive_field(image, roi, block, seed):
    res = cc.compute_cem(MODEL, image, task=cc.Denoising(15), roi=roi, block_size=block, seed=seed,
                         mode="paper", coarse=2, fine=4, progress=False, device="cpu")
    assert M.max_reach(res) <= MODEL.radius
    assert M.max_reach(res, significant=False) <= MODEL.radius
    # per block, the support radius lies between the bounds: the nearest pixel of a supported block is in reach
    assert M.support_radius_bounds(res, include_roi=True)[0] <= MODEL.radius
    assert (res.effect[res.distance > MODEL.radius] == 0).all()
