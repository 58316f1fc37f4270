"""What the engine checks about the model before a map: batch coupling, output dtype and range, meta tensors;
and the typed errors for inputs that used to escape them (a task class, an empty or bf16 image)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nets import ConvStack, _init
from torch import nn

import cem_checks as cc

KW = dict(task="dn25", roi=(12, 12, 8), block_size=4, coarse=3, fine=5, progress=False, device="cpu", seed=0)


class ConvBNConv(nn.Module):
    """3x3 conv, BatchNorm, ReLU, 1x1 conv, residual: receptive radius 1 px (in eval mode)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.tail = nn.Conv2d(8, 3, 1)
        _init(self, 4)
        for p in self.tail.parameters():
            p.data.mul_(0.1)

    def forward(self, x):
        return x + self.tail(torch.relu(self.bn(self.head(x))))


def test_a_batch_coupled_model_is_refused_with_the_cause_and_the_fix(natural32):
    net = ConvBNConv().train()  # BatchNorm in training mode: each image's output depends on the batch
    wrapped = lambda x: net(x)  # noqa: E731 - a function: the engine cannot put the module in eval mode
    with pytest.raises(cc.ModelError) as info:
        cc.compute_cem(wrapped, natural32, batch_size=8, **KW)
    text = str(info.value)
    assert "depends on the other images of its batch" in text
    assert "BatchNorm" in text and "model.eval()" in text and "batch_size=1" in text


def test_the_same_model_in_eval_mode_maps_its_true_receptive_field(natural32):
    net = ConvBNConv().train()
    res = cc.compute_cem(net, natural32, batch_size=8, **KW)  # an nn.Module: the engine puts it in eval mode
    assert net.training  # restored afterwards
    assert cc.support_radius(res) <= 1
    assert res.support[res.distance > 1].sum() == 0


def test_batch_size_one_needs_no_batch_independence(natural32):
    net = ConvBNConv().train()
    res = cc.compute_cem(lambda x: net(x), natural32, batch_size=1, **KW)
    assert res.meta["batch_size"] == 1


def test_an_integer_output_is_refused():
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    with pytest.raises(cc.ModelError) as info:
        cc.compute_cem(lambda x: (x * 255).round().to(torch.uint8), img, **KW)
    text = str(info.value)
    assert "torch.uint8" in text and "[0, 1]" in text and ".float() / 255" in text


def test_a_0_255_output_is_warned_about_with_the_fix(natural32):
    with pytest.warns(cc.OutputRangeWarning) as rec:
        res = cc.compute_cem(lambda x: x * 255.0, natural32, **KW)
    text = str(rec[0].message)
    assert "values in [" in text and "255" in text and "% of them outside [-0.5, 1.5]" in text
    assert "model(x * 255) / 255" in text
    assert res.base_psnr < 10  # the meaningless map the warning is about


@pytest.mark.filterwarnings("error::cem_checks.errors.OutputRangeWarning")
def test_an_output_in_0_1_with_overshoot_is_not_warned_about(natural32):
    # an identity denoiser with a slight overshoot: well within the slack
    cc.compute_cem(lambda x: (x - 0.5) * 1.2 + 0.5, natural32, **KW)


def test_parameters_on_the_meta_device_are_refused(natural32):
    with torch.device("meta"):
        model = nn.Conv2d(3, 3, 3, padding=1)
    with pytest.raises(cc.ModelError, match=r"meta device .*'weight'.*to_empty"):
        cc.compute_cem(model, natural32, **KW)


def test_a_task_class_is_refused_with_the_instance_to_pass(natural32):
    with pytest.raises(cc.CEMInputError, match=r"task=Denoising is a class.*Denoising\(\)"):
        cc.compute_cem(ConvStack((1,)), natural32, **{**KW, "task": cc.Denoising})


def test_an_empty_float_image_is_an_image_error():
    with pytest.raises(cc.ImageError, match=r"shape=\(0, 5, 3\).*empty.*at least 1x1"):
        cc.load_image(np.zeros((0, 5, 3), np.float32))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_image_tensors_load_exactly(dtype):
    t = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    img = cc.load_image(t)
    assert img.dtype == torch.float32
    torch.testing.assert_close(img, t.float(), rtol=0, atol=0)


def test_a_bool_image_tensor_is_an_image_error():
    with pytest.raises(cc.ImageError, match=r"dtype torch.bool; expected float in \[0, 1\] or uint8"):
        cc.load_image(torch.ones(3, 4, 4, dtype=torch.bool))
