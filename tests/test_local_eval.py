"""Local evaluation (cem_checks.local_eval): exactness against the full forward, refusal of non-local graphs,
and fast mode with it on and off."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nets import Affine, ConvStack, PixelShuffleSR, StridedSR, _init
from torch import nn

import cem_checks as cc
from cem_checks import local_eval
from cem_checks.local_eval import FrameEvaluator, build_plan
from cem_checks.models import ChannelAttention, CompactSR, DnCNN, FFDNetLike, UNetSR


class ResidualDAG(nn.Module):
    """A DAG of supported local ops: BatchNorm (eval), PReLU, dilated and grouped convs, a skip connection,
    functional and method pointwise ops, an in-place ReLU on a single-use tensor."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.head = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.act = nn.PReLU(6)
        self.mid = nn.Conv2d(6, 6, (3, 5), padding=(2, 4), dilation=2, groups=3)
        self.relu = nn.ReLU(inplace=True)
        self.tail = nn.Conv2d(6, 3, 1)
        _init(self, seed)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.1, 0.1)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        f = self.act(self.bn(self.head(x)))
        g = self.relu(self.mid(f))
        y = self.tail(f + 0.5 * g).clamp(-2, 2)
        return torch.sigmoid(x.mul(2.0) - y) + F.leaky_relu(y, 0.1) * 0.1


class PadPoolResample(nn.Module):
    """Reflect, replicate and circular padding, a functional convolution after F.pad, average and max pooling with a
    stride, bicubic upsampling back and a spatial crop: every gathering and windowed operation in one graph."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
        self.b = nn.Conv2d(4, 4, 3, padding=2, dilation=2, padding_mode="replicate")
        self.c = nn.Conv2d(4, 3, 3, padding=1, padding_mode="circular")
        self.w = nn.Parameter(torch.zeros(3, 3, 3, 3))
        _init(self, seed)

    def forward(self, x):
        y = self.c(F.relu(self.b(F.relu(self.a(x)))))
        y = F.conv2d(F.pad(y, (1, 1, 1, 1), mode="reflect"), self.w)
        down = F.avg_pool2d(y, 2) + F.max_pool2d(y, 3, stride=2, padding=1)
        up = F.interpolate(down, scale_factor=2, mode="bicubic", align_corners=False)
        wide = F.pad(up, (2, 2, 2, 2))
        return x + 0.1 * wide[..., 2:-2, 2:-2]


class BilinearSR(nn.Module):
    """x3 SR: nn.Upsample (bilinear) of the input plus a conv stack on nn.Upsample (nearest) features."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.head = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=3, mode="nearest")
        self.smooth = nn.Upsample(scale_factor=3, mode="bilinear", align_corners=False)
        self.tail = nn.Conv2d(4, 3, 3, padding=1)
        _init(self, seed)

    def forward(self, x):
        return self.smooth(x) + 0.1 * self.tail(torch.relu(self.up(self.head(x))))


def _models():
    torch.manual_seed(0)
    return {  # name: (model, scale)
        "convstack-dilated": (ConvStack((1, 2, 3)), 1), "convstack-2-1-2": (ConvStack((2, 1, 2), seed=3), 1),
        "dncnn-5": (_init(DnCNN(features=8, depth=5), 1), 1), "residual-dag": (ResidualDAG(), 1),
        "ffdnet-like": (_init(FFDNetLike(features=8, layers=5), 2), 1),
        "compact-x2": (_init(CompactSR(scale=2, features=8, convs=3), 3), 2),
        "compact-x3": (_init(CompactSR(scale=3, features=8, convs=2), 4), 3),
        "compact-x4": (_init(CompactSR(scale=4, features=8, convs=2), 5), 4),
        "unet-x2": (_init(UNetSR(scale=2, features=8), 6), 2),
        "pad-pool-resample": (PadPoolResample(), 1), "bilinear-x3": (BilinearSR(), 3),
        "pixelshuffle-x2": (PixelShuffleSR(2), 2), "strided-x2": (StridedSR(), 2),
    }


H = W = 32
ROIS = {"centre": (12, 20, 12, 20), "corner": (0, 8, 24, 32)}  # input px; times the scale in the output


@pytest.mark.parametrize("name", list(_models()))
@pytest.mark.parametrize("where", list(ROIS))
def test_local_evaluation_equals_the_full_forward(name, where):
    """Every block of the grid (borders and corners included) against the full forward, within 1e-5 of the output's
    magnitude (float rounding of the sub-box kernels)."""
    model, s = _models()[name]
    model.eval()
    plan, why = build_plan(model)
    assert plan is not None, why
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, H, W, generator=g)
    roi = tuple(v * s for v in ROIS[where])
    with torch.inference_mode():
        ev = FrameEvaluator(plan, x, roi)
        full = model(x.clone())
        tol = 1e-5 * max(1.0, float(full.abs().max()))
        np.testing.assert_allclose(ev.roi_base.numpy(), full[:, :, roi[0]: roi[1], roi[2]: roi[3]].numpy(), atol=tol)
        blocks = [(a, a + 4, b, b + 4) for a in range(0, H, 4) for b in range(0, W, 4)]
        contents = [torch.rand(3, 3, 4, 4, generator=g) for _ in blocks]
        outs = ev.roi_outputs_many(blocks, contents)
        changed = 0
        for blk, content, loc in zip(blocks, contents, outs):
            xs = x.expand(3, -1, -1, -1).clone()
            xs[:, :, blk[0]: blk[1], blk[2]: blk[3]] = content
            ref = model(xs)[:, :, roi[0]: roi[1], roi[2]: roi[3]]
            assert loc.shape == ref.shape
            diff = float((loc - ref).abs().max())
            assert diff <= tol, f"{name}, ROI {where}, block {blk}: max |diff| {diff:.3g} > {tol:.3g}"
            changed += float((ref - ev.roi_base).abs().max()) > tol
        assert changed > 0  # the test intervenes where it matters


@pytest.mark.parametrize("name", ["unet-x2", "pad-pool-resample", "compact-x3", "ffdnet-like"])
def test_local_evaluation_is_exact_in_float64(name):
    model, s = _models()[name]
    model = model.double().eval()
    plan, _ = build_plan(model)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, H, W, generator=g, dtype=torch.float64)
    roi = tuple(v * s for v in ROIS["centre"])
    with torch.inference_mode():
        ev = FrameEvaluator(plan, x, roi)
        for blk in [(0, 4, 0, 4), (8, 12, 12, 16), (12, 16, 16, 20), (28, 32, 28, 32)]:
            content = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64)
            xs = x.expand(2, -1, -1, -1).clone()
            xs[:, :, blk[0]: blk[1], blk[2]: blk[3]] = content
            ref = model(xs)[:, :, roi[0]: roi[1], roi[2]: roi[3]]
            loc = ev.roi_outputs(blk, content)
            assert float((loc - ref).abs().max()) <= 1e-9 * max(1.0, float(ref.abs().max()))


def test_blocks_evaluated_together_equal_blocks_evaluated_alone():
    model, _ = _models()["dncnn-5"]
    plan, _ = build_plan(model.eval())
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 3, H, W, generator=g)
    ev = FrameEvaluator(plan, x, ROIS["centre"])
    blocks = [(a, a + 4, b, b + 4) for a in range(4, 28, 4) for b in range(4, 28, 4)]
    contents = [torch.rand(2, 3, 4, 4, generator=g) for _ in blocks]
    with torch.inference_mode():
        together = ev.roi_outputs_many(blocks, contents, slack=1.0)  # as on a GPU
        groups = ev.last_groups
        alone = [ev.roi_outputs(b, c) for b, c in zip(blocks, contents)]
    assert groups <= len(blocks) // 2
    for a, b in zip(together, alone):
        assert float((a - b).abs().max()) <= 1e-5


def test_group_costs_count_multiply_adds_and_the_calls_saved():
    """The work of a box is the multiply-adds of its convolutions (weight size per output pixel) plus the
    channels of other operations; far apart blocks of a small model join one group once the cost of a call is
    counted, and give the same outputs as blocks evaluated alone."""
    model = _init(DnCNN(features=4, depth=5), 3)
    plan, _ = build_plan(model)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(1, 3, H, W, generator=g)
    ev = FrameEvaluator(plan, x, ROIS["centre"])
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    box = (10, 14, 10, 14)
    comp = [box if op.kind == "op" else local_eval.EMPTY for op in plan.ops]
    others = sum(v.shape[1] for op, v in zip(plan.ops, ev.base) if op.kind == "op" and not op.conv_like)
    assert ev.work(comp) == 16 * (sum(c.weight.numel() for c in convs) + others)
    blocks = [(8, 12, 8, 12), (8, 12, 20, 24), (20, 24, 8, 12), (20, 24, 20, 24)]  # within the 5 px reach
    contents = [torch.rand(2, 3, 4, 4, generator=g) for _ in blocks]
    with torch.inference_mode():
        apart = ev.roi_outputs_many(blocks, contents, slack=0.15, call=0.0)
        assert ev.last_groups == 4
        joined = ev.roi_outputs_many(blocks, contents, slack=0.15, call=1e9)
        assert ev.last_groups == 1
    for a, b in zip(apart, joined):
        assert float((a - b).abs().max()) <= 1e-5


def test_a_group_evaluates_the_unchanged_input_once_with_the_same_arithmetic():
    """Each group of blocks evaluated together also evaluates the unchanged input once: a draw that writes a
    block's own pixels back gives that output bit for bit (so it never counts as a change), one that writes other
    content within the reach does not."""
    model = _init(DnCNN(features=4, depth=5), 3)
    plan, _ = build_plan(model)
    g = torch.Generator().manual_seed(6)
    x = torch.rand(1, 3, H, W, generator=g)
    ev = FrameEvaluator(plan, x, ROIS["centre"])
    blocks = [(8, 12, 8, 12), (8, 12, 12, 16), (20, 24, 20, 24)]
    contents = [torch.cat([x[..., b0:b1, c0:c1], torch.rand(1, 3, 4, 4, generator=g)]) for b0, b1, c0, c1 in blocks]
    with torch.inference_mode():
        outs, bases = ev.roi_outputs_and_bases(blocks, contents, slack=1.0, call=0.0)
        groups = ev.last_groups
        draws = ev.draws
    assert groups < len(blocks) and draws == 2 * len(blocks)  # the unchanged inputs are not counted as draws
    assert len({b.data_ptr() for b in bases}) == groups  # one unchanged input per group, shared by its blocks
    for out, base in zip(outs, bases):
        assert torch.equal(out[:1], base)
        assert not torch.equal(out[1:], base)


def test_schedule_shrinks_with_distance_and_is_empty_beyond_the_radius():
    model = _init(DnCNN(features=4, depth=4), 0)
    plan, _ = build_plan(model)
    ev = FrameEvaluator(plan, torch.rand(1, 3, H, W), (12, 20, 12, 20))
    near = ev.schedule((12, 16, 12, 16))[1]
    edge = ev.schedule((8, 12, 12, 16))[1]
    comp, px = ev.schedule((0, 4, 0, 4))  # Chebyshev gap 8 > radius 4
    assert 0 < edge < near < H * W
    assert all(b == local_eval.EMPTY for b in comp[:-1]) and px == 0
    assert ev.reach() == (8, 24, 8, 24)  # the ROI grown by the 4 px radius


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.ca = ChannelAttention(8)
        self.out = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        return self.out(self.ca(self.conv(x)))


class _SharedInPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.conv(x)
        return self.relu(y) + y


class _ValidConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)

    def forward(self, x):
        return self.conv(x)


class _LayerNormed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.norm = nn.GroupNorm(1, 3)

    def forward(self, x):
        return self.norm(self.conv(x))


class _SelfAttention(nn.Module):
    def forward(self, x):
        q = x.flatten(2)
        return x + torch.softmax(q.transpose(1, 2) @ q, -1).mean() * x


class _Resampled(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.kw = kw

    def forward(self, x):
        return F.interpolate(x, **self.kw)


class _CeilPool(nn.Module):
    def forward(self, x):
        return F.max_pool2d(x, 3, stride=2, ceil_mode=True)


@pytest.mark.parametrize("model, reason", [
    (_Attention(), "AdaptiveAvgPool2d is not a local operation (global pooling)"),
    (_LayerNormed(), "GroupNorm is not a local operation (a normalisation over the spatial dims)"),
    (_SelfAttention(), ".flatten() is a reshape"),
    (_SharedInPlace(), "in-place ReLU on a tensor that is read elsewhere"),
    (_Resampled(scale_factor=2, mode="bilinear", align_corners=True), "align_corners=True"),
    (_Resampled(scale_factor=1.5, mode="nearest"), "non-integer factor 1.5"),
    (_Resampled(size=(64, 64), mode="nearest"), "resampling to a size"),
    (_CeilPool(), "ceil_mode=True"),
    (lambda x: x, "not an nn.Module"),
])
def test_plan_is_refused_for_global_or_unsupported_graphs(model, reason):
    plan, why = build_plan(model)
    assert plan is None and reason in why, why


def test_shape_dependent_model_is_refused():
    class SizeDependent(nn.Module):
        def forward(self, x):
            return x + x.shape[-1] * 1e-3

    plan, why = build_plan(SizeDependent())
    assert plan is None and ("getattr" in why or "not supported" in why or "trace" in why)


@pytest.fixture(scope="module")
def natural64(natural32):
    return np.concatenate([np.concatenate([natural32] * 2, 0)] * 2, 1)


KW = dict(task="dn25", roi=(24, 24, 8), block_size=4, coarse=3, fine=20, progress=False, device="cpu", seed=0)


@pytest.mark.parametrize("model", [ConvStack((1, 2, 1)), _init(DnCNN(features=8, depth=5), 2)], ids=["convstack", "dncnn"])
def test_fast_mode_with_local_evaluation_agrees_with_the_normal_forward(model, natural64):
    on = cc.compute_cem(model, natural64, **KW)
    off = cc.compute_cem(model, natural64, fast=cc.FastOptions(local_eval=False), **KW)
    info = on.meta["fast"]["local_eval"]
    assert info["used"] and info["draws"] > 0 and "check draws" in info["check"]
    assert off.meta["fast"]["local_eval"] == {"used": False, "check": "off", "draws": 0, "check_draws": 0, "pixels": 0}
    crop = on.meta["fast"]["crop"]
    assert crop is not None
    assert 0 < info["pixels"] < info["draws"] * crop[2] * crop[3]  # fewer pixels per draw than a forward on the crop
    np.testing.assert_array_equal(on.support, off.support)
    np.testing.assert_array_equal(on.flagged, off.flagged)
    a, b = np.nan_to_num(on.samples_db, nan=-1.0), np.nan_to_num(off.samples_db, nan=-1.0)
    same = np.all(a == b, axis=-1)
    assert same.mean() >= 0.99
    assert np.abs(a - b).max() < 0.01  # at most a few 8-bit flips of one ROI pixel
    assert np.abs(on.raw_effect - off.raw_effect).max() < 1e-3
    # honest counts: every locally evaluated image is a pass; fewer pixels are computed
    assert on.forward_passes >= off.forward_passes
    assert on.pixels_processed < off.pixels_processed


def test_local_evaluation_falls_back_when_the_check_fails(natural64, monkeypatch):
    model = ConvStack((1, 2, 1))
    off = cc.compute_cem(model, natural64, fast=cc.FastOptions(local_eval=False), **KW)
    orig = local_eval.LocalPlan.evaluate
    monkeypatch.setattr(local_eval.LocalPlan, "evaluate", lambda *a, **k: orig(*a, **k) + 1e-3)
    res = cc.compute_cem(model, natural64, **KW)
    info = res.meta["fast"]["local_eval"]
    assert not info["used"] and info["check"].startswith("failed: max |diff|") and info["draws"] == 0
    np.testing.assert_array_equal(res.samples_db, off.samples_db)
    np.testing.assert_array_equal(res.support, off.support)


@pytest.mark.parametrize("model, kw, check", [
    (_Attention(), {}, "unsupported: "),
    (ConvStack((1, 2, 1)), dict(precision="bf16"), "not used: precision"),
    (ConvStack((1, 2, 1)), dict(fast=cc.FastOptions(local_eval=False)), "off"),
    (Affine(), dict(patches=np.full((1, 4, 4, 3), 50, np.uint8), task=cc.Denoising(0)), ""),
])
def test_local_evaluation_is_skipped_with_a_reason(model, kw, check, natural64):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cc.compute_cem(model, natural64, **{**KW, "fine": 5, **kw})
    info = res.meta["fast"]["local_eval"]
    if check:
        assert not info["used"] and info["check"].startswith(check), info
    else:  # pixel-wise model: usable (or nothing flagged); never wrong
        assert info["check"] in ("not needed: no block to draw",) or info["used"], info


def test_local_evaluation_with_the_cache_resumes_to_the_same_map(natural64, tmp_path):
    model = ConvStack((1, 2, 1))
    first = cc.compute_cem(model, natural64, cache_dir=tmp_path, **KW)
    again = cc.compute_cem(model, natural64, cache_dir=tmp_path, **KW)
    assert again.meta["cache"]["hits"] > 0
    np.testing.assert_array_equal(first.samples_db, again.samples_db)


def test_local_evaluation_of_the_real_dncnn_equals_the_full_forward(shared_data):
    sd = torch.load(shared_data / "dncnn_color_blind.pth", map_location="cpu", weights_only=True)
    model = DnCNN.from_state_dict(sd).eval()
    plan, why = build_plan(model)
    assert plan is not None, why
    x = cc.load_image(shared_data / "demo_2.png")[None, :, 100:148, 100:148].contiguous()
    g = torch.Generator().manual_seed(0)
    x = (x + torch.randn(x.shape, generator=g) * 50 / 255).clamp(0, 1)
    roi = (16, 32, 16, 32)
    ev = FrameEvaluator(plan, x, roi)
    blocks = {"inside": (16, 24, 24, 32), "next-to": (8, 16, 16, 24), "corner-border": (0, 8, 40, 48)}
    with torch.inference_mode():
        for label, blk in blocks.items():
            content = torch.rand(3, 3, 8, 8, generator=g)
            xs = x.expand(3, -1, -1, -1).clone()
            xs[:, :, blk[0] : blk[1], blk[2] : blk[3]] = content
            ref = model(xs)[:, :, roi[0] : roi[1], roi[2] : roi[3]]
            diff = float((ev.roi_outputs(blk, content) - ref).abs().max())
            assert diff <= 1e-5, f"block {label}: max |diff| {diff:.3g}"
    assert ev.pixels < 3 * 48 * 48 * 3  # far fewer conv pixels than three full forwards per block


@pytest.mark.parametrize("name, task, roi, block", [
    ("ffdnet-like", "dn25", (24, 24, 8), 4),
    ("compact-x2", "sr2", (24, 24, 16), 2),
    ("unet-x2", "sr2", (24, 24, 16), 2),
])
def test_coarse_and_fine_draws_are_local_and_the_support_stays_exact(name, task, roi, block, natural64):
    """Local evaluation of the coarse draws (flagging) and the fine draws, for the families the engine now traces;
    against the normal forward: the same support (exact: confirmed through the normal forward where no local draw
    clearly changed the ROI output), the same flagged set, effects within a few 8-bit flips."""
    model, _ = _models()[name]
    kw = dict(task=task, roi=roi, block_size=block, coarse=3, fine=10, progress=False, device="cpu", seed=1)
    with torch.inference_mode():
        on = cc.compute_cem(model, natural64, **kw)
        off = cc.compute_cem(model, natural64, fast=cc.FastOptions(local_eval=False), **kw)
    info = on.meta["fast"]["local_eval"]
    assert info["used"], info
    candidates = on.meta["fast"]["candidates"]
    assert info["draws"] >= 3 * candidates  # the coarse draws of every candidate were evaluated locally
    np.testing.assert_array_equal(on.support, off.support)
    np.testing.assert_array_equal(on.flagged, off.flagged)
    assert np.abs(on.raw_effect - off.raw_effect).max() < 0.02
    assert on.pixels_processed < off.pixels_processed
    assert "support_confirmed" in on.meta["fast"]
