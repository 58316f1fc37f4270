"""The cache: keyed by what the task does (its class and settings), and a warm rerun repeats no work."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from nets import ConvStack

import cem_checks as cc
from cem_checks.images import quantize

KW = dict(roi=(24, 24, 8), block_size=4, coarse=3, fine=20, progress=False, device="cpu", seed=0)


@pytest.fixture(scope="module")
def natural64(natural32):
    return np.concatenate([np.concatenate([natural32] * 2, 0)] * 2, 1)


@dataclass(frozen=True)
class NoiselessIntervention(cc.Denoising):
    """Denoising whose interventions paste the clean patch without noise (same describe() as its parent)."""

    def intervene(self, blocks, *, top, left, clean, degraded, generator):
        return quantize(blocks)


class Undescribed:
    """A task following the protocol without describe()."""

    name, scale, display_bound_db = "plain", 1, 1.0

    def __init__(self, offset: float):
        self.offset = offset

    def crop(self, clean):
        return clean

    def degrade(self, clean):
        return quantize(clean + self.offset)

    def patch_to_block(self, patches, block_size):
        return torch.nn.functional.interpolate(patches, size=(block_size, block_size), mode="area")

    def intervene(self, blocks, *, top, left, clean, degraded, generator):
        return quantize(blocks + self.offset)


def test_a_task_subclass_gets_its_own_cache_entry_and_its_own_map(natural64, tmp_path):
    model = ConvStack((1, 1))
    parent = cc.compute_cem(model, natural64, task=cc.Denoising(25), cache_dir=tmp_path, **KW)
    child = cc.compute_cem(model, natural64, task=NoiselessIntervention(25), cache_dir=tmp_path, **KW)
    fresh = cc.compute_cem(model, natural64, task=NoiselessIntervention(25), **KW)
    assert NoiselessIntervention(25).describe() == cc.Denoising(25).describe()
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 4  # each task: a support key and a map key
    assert child.meta["cache"]["hits"] == 0
    np.testing.assert_array_equal(child.samples_db, fresh.samples_db)
    assert not np.array_equal(np.nan_to_num(child.samples_db), np.nan_to_num(parent.samples_db))
    key = (tmp_path / child.meta["cache"]["dir"].rsplit("/", 1)[-1] / "key.json").read_text()
    assert "NoiselessIntervention" in key


def test_a_task_without_describe_is_not_cached_but_still_maps(natural64, tmp_path):
    model = ConvStack((1, 1))
    with pytest.raises(cc.CEMInputError, match=r"no describe\(\) method; add `def describe\(self\) -> dict`"):
        cc.compute_cem(model, natural64, task=Undescribed(0.1), cache_dir=tmp_path, **KW)
    res = cc.compute_cem(model, natural64, task=Undescribed(0.1), **KW)
    assert res.support.any()


@pytest.mark.parametrize("mode", ["fast", "paper"])
def test_a_warm_rerun_does_at_most_the_two_validation_forwards(natural64, tmp_path, mode):
    model = ConvStack((1, 2, 1))
    kw = {**KW, "task": "dn25", "mode": mode}
    cold = cc.compute_cem(model, natural64, cache_dir=tmp_path, **kw)
    if mode == "fast":  # the job exercises the group tests, the crop and the local evaluation of fine draws
        fast = cold.meta["fast"]
        assert fast["crop"] is not None and fast["local_eval"]["used"] and fast["local_eval"]["draws"] > 0
    warm = cc.compute_cem(model, natural64, cache_dir=tmp_path, **kw)
    assert cold.forward_passes > 100
    assert warm.forward_passes <= 2
    assert warm.meta["cache"]["writes"] == 0 and warm.meta["cache"]["hits"] > 0
    for name in ("effect", "raw_effect", "stderr", "samples_db", "support", "flagged", "n_samples"):
        np.testing.assert_array_equal(getattr(warm, name), getattr(cold, name), err_msg=name)
    if mode == "fast":
        assert warm.meta["fast"]["local_eval"]["used"]
        assert warm.meta["fast"]["crop"] == cold.meta["fast"]["crop"]
