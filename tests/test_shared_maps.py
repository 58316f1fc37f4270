"""Maps of several ROIs of one image from shared forwards (``compute_cem_many``, paper mode): identical to separate
runs with the same seed, and cheaper by the count the paper procedure predicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nets import ConvStack

import cem_checks as cc
from cem_checks.models import RCANLite

KW = dict(block_size=4, mode="paper", coarse=3, fine=8, seed=5, device="cpu", batch_size=8, progress=False)


def _same(a: cc.CEMResult, b: cc.CEMResult) -> None:
    for name in ("effect", "raw_effect", "support", "flagged", "n_samples"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"{name} of ROI {a.roi}")
    np.testing.assert_array_equal(a.samples_db, b.samples_db)
    assert a.base_psnr == b.base_psnr


@pytest.mark.parametrize("make, task", [
    (lambda: RCANLite(scale=2, features=8, blocks=1), "sr2"),  # global (channel attention)
    (lambda: ConvStack((1, 2)), "dn25"),                       # local
])
def test_shared_maps_equal_separate_runs(natural32, make, task):
    torch.manual_seed(0)
    model = make()
    rois = [(0, 0, 8), (8, 0, 8), (16, 16, 8), (24, 8, 8)]  # output px; even, so aligned for x2
    img = natural32
    many = cc.compute_cem_many(model, img, task=task, rois=rois, **KW)
    separate = [cc.compute_cem(model, img, task=task, roi=r, **KW) for r in rois]
    assert [r.roi.as_tuple() for r in many] == [tuple(r) for r in rois]
    for a, b in zip(many, separate):
        _same(a, b)
        # each result counts the forwards its map read: what the separate run spent
        assert a.forward_passes == b.forward_passes
    shared = many[0].meta["shared"]
    assert shared["rois"] == len(rois)
    nb = many[0].rows * many[0].cols
    union = int(np.logical_or.reduce([r.flagged for r in many]).sum())
    assert shared["fine_blocks"] == union
    # at most coarse x blocks + fine x |union of flagged| intervened passes, plus the checks and baselines
    overhead = separate[0].forward_passes - nb * 3 - 8 * int(separate[0].flagged.sum())
    assert shared["image_forward_passes"] <= nb * 3 + 8 * union + overhead
    assert shared["image_forward_passes"] < sum(r.forward_passes for r in separate)


def test_shared_maps_read_and_write_the_separate_runs_cache(natural32, tmp_path):
    model = ConvStack((1, 1))
    rois = [(0, 0, 8), (16, 16, 8)]
    many = cc.compute_cem_many(model, natural32, task="dn25", rois=rois, cache_dir=tmp_path, **KW)
    # a separate run of one of the ROIs finds every chunk in the cache: only its start-up forwards run
    again = cc.compute_cem(model, natural32, task="dn25", roi=rois[1], cache_dir=tmp_path, **KW)
    _same(many[1], again)
    assert again.meta["cache"]["hits"] > 0
    assert again.forward_passes < many[1].forward_passes / 4


def test_fast_mode_shares_the_coarse_draws_of_a_global_model(natural32):
    torch.manual_seed(1)
    model = RCANLite(scale=2, features=8, blocks=1)
    rois = [(0, 0, 8), (16, 8, 8), (24, 24, 8)]
    kw = {**KW, "mode": "fast"}
    many = cc.compute_cem_many(model, natural32, task="sr2", rois=rois, **kw)
    separate = [cc.compute_cem(model, natural32, task="sr2", roi=r, **kw) for r in rois]
    nb = many[0].rows * many[0].cols
    for a, b in zip(many, separate):
        _same(a, b)
        assert a.meta["shared"]["draws"] == "coarse"
        assert a.forward_passes == b.forward_passes
        assert a.meta["fast"]["candidates"] == nb  # a global model: nothing ruled out
    image = many[0].meta["shared"]["image_forward_passes"]
    # the coarse draws ran once instead of once per ROI
    assert image <= sum(r.forward_passes for r in separate) - (len(rois) - 1) * nb * 3


def test_fast_mode_runs_each_roi_of_a_local_model_alone(natural32):
    model = ConvStack((1, 1))
    rois = [(0, 0, 8), (16, 16, 8)]
    kw = {**KW, "mode": "fast"}
    many = cc.compute_cem_many(model, natural32, task="dn25", rois=rois, **kw)
    for a, r in zip(many, rois):
        _same(a, cc.compute_cem(model, natural32, task="dn25", roi=r, **kw))
        assert "shared" not in a.meta


@pytest.mark.parametrize("rois", [[], (0, 0, 8), "all"])
def test_bad_rois_are_refused(natural32, rois):
    with pytest.raises(cc.CEMInputError, match="rois="):
        cc.compute_cem_many(ConvStack((1,)), natural32, task="dn25", rois=rois, **KW)
