"""CUDA out-of-memory back-off: the batch is halved and the same draws are retried, losing no work."""

from __future__ import annotations

import types

import numpy as np
import torch

import cem_checks as cc
from nets import ConvStack


class FakeAllocator(torch.nn.Module):
    """Raises torch.cuda.OutOfMemoryError for batches above ``limit`` images, like a full GPU would."""

    def __init__(self, inner, limit):
        super().__init__()
        # the count lives outside the model's own attributes: the engine restores those after each call
        self.inner, self.limit, self.seen = inner, limit, types.SimpleNamespace(refusals=0)

    @property
    def refusals(self):
        return self.seen.refusals

    def forward(self, x):
        if x.shape[0] > self.limit:
            self.seen.refusals += 1
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} images")
        return self.inner(x)


def test_oom_halves_the_batch_and_gives_the_same_map(natural32):
    kw = dict(task="dn20", roi=(8, 8, 8), block_size=4, coarse=2, fine=6, progress=False, device="cpu", seed=5)
    inner = ConvStack((1, 1))
    fake = FakeAllocator(inner, limit=3)
    res = cc.compute_cem(fake, natural32, batch_size=16, **kw)
    ref = cc.compute_cem(inner, natural32, batch_size=2, **kw)
    assert fake.refusals >= 1 and res.meta["oom_backoffs"] >= 1
    # halved from the batch that failed until one fits: at most the allocator's 3 images
    assert 1 <= res.meta["batch_size"] <= 3
    np.testing.assert_array_equal(res.support, ref.support)
    np.testing.assert_array_equal(res.samples_db, ref.samples_db)


def test_oom_with_a_single_image_is_a_clear_error(natural32):
    import pytest

    with pytest.raises(cc.ModelError, match="ran out of memory for a single"):
        cc.compute_cem(FakeAllocator(ConvStack((1,)), limit=0), natural32, batch_size=4, task="dn20", roi=(8, 8, 8),
                       progress=False, device="cpu", fast=cc.FastOptions(group_testing=False))


class FillsUp(torch.nn.Module):
    """Works for the first ``calls`` forwards, then runs out of memory whatever the batch size."""

    def __init__(self, inner, calls):
        super().__init__()
        self.inner, self.calls = inner, calls

    def forward(self, x):
        self.calls -= 1
        if self.calls < 0:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB")
        return self.inner(x)


def test_memory_that_fills_up_mid_run_ends_in_a_clear_error_not_a_loop(natural32):
    import pytest

    with pytest.raises(cc.ModelError, match="ran out of memory for a single"):
        cc.compute_cem(FillsUp(ConvStack((1,)), calls=4), natural32, batch_size=4, task="dn20", roi=(8, 8, 8),
                       progress=False, device="cpu")
