"""Degradation tasks: inputs and interventions as the paper defines them."""

from __future__ import annotations

import pytest
import torch

import cem_checks as cc
from cem_checks.tasks import gather_blocks


@pytest.fixture
def clean(natural32):
    return cc.load_image(natural32)[None]


def test_parse_task_names():
    assert cc.parse_task("sr4") == cc.SuperResolution(4)
    assert cc.parse_task("DN50") == cc.Denoising(50)
    assert cc.parse_task("dn12.5") == cc.Denoising(12.5)
    assert isinstance(cc.parse_task("dr"), cc.Deraining)
    assert cc.parse_task("sr2").name == "sr2" and cc.Denoising(25).name == "dn25"
    assert isinstance(cc.SuperResolution(2), cc.Task)


def test_super_resolution_input_is_a_bicubic_8bit_downscale(clean):
    task = cc.SuperResolution(4)
    x = task.degrade(clean)
    assert x.shape == (1, 3, 8, 8)
    assert torch.equal(x, torch.round(x * 255) / 255)
    # area-preserving: a flat image stays flat, and the mean is kept
    flat = torch.full((1, 3, 32, 32), 0.4)
    torch.testing.assert_close(task.degrade(flat), torch.full((1, 3, 8, 8), round(0.4 * 255) / 255))
    assert abs(float(x.mean() - clean.mean())) < 2 / 255
    # the patch is resized bicubically to the block: 8x8 -> 2x2
    p = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert task.patch_to_block(p, 2).shape == (5, 3, 2, 2)


def test_super_resolution_crops_to_a_multiple_of_the_scale():
    assert cc.SuperResolution(3).crop(torch.zeros(3, 10, 11)).shape == (3, 9, 9)


def test_denoising_noise_is_fixed_by_the_task_seed(clean):
    a, b, c = cc.Denoising(50, seed=1), cc.Denoising(50, seed=1), cc.Denoising(50, seed=2)
    assert torch.equal(a.degrade(clean), b.degrade(clean))
    assert not torch.equal(a.degrade(clean), c.degrade(clean))
    x = a.degrade(clean)
    assert torch.equal(x, torch.round(x * 255) / 255)
    # the noise has the requested sigma (measured where clipping is rare)
    mid = torch.full((1, 3, 64, 64), 0.5)
    assert abs(float((cc.Denoising(25).degrade(mid) - 0.5).std()) * 255 - 25) < 1.0


def test_denoising_intervention_adds_fresh_noise(clean):
    task = cc.Denoising(30)
    blocks = torch.full((2000, 3, 4, 4), 0.5)
    g = torch.Generator().manual_seed(0)
    kw = dict(top=torch.zeros(2000, dtype=torch.long), left=torch.zeros(2000, dtype=torch.long), clean=clean, degraded=clean)
    out1 = task.intervene(blocks, generator=g, **kw)
    out2 = task.intervene(blocks, generator=g, **kw)
    assert not torch.equal(out1, out2)
    assert abs(float((out1 - 0.5).std()) * 255 - 30) < 1.0
    assert torch.equal(out1, torch.round(out1 * 255) / 255)


def test_deraining_rain_is_streaky_fixed_by_seed_and_readded_on_interventions(clean):
    task = cc.Deraining(seed=5, angle=0.0)
    rain = task.rain_layer(64, 64)[0, 0]
    assert rain.shape == (64, 64) and float(rain.max()) == pytest.approx(0.8) and float(rain.min()) == 0.0
    assert torch.equal(rain, cc.Deraining(seed=5, angle=0.0).rain_layer(64, 64)[0, 0])
    assert not torch.equal(rain, cc.Deraining(seed=6, angle=0.0).rain_layer(64, 64)[0, 0])
    # vertical streaks (angle 0): neighbours along a column are far more alike than along a row
    v = torch.corrcoef(torch.stack([rain[:-1].ravel(), rain[1:].ravel()]))[0, 1]
    h = torch.corrcoef(torch.stack([rain[:, :-1].ravel(), rain[:, 1:].ravel()]))[0, 1]
    assert v > 0.9 and v > h + 0.3
    x = task.degrade(clean)
    torch.testing.assert_close(x, torch.round((clean + task.rain_layer(32, 32)).clamp(0, 1) * 255) / 255)
    top, left = torch.tensor([4, 20]), torch.tensor([8, 0])
    blocks = torch.full((2, 3, 4, 4), 0.1)
    out = task.intervene(blocks, top=top, left=left, clean=clean, degraded=x, generator=torch.Generator())
    expected = torch.round((0.1 + gather_blocks(task.rain_layer(32, 32), top, left, 4)).clamp(0, 1) * 255) / 255
    torch.testing.assert_close(out, expected.expand(2, 3, 4, 4))


def test_gather_blocks_reads_the_right_pixels():
    img = torch.arange(2 * 6 * 6, dtype=torch.float32).reshape(1, 2, 6, 6)
    out = gather_blocks(img, torch.tensor([0, 2]), torch.tensor([4, 1]), 2)
    assert torch.equal(out[0], img[0, :, 0:2, 4:6]) and torch.equal(out[1], img[0, :, 2:4, 1:3])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: cc.SuperResolution(0), "scale=0"),
        (lambda: cc.Denoising(-5), "sigma=-5"),
        (lambda: cc.Deraining(density=0), "density=0"),
        (lambda: cc.Deraining(seed="a"), "seed='a'"),
    ],
)
def test_bad_task_parameters(make, match):
    with pytest.raises(cc.CEMInputError, match=match):
        make()


def test_all_three_tasks_run_end_to_end(natural32):
    from nets import ConvStack, PixelShuffleSR

    kw = dict(roi=(8, 8, 8), coarse=2, fine=3, device="cpu", progress=False)
    for model, task in [(PixelShuffleSR(2), "sr2"), (ConvStack((1, 1)), "dn25"), (ConvStack((1, 1)), "dr")]:
        res = cc.compute_cem(model, natural32, task=task, **kw)
        assert res.task == task and res.support.any() and res.effect.any()
        assert res.task_params["name"] == task
