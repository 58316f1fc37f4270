"""CUDA: the same maps on a GPU (skipped when torch.cuda.is_available() is False)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cem_checks as cc
from nets import ConvStack, PixelShuffleSR

pytestmark = pytest.mark.cuda


def test_auto_device_is_cuda():
    assert cc.resolve_device("auto").type == "cuda"
    assert cc.resolve_device("cuda:0") == torch.device("cuda", 0)


@pytest.mark.parametrize("model, task", [(ConvStack((1, 2, 3)), "dn25"), (PixelShuffleSR(2), "sr2"), (ConvStack((1, 1)), "dr")])
def test_cuda_support_equals_the_receptive_field_and_matches_cpu(model, task, natural32):
    kw = dict(task=task, roi=(8, 8, 8), block_size=2 if task != "sr2" else 1, coarse=2, fine=4, progress=False)
    gpu = cc.compute_cem(model, natural32, device="cuda", **kw)
    cpu = cc.compute_cem(model, natural32, device="cpu", **kw)
    assert gpu.device.startswith("cuda")
    np.testing.assert_array_equal(gpu.support, gpu.distance <= model.radius)
    np.testing.assert_array_equal(gpu.support, cpu.support)
    assert next(model.parameters()).device.type == "cpu"  # the module is moved back


def test_cuda_auto_batch_size_and_same_seed_same_map(natural32):
    kw = dict(task="dn25", roi=(8, 8, 8), block_size=2, coarse=2, fine=4, progress=False, device="cuda", seed=3)
    a = cc.compute_cem(ConvStack((1, 1)), natural32, **kw)
    b = cc.compute_cem(ConvStack((1, 1)), natural32, **kw)
    np.testing.assert_array_equal(a.samples_db, b.samples_db)
    assert a.forward_calls < a.forward_passes / 8  # auto picks large batches on a GPU


def test_real_dncnn_on_cuda_matches_cpu(shared_data):
    from cem_checks.models import DnCNN

    model = DnCNN.from_state_dict(torch.load(shared_data / "dncnn_color_blind.pth", map_location="cpu", weights_only=True))
    img = cc.load_image(shared_data / "demo_2.png")[:, 96:144, 96:144]
    kw = dict(task=cc.Denoising(50), roi=(0, 0, 8), block_size=8, coarse=3, fine=10, progress=False, seed=0)
    gpu = cc.compute_cem(model, img, device="cuda", **kw)
    cpu = cc.compute_cem(model, img, device="cpu", **kw)
    assert not gpu.support[gpu.distance > 20].any()
    assert abs(gpu.base_psnr - cpu.base_psnr) < 0.05
    # different random streams on the two devices: the maps agree in shape, not draw by draw
    assert np.corrcoef(gpu.effect.ravel(), cpu.effect.ravel())[0, 1] > 0.9
