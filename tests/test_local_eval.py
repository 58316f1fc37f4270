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
from cem_checks.models import ChannelAttention, DnCNN


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


def _models():
    torch.manual_seed(0)
    dncnn = _init(DnCNN(features=8, depth=5), 1)
    return {"convstack-dilated": ConvStack((1, 2, 3)), "convstack-2-1-2": ConvStack((2, 1, 2), seed=3),
            "dncnn-5": dncnn, "residual-dag": ResidualDAG()}


H = W = 32
ROIS = {"centre": (12, 20, 12, 20), "corner": (0, 8, 24, 32)}
BLOCKS = {  # (y0, y1, x0, x1) in px
    "centre": {"inside": (12, 16, 16, 20), "next-to": (8, 12, 12, 16), "near": (20, 24, 4, 8), "far": (0, 4, 0, 4),
               "border": (28, 32, 12, 16)},
    "corner": {"inside": (0, 4, 28, 32), "next-to": (8, 12, 28, 32), "border-left": (0, 4, 16, 20),
               "far": (28, 32, 0, 4)},
}


@pytest.mark.parametrize("name", list(_models()))
@pytest.mark.parametrize("where", list(ROIS))
def test_local_evaluation_equals_the_full_forward(name, where):
    model = _models()[name].eval()
    plan, why = build_plan(model)
    assert plan is not None, why
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, H, W, generator=g)
    roi = ROIS[where]
    ev = FrameEvaluator(plan, x, roi)
    with torch.inference_mode():
        np.testing.assert_allclose(ev.roi_base.numpy(), model(x.clone())[:, :, roi[0] : roi[1], roi[2] : roi[3]].numpy(), atol=1e-6)
        for label, blk in BLOCKS[where].items():
            content = torch.rand(5, 3, blk[1] - blk[0], blk[3] - blk[2], generator=g)
            xs = x.expand(5, -1, -1, -1).clone()
            xs[:, :, blk[0] : blk[1], blk[2] : blk[3]] = content
            ref = model(xs)[:, :, roi[0] : roi[1], roi[2] : roi[3]]
            loc = ev.roi_outputs(blk, content)
            assert loc.shape == ref.shape
            diff = float((loc - ref).abs().max())
            assert diff <= 1e-5, f"{name}, ROI {where}, block {label}: max |diff| {diff:.3g}"
            assert float((ref - ev.roi_base).abs().max()) > 1e-3 or label in ("far", "border", "near", "border-left")


def test_schedule_shrinks_with_distance_and_is_empty_beyond_the_radius():
    model = _init(DnCNN(features=4, depth=4), 0)
    plan, _ = build_plan(model)
    roi = (12, 20, 12, 20)
    near = plan.conv_pixels(plan.schedule((12, 16, 12, 16), roi, (H, W)))
    edge = plan.conv_pixels(plan.schedule((8, 12, 12, 16), roi, (H, W)))
    beyond = plan.schedule((0, 4, 0, 4), roi, (H, W))  # Chebyshev gap 8 > radius 4
    assert 0 < edge < near < H * W
    assert all(b == local_eval.EMPTY for b in beyond[:-1]) and plan.conv_pixels(beyond) == 0


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


@pytest.mark.parametrize("model, reason", [
    (_Attention(), "AdaptiveAvgPool2d is not a local"),
    (PixelShuffleSR(), "PixelShuffle is not a local"),
    (StridedSR(), "strided convolution"),
    (_SharedInPlace(), "in-place ReLU on a tensor that is read elsewhere"),
    (_ValidConv(), "does not keep the resolution"),
    (lambda x: x, "not an nn.Module"),
])
def test_plan_is_refused_for_non_local_graphs(model, reason):
    plan, why = build_plan(model)
    assert plan is None and reason in why


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
    (ConvStack((1, 2, 1)), dict(tol_db=0.0), "not used: tol_db = 0"),
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
        assert info["check"] in ("not needed: no flagged block",) or info["used"], info


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
