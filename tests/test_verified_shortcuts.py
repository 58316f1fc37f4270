"""Shortcuts decide nothing until the real model confirms them: models that run more than a symbolic trace shows
(forward hooks and pre-hooks, a global hook, an in-place update of a view, an instance ``forward``) get the same
support from fast mode, the support stage and paper mode, and it is the truth (the Jacobian's); receptive-field
verdicts are exact in pixels whatever the block size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_state import changes, snapshot
from nets import ConvStack, jacobian_radius, jacobian_support
from torch import nn

import cem_checks as cc

QUICK = dict(progress=False, device="cpu", seed=0)
ROI = (8, 8, 8)


def _far(t: torch.Tensor) -> torch.Tensor:
    """The tensor rolled by 24 px: the ROI (8..16) then reads the region 24 px up-left, wrapped (40..48)."""
    return t.roll(shifts=(24, 24), dims=(-2, -1))


def _forward_hook():
    m = ConvStack((1, 1, 1))
    m.convs[2].register_forward_hook(lambda mod, args, out: out + 0.3 * _far(out))
    return m


def _pre_hook():
    m = ConvStack((1, 1, 1))
    m.convs[0].register_forward_pre_hook(lambda mod, args: (args[0] + 0.3 * _far(args[0]),))
    return m


class InplaceView(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = ConvStack((1, 1, 1))

    def forward(self, x):
        y = self.body(x)
        y[..., :, 0:16].add_(y[..., :, 32:48])
        return y


def _instance_forward():
    m = ConvStack((1, 1, 1))
    body = m.forward
    m.forward = lambda x: body(x) + 0.3 * _far(body(x))
    return m


class GlobalHooked(nn.Module):
    """A plain stack; the test registers a global forward hook (every module of the process) that acts on it."""

    def __init__(self):
        super().__init__()
        self.body = ConvStack((1, 1, 1))

    def forward(self, x):
        return self.body(x)


HIDDEN = {"forward hook": _forward_hook, "pre-hook": _pre_hook, "in-place view": InplaceView,
          "instance forward": _instance_forward, "global hook": GlobalHooked}


@pytest.fixture
def hidden(request):
    model = HIDDEN[request.param]().eval()
    handle = None
    if request.param == "global hook":
        handle = torch.nn.modules.module.register_module_forward_hook(
            lambda mod, args, out: out + 0.3 * _far(out) if mod is model else None)
    yield model
    if handle is not None:
        handle.remove()


@pytest.fixture(scope="module")
def natural64(natural32):
    return np.concatenate([np.concatenate([natural32] * 2, 0)] * 2, 1)


@pytest.mark.parametrize("hidden", sorted(HIDDEN), indirect=True)
def test_what_the_trace_misses_is_found_by_every_mode(hidden, natural64):
    x = cc.Denoising(25).degrade(cc.load_image(natural64)[None])
    truth = jacobian_support(hidden, x, ROI, 1, 8).numpy()
    radius = jacobian_radius(hidden, x, ROI, 1)
    assert radius > 20  # the hidden path reaches far beyond the 3 px of the convolutions
    kw = dict(task="dn25", roi=ROI, block_size=8, **QUICK)
    support = cc.compute_support(hidden, natural64, **kw)
    assert not support.meta["support_search"]["reach"].startswith("traced and confirmed")
    np.testing.assert_array_equal(support.support, truth)
    assert support.complete and support.radius_px == radius
    fast = cc.compute_cem(hidden, natural64, coarse=2, fine=4, **kw)
    paper = cc.compute_cem(hidden, natural64, mode="paper", coarse=2, fine=4, **kw)
    np.testing.assert_array_equal(fast.support, truth)
    np.testing.assert_array_equal(paper.support, truth)
    assert fast.radius_px == radius
    # the gate fails where it must, in the support stage and on the fast map alike
    assert cc.compute_support(hidden, natural64, within=4, **kw).beyond_within is True
    for result in (cc.LazyMap(cc.engine.Job(hidden, natural64, **kw)), fast):
        with pytest.raises(cc.CausalPropertyError, match=f"support_radius\\(\\) = {radius} px"):
            cc.assert_receptive_field_within(result, radius=4)


def test_the_reach_check_refutes_a_trace_that_misses_a_hook(natural64):
    model = _forward_hook()
    res = cc.compute_support(model, natural64, task="dn25", roi=ROI, block_size=8, within=4, **QUICK)
    reach = res.meta["support_search"]["reach"]
    assert reach.startswith("refuted: replacing the input outside the traced box (y 5:19, x 5:19) changed the ROI")
    assert res.beyond_within is True


def test_a_failed_local_evaluation_check_stops_the_traced_reach(natural64, monkeypatch):
    from cem_checks.engine import local

    monkeypatch.setattr(local, "local_verdict", lambda *a, **k: {"used": False, "check": "failed: forced"})
    res = cc.compute_cem(ConvStack((1, 1, 1)), natural64, task="dn25", roi=ROI, block_size=8, coarse=2, fine=4,
                         **QUICK)
    assert res.meta["fast"]["reach"].endswith("no longer used: local evaluation's check of the traced graph failed: forced")
    assert res.radius_px == 3


@pytest.mark.parametrize("block", [8, 4, 2])
def test_receptive_field_verdicts_are_exact_in_pixels_whatever_the_block_size(block, natural64):
    model = ConvStack((1,) * 5)  # radius 5 px
    kw = dict(task="dn25", roi=ROI, block_size=block, **QUICK)
    for within in (2, 4):
        assert cc.compute_support(model, natural64, within=within, **kw).beyond_within is True
    for within in (5, 9):
        assert cc.compute_support(model, natural64, within=within, **kw).beyond_within is False
    assert cc.compute_support(model, natural64, **kw).radius_px == 5
    gate = cc.LazyMap(cc.engine.Job(model, natural64, **kw))
    assert cc.assert_receptive_field_within(gate, radius=5).measured == 5
    with pytest.raises(cc.CausalPropertyError, match=r"support_radius\(\) = 5 px"):
        cc.assert_receptive_field_within(gate, radius=2)


def test_a_gate_on_a_map_that_knows_blocks_only_never_passes_undecided(natural64):
    model = ConvStack((1,) * 5)
    paper = cc.compute_cem(model, natural64, task="dn25", roi=ROI, block_size=8, mode="paper", coarse=1, fine=2,
                           **QUICK)
    assert paper.radius_px is None and cc.support_radius_bounds(paper) == (1, 8)
    for bound in (2, 5):  # a supported block holds pixels 1 to 8 px away: undecided below 8 px
        out = cc.check_receptive_field_within(paper, bound)
        assert not out.passed and "undecided" in out.note and "resolution of the blocks (8 px)" in out.note
    assert cc.check_receptive_field_within(paper, 8).passed


# ----------------------------------------------------------------------------------- the model stays as it was
class WritesAttributes(nn.Module):
    """Written the way published SR code is: a mean moved to the input's type in forward, features kept, a call
    counter, a list of what it saw, a buffer updated in place, and the input scaled in place."""

    def __init__(self):
        super().__init__()
        self.body = ConvStack((1, 1, 1))
        self.mean = torch.tensor([0.4, 0.45, 0.5]).view(1, 3, 1, 1)
        self.register_buffer("calls_t", torch.zeros(()))
        self.calls = 0
        self.seen: list = []

    def forward(self, x):
        self.mean = self.mean.type_as(x)
        self.calls += 1
        self.seen.append(x.shape)
        self.calls_t.add_(1)
        x.mul_(1.0)
        y = self.body(x - self.mean) + self.mean
        self.feat = y
        return y


class RebindsData(nn.Module):
    """As re-parameterised convolutions (SPAN's) write it: forward rebinds a parameter's ``.data`` to a tensor it
    computes, which moves no version counter; here one that drifts with every call (the output does not read it)."""

    def __init__(self):
        super().__init__()
        self.body = ConvStack((1, 1))
        self.gain = nn.Parameter(torch.ones(3))

    def forward(self, x):
        self.gain.data = self.gain.data * 1.001
        return self.body(x) + 0.0 * self.gain.view(1, 3, 1, 1)


@pytest.mark.parametrize("model_fn", [WritesAttributes, _forward_hook, InplaceView, RebindsData])
def test_the_engine_never_changes_the_model(model_fn, natural64, tmp_path):
    model = model_fn().eval()
    probe = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    before = snapshot(model, probe)
    kw = dict(task="dn25", roi=(8, 8, 8), block_size=8, **QUICK)
    cc.compute_support(model, natural64, **kw)
    assert changes(model, before, probe) == []
    before = snapshot(model, probe)
    cc.compute_cem(model, natural64, coarse=2, fine=4, cache_dir=tmp_path, **kw)
    cc.compute_cem(model, natural64, coarse=2, fine=4, cache_dir=tmp_path, **kw)  # a cached rerun
    cc.compute_cem(model, natural64, mode="paper", coarse=1, fine=2, **kw)
    lazy = cc.LazyMap(cc.engine.Job(model, natural64, **kw))
    cc.check_receptive_field_within(lazy, 3)
    cc.check_negative_fraction_at_most(lazy, 1.0)
    assert changes(model, before, probe) == []


def test_a_model_that_writes_attributes_in_forward_is_traced_without_harm(natural32):
    model = WritesAttributes().eval()
    res = cc.compute_cem(model, natural32, task="dn25", roi=(8, 8, 8), block_size=4, coarse=2, fine=4, **QUICK)
    assert isinstance(model.mean, torch.Tensor) and not hasattr(model, "feat")
    assert res.radius_px == 3


# ------------------------------------------------------------------------------ local evaluation's arguments
class ShuffleByBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.register_buffer("scale", torch.tensor(2))

    def forward(self, x):
        return F.pixel_shuffle(self.conv(x), self.scale)


class CatByBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.register_buffer("dim", torch.tensor(1))

    def forward(self, x):
        y = self.conv(x)
        return torch.cat([y, x], dim=self.dim)[:, :3] + torch.cat([x, y], dim=self.dim)[:, :3]


class PoolByBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.register_buffer("k", torch.tensor(1))

    def forward(self, x):
        return F.avg_pool2d(self.conv(x), kernel_size=self.k)


class ScaledResidual(nn.Module):
    """NAFNet-style: a learned per-channel scale of the residual branch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.beta = nn.Parameter(torch.full((1, 3, 1, 1), 0.5))

    def forward(self, x):
        return x + self.conv(x) * self.beta


@pytest.mark.parametrize("model_fn, task", [(ShuffleByBuffer, "sr2"), (CatByBuffer, "dn25"), (PoolByBuffer, "dn25"),
                                            (ScaledResidual, "dn25")])
def test_buffers_and_parameters_as_arguments_evaluate_locally(model_fn, task, natural32):
    torch.manual_seed(0)
    model = model_fn().eval()
    kw = dict(task=task, roi=(8, 8, 8), block_size=4, coarse=2, fine=4, **QUICK)
    fast = cc.compute_cem(model, natural32, **kw)
    local = fast.meta["fast"]["local_eval"]
    assert local["used"] is True, local["check"]
    off = cc.compute_cem(model, natural32, fast=cc.FastOptions(local_eval=False), **kw)
    np.testing.assert_array_equal(fast.support, off.support)
    np.testing.assert_allclose(fast.raw_effect, off.raw_effect, atol=2e-3)


def test_an_argument_computed_from_the_input_is_refused_by_name(natural32):
    class Shape(nn.Module):
        def forward(self, x):
            return F.avg_pool2d(x, kernel_size=x.shape[0] + 0)

    from cem_checks.local_eval import build_plan

    plan, why = build_plan(Shape())
    assert plan is None and why  # refused with a reason, not a raw exception


# --------------------------------------------------------------------------------------------- whole-ROI maps
def test_a_roi_covering_every_block_is_a_typed_error(natural32):
    with pytest.raises(cc.ROIError, match=r"roi \(0, 0, 32\) covers every block of the 8x8 grid of 4-px blocks .* "
                                          r"use a smaller ROI"):
        cc.compute_cem(ConvStack((1,)), natural32, task="dn25", roi=(0, 0, 32), block_size=4, **QUICK)
    with pytest.raises(cc.ROIError, match="covers every block"):
        cc.compute_support(ConvStack((1,)), natural32, task="dn25", roi=(0, 0, 32), block_size=4, **QUICK)


# --------------------------------------------------------------------------------------------- vacuous results
def test_an_effect_property_over_a_map_with_nothing_measured_says_so(natural32):
    class Identity(nn.Module):
        def forward(self, x):
            return x.clone()

    res = cc.compute_cem(Identity(), natural32, task="dn25", roi=(8, 8, 8), block_size=4, coarse=2, fine=4, **QUICK)
    out = cc.check_negative_fraction_at_most(res, 0.05)
    assert out.passed and out.measured == 0
    assert "no block outside the ROI moved the ROI PSNR by tol_db (0.01 dB): nothing was measured" in out.note
    assert "nothing was measured" in out.message() and "nothing was measured" in out.to_record()["note"]
    with pytest.raises(cc.CausalPropertyError, match="require_measured=True: the property fails"):
        cc.assert_negative_fraction_at_most(res, 0.05, require_measured=True)
    assert not cc.check_positive_effect_local(res, 4, require_measured=True).passed
    assert not cc.check_property(res, "gini", "<=", 1.0, require_measured=True).passed
    # the support is no effect property: nothing to note
    assert cc.check_receptive_field_within(res, 0).note == ""
    with pytest.raises(cc.CEMInputError, match="require_measured='yes' must be True or False"):
        cc.check_negative_fraction_at_most(res, 0.05, require_measured="yes")
