"""Local evaluation of models written with shape code, as repositories write them: the symbolic trace cannot read
``x.shape``, padding to a multiple, sizes passed to ``interpolate`` or a wrapper function, so the model is captured
as it runs at the job's input shape (``torch.compile``, static shapes), where every size is a constant. The plan is
then verified like any other (local vs full forward on real interventions, a border block among them), its reach
confirmed by a group test, and the support equals paper mode's exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cem_checks as cc
from cem_checks import local_eval as le
from nets import _init
from test_rewrites import _local_matches_forward


class KairFFDNet(nn.Module):
    """FFDNet as KAIR writes it: the size read from ``x.shape``, padding to even sizes, a noise-level map of the
    downsampled size, crop back to the input size."""

    def __init__(self, sigma: float = 25 / 255):
        super().__init__()
        self.sigma = sigma
        self.body = nn.Sequential(nn.Conv2d(13, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 12, 3, padding=1))
        _init(self, 0)

    def forward(self, x):
        n, c, h, w = x.shape
        x = F.pad(x, (0, w % 2, 0, h % 2), mode="replicate")
        y = F.pixel_unshuffle(x, 2)
        noise = torch.full((n, 1, y.shape[2], y.shape[3]), self.sigma, device=x.device, dtype=x.dtype)
        y = F.pixel_shuffle(self.body(torch.cat([y, noise], 1)), 2)
        return y[..., :h, :w]


class PadToMultiple(nn.Module):
    """A U-Net-style ``check_image_size``: reflect-pad to a multiple of 8, a strided encoder and a pixel-shuffle
    decoder, crop back."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.up = nn.Conv2d(8, 12, 1)
        _init(self, 1)

    def forward(self, x):
        h, w = x.shape[-2:]
        ph, pw = (8 - h % 8) % 8, (8 - w % 8) % 8
        y = F.pad(x, (0, pw, 0, ph), mode="reflect")
        y = F.pixel_shuffle(self.up(F.relu(self.mid(F.relu(self.down(y))))), 2)
        return x + 0.1 * y[:, :, :h, :w]


class InterpolateBySize(nn.Module):
    """x2 SR upsampled by size (``F.interpolate(size=(2h, 2w))``), a residual convolution on top."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        _init(self, 2)

    def forward(self, x):
        h, w = x.shape[2], x.shape[3]
        up = F.interpolate(x, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)
        return up + 0.1 * self.conv(up)


class BranchOnSize(nn.Module):
    """Control flow on the input's size, resolved at capture."""

    def __init__(self):
        super().__init__()
        self.small, self.large = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 5, padding=2)
        _init(self, 3)

    def forward(self, x):
        if x.shape[-1] >= 48:
            return x + 0.1 * self.large(x)
        return x + 0.1 * self.small(x)


class ChannelNorm(nn.Module):
    """As NAFNet-family code writes its LayerNorm2d: a normalisation over channels (``x.mean(1, keepdim=True)``,
    ``.mean`` of the squares), per pixel, so local; the size read from ``x.shape`` for the crop back."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1)
        _init(self, 5)

    def forward(self, x):
        h, w = x.shape[-2:]
        y = self.conv1(x)
        mu = y.mean(1, keepdim=True)
        var = (y - mu).pow(2).mean(1, keepdim=True)
        y = (y - mu) / (var + 1e-6).sqrt()
        return (x + 0.1 * self.conv2(y))[..., :h, :w]


class SpatialMean(nn.Module):
    """Shape code around a global operation: captured, then refused for the mean over the image."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        _init(self, 4)

    def forward(self, x):
        h = x.shape[-2]
        return self.conv(x) + x.mean(dim=(2, 3), keepdim=True) * (h / h)


def _image(size: int) -> torch.Tensor:
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(size))


CASES = {  # model, task, image side, ROI, block, exact reach of the ROI output in input px
    "kair-ffdnet": (KairFFDNet, "dn25", 48, (16, 16, 16), 4, 4),
    "pad-to-multiple": (PadToMultiple, "dn25", 44, (16, 16, 8), 4, 3),
    "interpolate-by-size": (InterpolateBySize, "sr2", 24, (16, 16, 8), 2, 1),  # bilinear +-1, then a 3x3 conv at 2x
    "branch-on-size": (BranchOnSize, "dn25", 48, (16, 16, 16), 4, 2),
    "channel-norm": (ChannelNorm, "dn25", 32, (8, 8, 16), 4, 2),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_shape_code_is_captured_and_evaluated_locally(name):
    make, task, side, roi, block, reach = CASES[name]
    model = make().eval()
    image = _image(side)
    x = image[None]
    assert le.build_plan(model)[0] is None  # the symbolic trace alone cannot read it
    plan, why = le.build_plan(model, x)
    assert why == "ok" and plan.shape == tuple(x.shape)
    kw = dict(task=task, roi=roi, block_size=block, coarse=2, fine=4, progress=False, device="cpu", seed=0)
    fast = cc.compute_cem(model, image, **kw)
    paper = cc.compute_cem(model, image, mode="paper", **kw)
    info = fast.meta["fast"]["local_eval"]
    # verified against the model's forward on real interventions (nearest, farthest, median, a border block)
    assert info["used"] is True and info["draws"] > 0, info
    np.testing.assert_array_equal(fast.support, paper.support)
    assert cc.support_radius(fast) == reach


def test_a_captured_plan_matches_the_forward_at_border_blocks():
    """At the image's corner the replicate padding and the crop back both matter; the ROI outputs of interventions
    evaluated locally equal the model's forward within 1e-5."""
    model = KairFFDNet().eval()
    x = _image(47)[None]  # odd: the capture pads to 48 and crops back
    plan, _ = le.build_plan(model, x)
    roi = (0, 8, 0, 8)
    g = torch.Generator().manual_seed(9)
    blocks = [(0, 4, 4, 8), (8, 12, 0, 4), (4, 8, 8, 12)]  # (y0, y1, x0, x1): on the top and left borders, inside
    contents = [torch.rand(2, 3, 4, 4, generator=g) for _ in blocks]
    with torch.inference_mode():
        ev = le.FrameEvaluator(plan, x, roi)
        assert torch.equal(ev.roi_base, model(x)[..., :8, :8])
        got = ev.roi_outputs_many(blocks, contents)
        for (y0, y1, x0, x1), content, local in zip(blocks, contents, got):
            moved = x.repeat(2, 1, 1, 1)
            moved[..., y0:y1, x0:x1] = content
            assert float((local - model(moved)[..., :8, :8]).abs().max()) <= 1e-5


def test_a_plan_captured_at_one_shape_refuses_another():
    model = KairFFDNet().eval()
    plan, _ = le.build_plan(model, _image(48)[None])
    with pytest.raises(le.Refused, match=r"captured for inputs of shape \(1, 3, 48, 48\), not \(1, 3, 32, 32\)"):
        le.FrameEvaluator(plan, _image(32)[None], (8, 16, 8, 16))


def test_a_wrapper_function_is_captured():
    model = KairFFDNet().eval()
    plan, why = le.build_plan(lambda t: model(t * 2.0) / 2.0, _image(32)[None])
    assert why == "ok" and plan is not None


def test_a_mean_over_the_image_stays_global_where_one_over_channels_is_local():
    class OverImage(ChannelNorm):
        def forward(self, x):
            h = x.shape[-1]
            y = self.conv1(x)
            return x + 0.1 * self.conv2(y - y.mean((2, 3), keepdim=True)) * (h / h)

    plan, why = le.build_plan(OverImage().eval(), _image(32)[None])
    assert plan is None and ".mean() is a reduction" in why
    assert le.build_plan(ChannelNorm().eval(), _image(32)[None])[1] == "ok"


def test_capture_refuses_a_global_operation_by_name():
    plan, why = le.build_plan(SpatialMean().eval(), _image(32)[None])
    assert plan is None and "mean" in why and "captured at (1, 3, 32, 32)" in why


def test_capture_leaves_the_model_as_it_was():
    class Writes(KairFFDNet):
        def forward(self, x):
            self.last_size = x.shape[-1]
            self.seen = x
            return super().forward(x)

    model = Writes().eval()
    before = dict(model.__dict__)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = _image(32)[None]
    plan, why = le.build_plan(model, x)
    assert why == "ok"
    assert model.__dict__.keys() == before.keys() and all(model.__dict__[k] is v for k, v in before.items())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not hasattr(model, "last_size") and torch.equal(model(x), KairFFDNet.forward(model, x))


def test_captures_go_on_past_torch_compiles_recompile_limit():
    """TorchDynamo compiles a function at most ``recompile_limit`` (8) times, one entry per input shape; the
    capture drops its entries, so a session mapping one model class at many shapes keeps capturing it."""
    model = KairFFDNet().eval()
    whys = [le.capture(model, torch.rand(1, 3, side, side))[1] for side in range(20, 44, 2)]  # 12 shapes
    assert whys == ["ok"] * 12


def test_a_job_captures_its_model_once_per_input_shape(monkeypatch, natural32):
    """The traced reach and local evaluation share one plan per input shape: a model whose crop is refused runs
    everything at the full input's shape, read once (by the trace at that shape)."""
    import importlib

    from test_fast_mode import NeedsMultipleOf32

    plan_module = importlib.import_module("cem_checks.local_eval.plan")
    shapes = []

    def counted(read):
        def at(model, x):
            shapes.append(tuple(x.shape))
            return read(model, x)
        return at

    # the trace at a shape reads this model; the capture (TorchDynamo) is not needed
    monkeypatch.setattr(plan_module, "shaped_trace", counted(plan_module.shaped_trace))
    monkeypatch.setattr(plan_module, "capture", counted(le.capture))
    big = np.concatenate([np.concatenate([natural32] * 2, 0)] * 2, 1)
    res = cc.compute_cem(NeedsMultipleOf32(), big, task="dn20", roi=(24, 24, 8), block_size=4, coarse=2, fine=4,
                         progress=False, device="cpu")
    assert res.meta["fast"]["crop"] is None and res.meta["fast"]["local_eval"]["used"] is True
    assert shapes == [(1, 3, 64, 64)]


def test_the_baseline_computed_when_reading_a_model_serves_its_first_evaluator_on_that_input():
    model = KairFFDNet().eval()
    x, other = _image(32)[None], _image(33)[None, :, :32, :32]
    plan, why = le.build_plan(model, x)
    assert why == "ok" and plan.shape == (1, 3, 32, 32) and plan.built is not None
    kept = plan.built[1]
    with torch.inference_mode():
        ev = le.FrameEvaluator(plan, x, (8, 16, 8, 16))
        assert plan.built is None and ev.base is kept  # handed over once
        assert torch.equal(ev.roi_base, model(x)[..., 8:16, 8:16])
    plan, _ = le.build_plan(model, x)
    kept = plan.built[1]
    with torch.inference_mode():
        ev = le.FrameEvaluator(plan, other, (8, 16, 8, 16))  # another input: its own baseline
        assert ev.base is not kept and torch.equal(ev.roi_base, model(other)[..., 8:16, 8:16])


def test_the_traced_reach_and_the_draws_share_one_frame_evaluator(monkeypatch, natural32):
    """Where the draws run in the full input, the baseline activations the traced reach computed serve them too."""
    from test_fast_mode import NeedsMultipleOf32

    built = []
    init = le.FrameEvaluator.__init__

    def counted(self, plan, x, roi):
        built.append((tuple(x.shape), roi))
        init(self, plan, x, roi)

    monkeypatch.setattr(le.FrameEvaluator, "__init__", counted)
    big = np.concatenate([np.concatenate([natural32] * 2, 0)] * 2, 1)
    res = cc.compute_cem(NeedsMultipleOf32(), big, task="dn20", roi=(24, 24, 8), block_size=4, coarse=2, fine=4,
                         progress=False, device="cpu")
    assert res.meta["fast"]["local_eval"]["used"] is True and res.meta["fast"]["local_eval"]["draws"] > 0
    assert built == [((1, 3, 64, 64), (24, 32, 24, 32))]


class _Hooked(nn.Module):
    """Shape code (padding to a multiple of 4) inside a block whose forward hook doubles its output."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
        self.inner = _PadTo4(self.block)
        self.inner.register_forward_hook(lambda m, i, o: o * 2)

    def forward(self, x):
        return x + 0.1 * self.inner(x)


class _TypeChecked(_Hooked):
    """A type check on the input: a traced proxy is no tensor, so the trace at a shape records the other branch,
    its output differs from the model's, and TorchDynamo, which runs on real tensors, captures the model instead."""

    def forward(self, x):
        if not isinstance(x, torch.Tensor):
            return self.inner(x)
        return x + 0.1 * self.inner(x)


class _PadTo4(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        h, w = x.shape[-2:]
        return self.body(F.pad(x, (0, (-w) % 4, 0, (-h) % 4), mode="replicate"))[..., :h, :w]


class _ReadsValues(nn.Module):
    """A branch on the input's content through ``.item()``: data-dependent, not a size."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        h = x.shape[-1]
        return self.conv(x) * (2.0 if x.mean().item() > 0.5 else 1.0) + h * 0.0


def test_the_trace_at_a_shape_reads_shape_code_without_the_compiler(monkeypatch):
    import importlib

    plan_module = importlib.import_module("cem_checks.local_eval.plan")
    monkeypatch.setattr(plan_module, "capture", lambda model, x: pytest.fail("TorchDynamo was not needed"))
    torch.manual_seed(0)
    model = _PadTo4(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))).eval()
    x = _image(30)[None]
    plan, why = le.build_plan(model, x)
    assert why == "ok" and plan.shape == (1, 3, 30, 30)
    with torch.no_grad():
        assert torch.equal(plan.baseline(x)[-1], model(x))


@pytest.mark.parametrize("make, dynamo", [(_Hooked, False), (_TypeChecked, True)])
def test_the_trace_at_a_shape_is_used_only_where_it_gives_the_models_output(monkeypatch, make, dynamo):
    """Hooks run in the trace (on modules traced through too); a graph whose output differs from the model's
    (here a branch on the input's type) is not used: the capture reads the model instead."""
    import importlib

    plan_module = importlib.import_module("cem_checks.local_eval.plan")
    read = []
    real = plan_module.capture
    monkeypatch.setattr(plan_module, "capture", lambda model, x: read.append(tuple(x.shape)) or real(model, x))
    torch.manual_seed(0)
    model = make().eval()
    x = _image(30)[None]
    plan, why = le.build_plan(model, x)
    assert why == "ok" and read == ([(1, 3, 30, 30)] if dynamo else [])
    with torch.no_grad():
        assert torch.equal(plan.baseline(x)[-1], model(x))
    _local_matches_forward(model, x, (12, 20, 12, 20), [(0, 4, 0, 4), (12, 16, 16, 20), (26, 30, 26, 30)], plan)


def test_the_trace_at_a_shape_refuses_values_read_into_python():
    gm, why = le.shaped.shaped_trace(_ReadsValues().eval(), _image(16)[None])
    assert gm is None and "item reads the input's values into Python (float)" in why, why


class _RebindsMean(nn.Module):
    """``self.mean = self.mean.type_as(x)`` in forward (EDSR, RCAN, SwinIR): the symbolic trace reads the buffer
    before forward rebinds it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.register_buffer("mean", torch.tensor([0.4, 0.45, 0.5]).view(1, 3, 1, 1))

    def forward(self, x):
        self.mean = self.mean.type_as(x)
        return self.conv(x - self.mean) + self.mean


def test_an_attribute_rebound_in_forward_is_read_as_the_model_holds_it():
    torch.manual_seed(0)
    model = _RebindsMean().eval()
    x = _image(16)[None]
    plan, why = le.build_plan(model, x)
    assert why == "ok" and plan.shape is None  # the symbolic trace, valid at any shape
    box, why, _ = le.traced_reach(model, x, (4, 8, 4, 8))
    assert why == "ok" and box == (3, 9, 3, 9)
    _local_matches_forward(model, x, (4, 8, 4, 8), [(0, 4, 0, 4), (4, 8, 8, 12)], plan)
    assert isinstance(model.mean, torch.Tensor) and "mean" in dict(model.named_buffers())


class _DilatedHoles(nn.Module):
    """Shape code around a 3x3 convolution of dilation 8: a 4 px ROI reads three 4 px bands per axis, so 16 of the
    25 blocks within its 8 px radius cannot change it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=8, dilation=8)
        _init(self, 7)

    def forward(self, x):
        h, w = x.shape[-2:]
        y = F.pad(x, (0, (-w) % 4, 0, (-h) % 4), mode="replicate")
        return (x + 0.5 * self.conv(y)[..., :h, :w]).clamp(0, 1)


def test_where_draws_run_locally_in_the_full_input_the_kd_split_follows_them(natural32):
    """With local evaluation in the full input the k-d split waits for the coarse draws and tests only the blocks
    that no draw changed: here the 16 holes of a dilated convolution's reach, ruled out together, so no block needs
    a normal-forward confirmation; the support equals the paper's."""
    kw = dict(task="dn25", roi=(12, 12, 4), block_size=4, coarse=2, fine=4, progress=False, device="cpu", seed=0)
    fast = cc.compute_cem(_DilatedHoles().eval(), natural32, **kw)
    paper = cc.compute_cem(_DilatedHoles().eval(), natural32, mode="paper", **kw)
    f = fast.meta["fast"]
    assert f["local_eval"]["used"] is True and f["crop"] is None and f["support_radius_px"] == 8
    assert f["ruled_out_by_kd"] == 16 and f["support_confirmed"] == 0 and f["candidates"] == 9
    assert fast.support.sum() == 9 and np.array_equal(fast.support, paper.support)


def test_local_evaluation_in_the_full_input_is_checked_once_even_when_it_fails(monkeypatch, natural32):
    """The frame of a model read at the full input's shape does not depend on the k-d split: a check that fails
    there stops the traced reach and is not repeated for the blocks the split leaves."""
    from cem_checks.engine import local

    calls = []

    def failed(eng, draws, blocks, opts):
        calls.append(len(blocks))
        return {"used": False, "check": "failed: forced"}

    monkeypatch.setattr(local, "local_verdict", failed)
    kw = dict(task="dn25", roi=(12, 12, 4), block_size=4, coarse=2, fine=4, progress=False, device="cpu", seed=0)
    res = cc.compute_cem(_DilatedHoles().eval(), natural32, **kw)
    f = res.meta["fast"]
    assert calls == [25] and f["local_eval"]["used"] is False and f["crop"] is None
    assert f["reach"].endswith("no longer used: local evaluation's check of the traced graph failed: forced")
    paper = cc.compute_cem(_DilatedHoles().eval(), natural32, mode="paper", **kw)
    assert np.array_equal(res.support, paper.support)

