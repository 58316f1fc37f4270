"""Fast mode: exact zero detection, verified cropping and its fallbacks, switches, reduced precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cem_checks as cc
from cem_checks.models import RCANLite
from nets import ConvStack, PlantedNonLocal

QUICK = dict(coarse=2, fine=6, progress=False, device="cpu", seed=0)


def test_group_testing_rules_out_blocks_beyond_the_radius_without_per_block_passes(natural32):
    model = ConvStack((1, 1, 1))
    fast = cc.compute_cem(model, natural32, task="dn20", roi=(12, 12, 4), block_size=2, **QUICK)
    off = cc.compute_cem(model, natural32, task="dn20", roi=(12, 12, 4), block_size=2,
                         fast=cc.FastOptions(group_testing=False, crop=False), **QUICK)
    info = fast.meta["fast"]
    assert info["support_radius_px"] == 3
    assert (fast.n_samples[fast.distance > 3] == 0).all() and (fast.n_samples[fast.distance <= 3] >= 2).all()
    np.testing.assert_array_equal(fast.support, fast.distance <= 3)
    np.testing.assert_array_equal(off.support, fast.support)
    assert info["group_tests"] <= 8
    assert fast.forward_passes < off.forward_passes / 2


def test_kd_group_testing_finds_a_sparse_non_local_dependency(natural32):
    img = natural32.copy()
    roi, source = (4, 4, 4), (24, 20, 4)
    img[20:24, 24:28] = img[4:8, 4:8]
    res = cc.compute_cem(PlantedNonLocal(roi, source), img, task="dn10", roi=roi, block_size=4, **QUICK)
    info = res.meta["fast"]
    # the far block's pixels set the radius, exactly in pixels: its farthest pixel (the ROI copies the whole block)
    assert info["support_radius_px"] == res.radius_px == res.far_distance[5, 6]
    assert info["ruled_out_by_kd"] >= 40  # the k-d split then rules out the rest inside that radius
    assert info["candidates"] == 2  # the far block and the ROI's own block (always kept)
    assert info["crop_check"].startswith("failed: the model cannot run on the crop")  # absolute coordinates
    assert res.support.sum() == 1 and res.support[5, 6] and res.effect[5, 6] > 3


def test_crop_is_used_when_verified_and_gives_the_full_image_map(natural32):
    model = ConvStack((1, 1))
    big = np.concatenate([np.concatenate([natural32] * 2, 0)] * 2, 1)  # 64x64
    kw = dict(task="dn20", roi=(24, 24, 8), block_size=4, **QUICK)
    cropped = cc.compute_cem(model, big, fast=cc.FastOptions(local_eval=False), **kw)  # the crop alone
    full = cc.compute_cem(model, big, fast=cc.FastOptions(crop=False, local_eval=False), **kw)
    info = cropped.meta["fast"]
    assert info["crop"] == [20, 20, 16, 16]  # the blocks within the radius 2 of the 8-px footprint
    assert info["crop_check"] == "bit-exact" or info["crop_check"].startswith("max |diff|")
    assert cropped.pixels_processed < full.pixels_processed / 3
    np.testing.assert_array_equal(cropped.support, full.support)
    np.testing.assert_allclose(cropped.samples_db, full.samples_db, atol=1e-3)


class SizeDependent(torch.nn.Module):
    """Local in content but not in size: the output shifts with the number of input pixels."""

    def __init__(self):
        super().__init__()
        self.conv = ConvStack((1,))

    def forward(self, x):
        return self.conv(x) + x.shape[-1] * x.shape[-2] * 1e-4


class NeedsMultipleOf32(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = ConvStack((1,))

    def forward(self, x):
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be a multiple of 32")
        return self.conv(x)


@pytest.mark.parametrize("model, reason", [(SizeDependent(), "failed: max |diff|"), (NeedsMultipleOf32(), "failed: the model cannot run on the crop")])
def test_crop_falls_back_to_full_images_when_the_check_fails(model, reason, natural32):
    big = np.concatenate([np.concatenate([natural32] * 2, 0)] * 2, 1)
    # local evaluation off: every draw runs the model itself, on the full input once the crop is refused
    res = cc.compute_cem(model, big, task="dn20", roi=(24, 24, 8), block_size=4,
                         **dict(QUICK, fast=cc.FastOptions(local_eval=False)))
    info = res.meta["fast"]
    assert info["crop"] is None and info["crop_check"].startswith(reason)
    np.testing.assert_array_equal(res.support, res.distance <= 1)
    # every draw ran on the full 64x64 input: only the 6 model-check forwards (a 16x16 window, or 32x32 for the
    # model that needs multiples of 32) and at most two crop-check forwards (the support stage's and the map's)
    # were smaller
    assert res.pixels_processed > (res.forward_passes - 8) * 64 * 64


def test_global_model_gets_no_crop_and_costs_no_more_than_paper(natural32):
    torch.manual_seed(0)
    model = RCANLite(scale=2, features=8, blocks=2)
    kw = dict(task="sr2", roi=(8, 8, 8), block_size=2, coarse=3, fine=10, progress=False, device="cpu")
    fast = cc.compute_cem(model, natural32, mode="fast", **kw)
    paper = cc.compute_cem(model, natural32, mode="paper", **kw)
    assert fast.meta["fast"]["crop"] is None
    assert fast.support.all() and paper.support.all()  # global pooling: every block reaches the ROI
    assert fast.forward_passes <= paper.forward_passes * 1.05


def test_every_mechanism_can_be_switched_off(natural32):
    opts = cc.FastOptions(group_testing=False, crop=False, adaptive=False, common_random_numbers=False,
                          local_eval=False)
    res = cc.compute_cem(ConvStack((1, 1)), natural32, task="dn20", roi=(8, 8, 8), block_size=4, fast=opts, **QUICK)
    np.testing.assert_array_equal(res.n_samples, np.where(res.flagged, 6, 2))
    assert res.meta["fast"]["crop_check"] == "off" and "group_tests" not in res.meta["fast"]
    assert res.meta["fast"]["local_eval"]["check"] == "off" and res.meta["fast"]["local_eval"]["draws"] == 0
    np.testing.assert_array_equal(res.support, res.distance <= 2)


def test_adaptive_sampling_stops_clear_blocks_early(natural32):
    """Deterministic draws (sigma 0, one patch): every flagged block is decided at the first look."""
    bank = np.full((1, 4, 4, 3), 50, np.uint8)
    res = cc.compute_cem(ConvStack((1,)), natural32, task=cc.Denoising(0), roi=(8, 8, 8), block_size=4, patches=bank,
                         coarse=3, fine=50, progress=False, device="cpu")
    stopped = res.meta["fast"]["stopped"]
    assert res.flagged.any() and stopped["cap"] == 0
    assert (res.n_samples[res.flagged] == 5).all()


def test_common_random_numbers_share_patches_across_blocks():
    """Identity model, no noise, an image tiled with one 4x4 tile: the four ROI blocks are interchangeable,
    so under common random numbers their j-th draws (same patch) give the same PSNR drop."""
    from nets import Affine

    tile = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = np.tile(tile, (4, 4, 1))
    bank = np.random.default_rng(1).integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
    kw = dict(task=cc.Denoising(0), roi=(4, 4, 8), block_size=4, patches=bank, progress=False, device="cpu", coarse=3, fine=5)
    off = dict(group_testing=False, crop=False, adaptive=False)
    crn = cc.compute_cem(Affine(1.0, 0.0), img, fast=cc.FastOptions(**off), **kw)
    ind = cc.compute_cem(Affine(1.0, 0.0), img, fast=cc.FastOptions(common_random_numbers=False, **off), **kw)
    roi_draws = crn.samples_db[crn.roi_mask][:, :5]
    assert roi_draws.shape == (4, 5) and np.ptp(roi_draws[0]) > 0  # different patches, different drops
    np.testing.assert_array_equal(roi_draws, np.broadcast_to(roi_draws[0], roi_draws.shape))
    ind_draws = ind.samples_db[ind.roi_mask][:, :5]
    assert not (ind_draws == ind_draws[0]).all()


def test_bf16_is_measured_and_close_to_fp32(natural32):
    import warnings

    kw = dict(task="dn20", roi=(8, 8, 8), block_size=4, **QUICK)
    model = ConvStack((1, 1))
    ref = cc.compute_cem(model, natural32, **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        low = cc.compute_cem(model, natural32, precision="bf16", **kw)
    shift = low.meta["precision_shift_db"]
    assert low.meta["precision"] == "bf16" and shift > 0  # bf16 does move the ROI PSNR
    warned = [w for w in caught if issubclass(w.category, cc.PrecisionWarning)]
    assert bool(warned) == (shift > 0.01)
    nz = (ref.effect != 0) | (low.effect != 0)
    assert np.corrcoef(ref.raw_effect[nz], low.raw_effect[nz])[0, 1] > 0.9
    np.testing.assert_array_equal(low.support, ref.support)
    with pytest.raises(cc.CEMInputError, match="precision='fp16' needs a CUDA device"):
        cc.compute_cem(model, natural32, precision="fp16", **kw)
    with pytest.raises(cc.CEMInputError, match="precision='int8' is unknown"):
        cc.compute_cem(model, natural32, precision="int8", **kw)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(group_draws=0), "group_draws=0"),
        (dict(looks=(10, 5)), "looks=\\(10, 5\\)"),
        (dict(alpha=1.5), "alpha=1.5"),
        (dict(rel_precision=0), "rel_precision=0"),
    ],
)
def test_bad_fast_options(kw, match):
    with pytest.raises(cc.CEMInputError, match=match):
        cc.FastOptions(**kw)
