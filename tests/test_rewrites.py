"""Local layers written the ways published architectures write them, which the plan reads after rewriting the graph
(:mod:`cem_checks.local_eval.rewrite`): channel parts (``chunk`` / ``split``, NAFNet's simple gate, MoSR's gated
convolution), channel assignment (PLKSR's partial convolution ``x[:, :k] = conv(x[:, :k])``), channels-last blocks
(ConvNeXt / MoSR: ``permute(0, 2, 3, 1)``, LayerNorm and Linear over channels, back), and PLKSR's
``repeat_interleave`` over channels. Each is evaluated locally within 1e-5 of the model's forward at border blocks,
its support equals paper mode's, and what reads a channels-last tensor in any other way is refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cem_checks as cc
from cem_checks import local_eval as le
from cem_checks.local_eval.plan import LocalPlan, _ops
from nets import _init


class SimpleGate(nn.Module):
    """NAFNet's gate without its global branch: a convolution to twice the channels, halves multiplied; then a
    split into uneven parts."""

    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(3, 16, 3, padding=1)
        self.mix = nn.Conv2d(8, 6, 3, padding=1)
        self.out = nn.Conv2d(4, 3, 1)
        _init(self, 10)

    def forward(self, x):
        a, b = self.expand(x).chunk(2, dim=1)
        y = self.mix(a * b)
        p, q = torch.split(y, [2, 4], dim=1)
        return x + 0.1 * self.out(q * torch.sigmoid(p).mean(1, keepdim=True))


class PartialConv(nn.Module):
    """PLKSR's partial convolution in eval mode: the first channels convolved in place, then a channel repeat."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.part = nn.Conv2d(3, 3, 5, padding=2)
        self.tail = nn.Conv2d(8, 3, 1)
        _init(self, 11)

    def forward(self, x):
        y = self.head(x)
        y[:, :3] = self.part(y[:, :3])
        return x + 0.1 * self.tail(y) + 0.01 * torch.repeat_interleave(x[:, :1], 3, dim=1)


class ConvNeXtBlock(nn.Module):
    """A ConvNeXt block: depthwise 7x7, then per pixel in channels-last LayerNorm, Linear, GELU, Linear, a layer
    scale, a split of the channels, back to NCHW, residual."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 2 * c), nn.Linear(c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))
        self.head = nn.Conv2d(c, 3, 3, padding=1)
        _init(self, 12)

    def forward(self, x):
        y = self.stem(x)
        t = self.dw(y).permute(0, 2, 3, 1)
        t = F.gelu(self.fc1(self.norm(t)))
        g, v = t.chunk(2, dim=-1)
        t = self.gamma * self.fc2(g * v)
        y = y + t.permute(0, 3, 1, 2)
        return x + 0.1 * self.head(y)


def _image(size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


def _local_matches_forward(model, x, roi, blocks, plan=None):
    """The ROI outputs of interventions on ``blocks`` evaluated locally equal the model's forward within 1e-5."""
    plan = plan or le.build_plan(model, x)[0]
    g = torch.Generator().manual_seed(5)
    y0, y1, x0, x1 = roi
    contents = [torch.rand(2, 3, b[1] - b[0], b[3] - b[2], generator=g) for b in blocks]
    with torch.inference_mode():
        ev = le.FrameEvaluator(plan, x, roi)
        assert torch.equal(ev.roi_base, model(x)[..., y0:y1, x0:x1])
        for (b0, b1, c0, c1), content, local in zip(blocks, contents, ev.roi_outputs_many(blocks, contents)):
            moved = x.repeat(2, 1, 1, 1)
            moved[..., b0:b1, c0:c1] = content
            assert float((local - model(moved)[..., y0:y1, x0:x1]).abs().max()) <= 1e-5


CASES = {  # model, image side, exact reach of the ROI output in input px, whether the symbolic trace reads it
    "simple-gate": (SimpleGate, 32, 2, True),
    "partial-conv": (PartialConv, 32, 3, False),  # the assignment needs the capture (a Proxy takes no item)
    "convnext": (ConvNeXtBlock, 32, 5, True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_rewritten_layer_is_evaluated_locally_and_matches_the_forward(name):
    make, side, reach, symbolic = CASES[name]
    model = make().eval()
    x = _image(side)[None]
    plan, why = le.build_plan(model, x)
    assert why == "ok" and (plan.shape is None) == symbolic
    # corners, a border, the inside: padding and the parts of a layer all matter there
    _local_matches_forward(model, x, (0, 8, 0, 8), [(0, 4, 0, 4), (4, 8, 8, 12), (12, 16, 0, 4)], plan)
    _local_matches_forward(model, x, (12, 20, 12, 20), [(8, 12, 8, 12), (20, 24, 16, 20)], plan)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_rewritten_layer_gives_the_exact_support(name):
    make, side, reach, _ = CASES[name]
    model = make().eval()
    image = _image(side, seed=1)
    kw = dict(task="dn25", roi=(12, 12, 8), block_size=4, coarse=2, fine=4, progress=False, device="cpu", seed=0)
    fast = cc.compute_cem(model, image, **kw)
    paper = cc.compute_cem(model, image, mode="paper", **kw)
    assert fast.meta["fast"]["local_eval"]["used"] is True
    np.testing.assert_array_equal(fast.support, paper.support)
    assert cc.support_radius(fast) == reach


def test_the_rewrite_leaves_the_model_unchanged():
    model = PartialConv().eval()
    x = _image(32)[None]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = model(x)
    assert le.build_plan(model, x)[1] == "ok"
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(x), before)


class _Tokens(ConvNeXtBlock):
    """Channels-last, then a reshape to tokens (the start of attention): not a rewrite, a region of tokens
    (tests/test_regions.py)."""

    def forward(self, x):
        t = self.dw(self.stem(x)).permute(0, 2, 3, 1)
        b, h, w, c = t.shape
        t = self.fc2(t.reshape(b, h * w, c)).reshape(b, h, w, c)
        return x + 0.1 * self.head(t.permute(0, 3, 1, 2))


class _Mixed(ConvNeXtBlock):
    """A channels-last tensor added to an NCHW image: a layout error (the model fails), refused."""

    def forward(self, x):
        y = self.stem(x)
        return x + 0.1 * self.head(y + y.permute(0, 2, 3, 1))


class _PositionEmbedding(ConvNeXtBlock):
    """A learnt embedding per pixel added in channels-last: it varies over pixels, so not per pixel (not a rewrite,
    a region of tokens: tests/test_regions.py)."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 32, 32, 8, generator=torch.Generator().manual_seed(3)))

    def forward(self, x):
        t = self.stem(x).permute(0, 2, 3, 1) + self.pos
        return x + 0.1 * self.head(t.permute(0, 3, 1, 2))


class _SpatialAssignment(PartialConv):
    def forward(self, x):
        y = self.head(x)
        y[..., :16, :] = 0.0
        return self.tail(y)


class _AssignIntoView(PartialConv):
    def forward(self, x):
        y = self.head(x)
        v = y[:, 2:]
        y[:, 2:5] = self.part(y[:, :3])
        return self.tail(torch.cat([y[:, :2], v], 1))


@pytest.mark.parametrize("make, words", [
    (_Mixed, "cannot capture it"),
    (_SpatialAssignment, "channels only are supported"),
    (_AssignIntoView, "before the assignment and is read after it"),
])
def test_what_the_rewrites_cannot_read_is_refused_by_name(make, words):
    plan, why = le.build_plan(make().eval(), _image(32)[None])
    assert plan is None and words in why, why


def test_a_graph_whose_constants_come_before_its_input():
    """A capture may put the constants it lifted before the input placeholder: the plan's first node is still the
    input, and the reach is the box the convolutions reach (not an empty box read off a constant)."""
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1)).eval()
    gm = torch.fx.symbolic_trace(model)
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    gm.register_buffer("offset", torch.zeros(1, 3, 1, 1))
    with gm.graph.inserting_before(placeholder):
        const = gm.graph.get_attr("offset")
    out = next(n for n in gm.graph.nodes if n.op == "output")
    with gm.graph.inserting_before(out):
        shifted = gm.graph.call_function(torch.add, (out.args[0], const))
    out.args = (shifted,)
    gm.recompile()
    assert list(gm.graph.nodes)[0].op == "get_attr"
    plan = LocalPlan(gm, _ops(gm))
    x = _image(32)[None]
    with torch.inference_mode():
        assert le.FrameEvaluator(plan, x, (12, 20, 12, 20)).reach() == (10, 22, 10, 22)
    _local_matches_forward(gm, x, (12, 20, 12, 20), [(8, 12, 8, 12), (0, 4, 0, 4)], plan)
