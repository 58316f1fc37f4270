"""Regions of tokens (``cem_checks.local_eval.region``): window attention, reshapes to tokens and ``torch.roll``
in a captured graph run as one operation whose geometry is the exact dependency of its output pixels
(``local_eval.boxes``). Local evaluation matches the forward, the traced reach is the autograd support's box, the
support equals the paper's, and what is global is refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cem_checks as cc
from cem_checks import local_eval as le
from example_suite.nets import WindowSR
from test_rewrites import _PositionEmbedding, _Tokens, _image, _local_matches_forward


def _window_sr() -> nn.Module:
    torch.manual_seed(0)
    return WindowSR(features=12, heads=2).eval()


def _grad_box(model, x, roi) -> tuple[int, int, int, int]:
    """The bounding box of the input pixels the ROI output depends on (autograd, random output weights)."""
    x = x.clone().requires_grad_(True)
    y = model(x)[..., roi[0]: roi[1], roi[2]: roi[3]]
    w = torch.rand(y.shape, generator=torch.Generator().manual_seed(0)) + 0.5
    (g,) = torch.autograd.grad((y * w).sum(), x)
    rows = np.flatnonzero(g.abs().sum(dim=(0, 1, 3)).numpy() > 0)
    cols = np.flatnonzero(g.abs().sum(dim=(0, 1, 2)).numpy() > 0)
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


CASES = {  # model, input side, ROI (output px)
    "window-attention": (_window_sr, 32, (28, 36, 28, 36)),
    "window-attention-padded": (_window_sr, 30, (20, 28, 36, 44)),  # padded to 32 by reflection, cropped back
    "tokens": (lambda: _Tokens().eval(), 32, (12, 20, 12, 20)),
    "position-embedding": (lambda: _PositionEmbedding().eval(), 32, (4, 12, 20, 28)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_region_is_evaluated_locally_and_matches_the_forward(name):
    make, side, roi = CASES[name]
    model = make()
    x = _image(side)[None]
    plan, why = le.build_plan(model, x)
    assert why == "ok" and plan.shape == tuple(x.shape)
    assert any(isinstance(op.geo, le.region.RegionGeometry) for op in plan.ops)
    blocks = [(0, 4, 0, 4), (side - 4, side, side - 4, side), (12, 16, 12, 16), (4, 8, 20, 24)]
    _local_matches_forward(model, x, roi, blocks, plan)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_traced_reach_of_a_region_is_the_exact_dependency(name):
    make, side, roi = CASES[name]
    model = make()
    x = _image(side, seed=2)[None]
    box, why, _ = le.traced_reach(model, x, roi)
    assert why == "ok"
    assert box == _grad_box(model, x, roi)


def test_a_roll_wraps_around_the_border_exactly():
    """A roll by 3 columns: output column 0 reads input column 5 of an 8-wide image, and nothing else; columns 2 to
    4 read columns 7, 0 and 1, whose box is the whole width."""

    class Rolled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            t = self.conv(x).permute(0, 2, 3, 1)
            return torch.roll(t, 3, 2).permute(0, 3, 1, 2)

    model = Rolled().eval()
    x = _image(8)[None]
    for roi, reach in [((2, 4, 0, 1), (2, 4, 5, 6)), ((0, 8, 3, 4), (0, 8, 0, 1)), ((0, 1, 2, 5), (0, 1, 0, 8))]:
        box, why, _ = le.traced_reach(model, x, roi)
        assert why == "ok" and box == reach, (roi, box)
    _local_matches_forward(model, x, (0, 8, 0, 2), [(0, 4, 4, 8), (4, 8, 0, 4)])


def test_the_support_of_a_window_attention_model_equals_the_paper():
    model = _window_sr()
    image = _image(64, seed=1)  # a 32x32 input: at 16x16, shifted windows of 8 reach every pixel (global)
    kw = dict(task="sr2", roi=(24, 24, 8), block_size=4, coarse=2, fine=4, progress=False, device="cpu", seed=0)
    fast = cc.compute_cem(model, image, **kw)
    paper = cc.compute_cem(model, image, mode="paper", **kw)
    assert fast.meta["fast"]["local_eval"]["used"] is True
    np.testing.assert_array_equal(fast.support, paper.support)
    assert fast.support.any() and not fast.support.all()


def test_a_region_runs_one_intervention_at_a_time_where_vmap_cannot_batch(monkeypatch):
    model = _window_sr()
    x = _image(32)[None]
    plan, _ = le.build_plan(model, x)

    def no_vmap(*a, **k):
        raise RuntimeError("vmap: not batched")

    monkeypatch.setattr(torch.func, "vmap", no_vmap)
    _local_matches_forward(model, x, (28, 36, 28, 36), [(0, 4, 0, 4), (12, 16, 12, 16)], plan)


def test_a_region_runs_a_large_group_in_chunks_that_equal_the_forward(monkeypatch):
    """A region's activations per image are its whole maps: a group of many interventions runs through it in
    chunks (here of one image's input each), with the same outputs as the forward."""
    model = _window_sr()
    x = _image(32)[None]
    plan, _ = le.build_plan(model, x)
    monkeypatch.setattr(le.region, "REGION_CHUNK_ELEMENTS", 12 * 32 * 32)
    calls = []
    vmap = torch.func.vmap

    def counted(fn):
        batched = vmap(fn)

        def run(*xs):
            calls.append(xs[0].shape[0])
            return batched(*xs)

        return run

    monkeypatch.setattr(torch.func, "vmap", counted)
    blocks = [(0, 4, 0, 4), (12, 16, 12, 16), (28, 32, 28, 32)]
    _local_matches_forward(model, x, (28, 36, 28, 36), blocks, plan)
    assert calls and set(calls) == {1}  # chunks of one image: 12 channels x 32 x 32 input elements each


class _NonLocal(nn.Module):
    """Attention across every pixel of the image (a non-local block): global."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.tail = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        f = self.head(x)
        b, c, h, w = f.shape
        t = f.flatten(2).transpose(1, 2)
        attn = (t @ t.transpose(1, 2) / c ** 0.5).softmax(-1)
        return x + self.tail((attn @ t).transpose(1, 2).reshape(b, c, h, w))


class _TwoOutputs(nn.Module):
    """Tokens that leave as two images."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b = nn.Conv2d(8, 3, 3, padding=1), nn.Conv2d(8, 3, 1)

    def forward(self, x):
        f = self.head(x)
        b, c, h, w = f.shape
        t = f.flatten(2).transpose(1, 2)
        return self.a(t.transpose(1, 2).reshape(b, c, h, w)) + self.b((2 * t).transpose(1, 2).reshape(b, c, h, w))


@pytest.mark.parametrize("make, words", [
    (_NonLocal, "every pixel of its output depends on the whole image (global from attn (softmax)"),
    (_TwoOutputs, "gives 2 results"),
])
def test_what_a_region_cannot_take_is_refused_by_name(make, words):
    torch.manual_seed(0)
    plan, why = le.build_plan(make().eval(), _image(16)[None])
    assert plan is None and words in why, why


def test_regions_leave_the_model_unchanged():
    model = _window_sr()
    x = _image(30)[None]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = model(x)
    plan, why = le.build_plan(model, x)
    assert why == "ok"
    _local_matches_forward(model, x, (20, 28, 36, 44), [(0, 4, 0, 4)], plan)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(x), before)
