"""The engine against models whose causal effect maps are known exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cem_checks as cc
from cem_checks.images import quantize
from nets import (
    Affine,
    Constant,
    ConvStack,
    InPlaceScaling,
    NearestUpsampleSR,
    PixelShuffleSR,
    PlantedNonLocal,
    StridedSR,
    jacobian_support,
)

QUICK = dict(coarse=2, fine=4, progress=False, device="cpu")
MODES = pytest.mark.parametrize("mode", ["paper", "fast"])


@pytest.mark.parametrize(
    "model, task, roi, block",
    [
        (ConvStack((1, 1, 1)), cc.Denoising(15), (12, 12, 4), 2),
        (ConvStack((1, 2, 3)), cc.Denoising(15), (14, 10, 4), 2),
        (ConvStack((1, 1, 1, 1, 1)), cc.Deraining(seed=3), (0, 20, 6), 2),
        (PixelShuffleSR(2), cc.SuperResolution(2), (12, 16, 8), 1),
        (NearestUpsampleSR(2), cc.SuperResolution(2), (20, 4, 4), 1),
        (PixelShuffleSR(4), cc.SuperResolution(4), (32, 32, 8), 1),
    ],
    ids=["plain-r3", "dilated-r6", "plain-r5-derain", "pixelshuffle-x2-r3", "nearest-x2-r3", "pixelshuffle-x4-r3"],
)
@MODES
def test_support_is_exactly_the_receptive_field(mode, model, task, roi, block, natural32):
    image = np.concatenate([natural32, natural32], axis=1) if task.scale == 4 else natural32
    if task.scale == 4:
        image = np.concatenate([image, image], axis=0)
    res = cc.compute_cem(model, image, task=task, roi=roi, block_size=block, mode=mode, **QUICK)
    within = res.distance <= model.radius
    assert within.any() and (~within).any(), "the test needs blocks on both sides of the radius"
    np.testing.assert_array_equal(res.support, within)
    assert (res.effect[~within] == 0).all()
    assert (res.raw_effect[~within] == 0).all(), "unchanged ROI outputs must give a PSNR drop of exactly 0"


@MODES
def test_support_matches_the_jacobian_of_a_strided_model(mode, natural32):
    model = StridedSR()
    task = cc.SuperResolution(2)
    roi = (24, 16, 8)
    res = cc.compute_cem(model, natural32, task=task, roi=roi, block_size=2, mode=mode, **QUICK)
    x = task.degrade(cc.load_image(natural32)[None])
    theory = jacobian_support(model, x, roi, 2, 2).numpy()
    assert theory.sum() > 4 and (~theory).sum() > 4
    np.testing.assert_array_equal(res.support, theory)
    assert (res.effect[~theory] == 0).all()


@MODES
def test_planted_non_local_block_has_the_strongest_positive_effect(mode, natural32):
    img = natural32.copy()
    roi, source = (4, 4, 4), (24, 20, 4)
    img[20:24, 24:28] = img[4:8, 4:8]  # the far block holds the ROI's own content
    res = cc.compute_cem(PlantedNonLocal(roi, source), img, task=cc.Denoising(10), roi=roi, block_size=4, mode=mode, **QUICK)
    far = (source[1] // 4, source[0] // 4)
    assert res.distance[far] >= 12
    assert res.effect[far] > 3.0
    assert np.unravel_index(np.argmax(res.effect), res.effect.shape) == far
    expected = np.zeros_like(res.support)
    expected[far] = True
    np.testing.assert_array_equal(res.support, expected)  # not even the ROI's own block matters
    assert (res.effect[~expected] == 0).all()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


@pytest.mark.parametrize("roi", [(4, 4, 4), (2, 6, 4)], ids=["roi-one-block", "roi-across-four-blocks"])
@MODES
def test_affine_model_without_noise_matches_the_hand_computed_map(mode, roi, natural32):
    """sigma=0 and a one-patch bank make every draw identical: the map is computable by hand."""
    v = 0.2
    bank = np.full((1, 4, 4, 3), round(v * 255), np.uint8)
    res = cc.compute_cem(Affine(0.5, 0.25), natural32, task=cc.Denoising(0), roi=roi, block_size=4, patches=bank, mode=mode, **QUICK)

    y = natural32.astype(np.float64) / 255.0
    q = lambda a: np.round(np.clip(a, 0, 1) * 255) / 255  # noqa: E731
    x0, y0, s = roi
    sl = (slice(y0, y0 + s), slice(x0, x0 + s))
    base = _psnr(q(0.5 * q(y) + 0.25)[sl], y[sl])
    assert res.base_psnr == pytest.approx(base, abs=1e-9)
    expected = np.zeros((8, 8))
    for r in range(8):
        for c in range(8):
            xi = q(y).copy()
            xi[r * 4 : r * 4 + 4, c * 4 : c * 4 + 4] = q(np.full((4, 4, 3), round(v * 255) / 255))
            expected[r, c] = base - _psnr(q(0.5 * xi + 0.25)[sl], y[sl])
    np.testing.assert_allclose(res.raw_effect, expected, atol=1e-9)
    np.testing.assert_allclose(res.effect, np.where(np.abs(expected) >= 0.01, expected, 0.0), atol=1e-9)
    np.testing.assert_array_equal(res.effect == 0, np.abs(expected) < 0.01)
    np.testing.assert_array_equal(res.support, res.roi_mask)
    assert res.roi_mask.sum() == (1 if roi == (4, 4, 4) else 4)
    assert (res.stderr[res.flagged] == 0).all() and (res.n_samples[res.flagged] == 4).all()
    np.testing.assert_allclose(res.ci_low[res.flagged], res.raw_effect[res.flagged])


@MODES
def test_constant_model_has_an_empty_map(mode, natural32):
    res = cc.compute_cem(Constant(0.5, scale=2), natural32, task=cc.SuperResolution(2), roi=(8, 8, 8), mode=mode, **QUICK)
    assert not res.support.any() and not res.flagged.any()
    assert (res.effect == 0).all() and (res.raw_effect == 0).all()
    y = natural32[8:16, 8:16].astype(np.float64) / 255
    assert res.base_psnr == pytest.approx(_psnr(np.full_like(y, 128 / 255), y), abs=1e-9)
    # paper: 2 coarse draws everywhere; fast: group testing rules out all but the ROI's own block at once
    np.testing.assert_array_equal(res.n_samples, 2 if mode == "paper" else np.where(res.roi_mask, 2, 0))
    assert res.block_size == 4 and res.scale == 2


@MODES
def test_identity_denoiser_is_affected_by_the_roi_blocks_only(mode, natural32):
    res = cc.compute_cem(Affine(1.0, 0.0), natural32, task=cc.Denoising(25), roi=(6, 6, 8), block_size=4, mode=mode, **QUICK)
    np.testing.assert_array_equal(res.support, res.roi_mask)
    assert res.roi_mask.sum() == 9
    assert (res.effect[~res.roi_mask] == 0).all()


@MODES
def test_a_model_that_mutates_its_input_gets_the_same_map(mode, natural32):
    inner = ConvStack((1, 1))
    kwargs = dict(task=cc.Denoising(20), roi=(8, 8, 8), block_size=4, seed=3, mode=mode, **QUICK)
    plain = cc.compute_cem(lambda x: inner(x * 255.0 / 255.0), natural32, **kwargs)
    mutating = cc.compute_cem(InPlaceScaling(inner), natural32, **kwargs)
    np.testing.assert_array_equal(plain.samples_db, mutating.samples_db)
    np.testing.assert_array_equal(plain.support, mutating.support)


@MODES
def test_same_seed_same_map_and_another_seed_other_draws(mode, natural32):
    kwargs = dict(task=cc.Denoising(20), roi=(8, 8, 8), block_size=4, mode=mode, **QUICK)
    model = ConvStack((1, 1))
    a = cc.compute_cem(model, natural32, seed=7, **kwargs)
    b = cc.compute_cem(model, natural32, seed=7, **kwargs)
    c = cc.compute_cem(model, natural32, seed=8, **kwargs)
    for name in ("effect", "raw_effect", "stderr", "samples_db", "support", "flagged"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.samples_db[a.support], c.samples_db[c.support])
    np.testing.assert_array_equal(a.support, c.support)


@MODES
def test_map_does_not_depend_on_batch_size(mode, natural32):
    kwargs = dict(task=cc.Denoising(20), roi=(8, 8, 8), block_size=4, seed=1, mode=mode, **QUICK)
    model = ConvStack((1, 1))
    one = cc.compute_cem(model, natural32, batch_size=1, **kwargs)
    seven = cc.compute_cem(model, natural32, batch_size=7, **kwargs)
    np.testing.assert_array_equal(one.support, seven.support)
    np.testing.assert_array_equal(np.isnan(one.samples_db), np.isnan(seven.samples_db))
    a, b = one.samples_db[~np.isnan(one.samples_db)], seven.samples_db[~np.isnan(seven.samples_db)]
    # the same draws: equal up to an occasional 8-bit level flip from batch-shape-dependent float kernels
    assert np.mean(a == b) > 0.99
    assert np.abs(a - b).max() < 1e-3
    assert one.forward_calls > seven.forward_calls


def test_paper_procedure_counts(natural32):
    """Flagged blocks get `fine` fresh draws, the others keep their `coarse` draws; passes add up."""
    res = cc.compute_cem(ConvStack((1, 1)), natural32, task=cc.Denoising(20), roi=(8, 8, 8), block_size=4,
                         coarse=3, fine=6, progress=False, device="cpu", batch_size=4, mode="paper")
    nb = res.rows * res.cols
    assert res.flagged.any() and (~res.flagged).any()
    np.testing.assert_array_equal(res.n_samples, np.where(res.flagged, 6, 3))
    assert (np.abs(res.samples_db[~res.flagged][:, :3]) < 0.01).all()
    assert np.isnan(res.samples_db[~res.flagged][:, 3:]).all()
    # draws + the validation forward + 3 batches of 2 on a window (determinism and batch-independence checks) +
    # one baseline per distinct batch size (each flagged block's 6 fine draws run in batches of their own: 4 + 2)
    draws = nb * 3 + int(res.flagged.sum()) * 6
    sizes = {4} | ({(nb * 3) % 4} - {0}) | {6 % 4}
    assert res.forward_passes == draws + 1 + 6 + sum(sizes)
    assert res.pixels_processed == (res.forward_passes - 6) * 32 * 32 + 6 * 16 * 16  # 6 on the checks' window
    # the effect is the mean of the estimating draws, zeroed below tol
    np.testing.assert_allclose(res.raw_effect, np.nanmean(res.samples_db, axis=2))
    finite = res.n_samples >= 2
    assert (res.ci_low[finite] <= res.raw_effect[finite]).all() and (res.raw_effect[finite] <= res.ci_high[finite]).all()


def test_module_mode_and_device_are_restored(natural32):
    model = ConvStack((1,))
    model.train()
    cc.compute_cem(model, natural32, task="dn25", roi=(8, 8, 8), **QUICK)
    assert model.training


def test_sr_crops_to_the_scale_and_block_grid():
    img = np.random.default_rng(0).integers(0, 256, (37, 43, 3), dtype=np.uint8)
    res = cc.compute_cem(NearestUpsampleSR(2), img, task=cc.SuperResolution(2), roi=(4, 4, 4), block_size=3, **QUICK)
    assert res.output_shape == (36, 42) and res.input_shape == (18, 21)
    assert (res.rows, res.cols) == (6, 7)
    res = cc.compute_cem(NearestUpsampleSR(2), img, task=cc.SuperResolution(2), roi=(4, 4, 4), block_size=4, **QUICK)
    assert res.output_shape == (32, 40) and (res.rows, res.cols) == (4, 5)
    assert res.meta["image_shape"] == [37, 43]


def test_quantize_rounds_to_8_bit_levels():
    t = torch.tensor([-0.1, 0.0, 0.5, 1.2, 100.4 / 255])
    np.testing.assert_allclose(quantize(t).numpy(), [0, 0, 128 / 255, 1, 100 / 255])


def test_progress_bar_on_request_and_silent_otherwise(natural32, capsys):
    cc.compute_cem(ConvStack((1,)), natural32, task="dn25", roi=(8, 8, 8), progress=True, **{k: v for k, v in QUICK.items() if k != "progress"})
    err = capsys.readouterr().err
    assert "CEM" in err and "img" in err
    cc.compute_cem(ConvStack((1,)), natural32, task="dn25", roi=(8, 8, 8), **QUICK)
    # stderr is not a terminal here: log lines, and none for a map shorter than 10 s
    cc.compute_cem(ConvStack((1,)), natural32, task="dn25", roi=(8, 8, 8), progress=None,
                   **{k: v for k, v in QUICK.items() if k != "progress"})
    assert capsys.readouterr().err == ""
