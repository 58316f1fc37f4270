"""Bad input gives a typed error naming the value and the fix, never a traceback from deep inside torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cem_checks as cc
from nets import Affine, ConvStack, NearestUpsampleSR

RUN = dict(progress=False, device="cpu", coarse=1, fine=1)


def run(model=None, image=None, **kw):
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8) if image is None else image
    args = dict(task=cc.Denoising(10), roi=(4, 4, 4), block_size=4, **RUN)
    args.update(kw)
    return cc.compute_cem(Affine() if model is None else model, image, **args)


def test_roi_outside_the_output():
    with pytest.raises(cc.ROIError, match=r"roi \(x=12, y=4, size=8\).*outside the 16x16.*x \+ size <= 16"):
        run(roi=(12, 4, 8))


def test_roi_not_aligned_with_the_scale():
    with pytest.raises(cc.ROIError, match=r"not aligned with the x2 scale.*roi=\(4, 4, 4\)"):
        run(NearestUpsampleSR(2), task=cc.SuperResolution(2), roi=(5, 4, 4), block_size=2)


@pytest.mark.parametrize("roi", [(1, 2), "40,40,16", (1.5, 2, 3), (-1, 0, 4), (0, 0, 0)])
def test_roi_malformed(roi):
    with pytest.raises(cc.ROIError, match="roi"):
        run(roi=roi)


def test_block_larger_than_the_image():
    with pytest.raises(cc.ImageError, match=r"smaller than one block of 32 input px"):
        run(block_size=32)


def test_image_too_small_for_the_scale():
    tiny = np.zeros((3, 3, 3), np.uint8)
    with pytest.raises(cc.ImageError, match=r"\(0x0 px after cropping to the x4 scale\)"):
        run(NearestUpsampleSR(4), image=tiny, task=cc.SuperResolution(4), roi=(0, 0, 4), block_size=1)


def test_roi_error_mentions_the_trim_to_whole_blocks():
    img = np.zeros((18, 18, 3), np.uint8)
    with pytest.raises(cc.ROIError, match=r"trimmed from 18x18 to 16x16"):
        run(image=img, roi=(12, 12, 5))


@pytest.mark.parametrize(
    "patches, match",
    [
        (np.zeros((0, 8, 8, 3), np.uint8), "is empty"),
        (np.zeros((5, 8, 8, 4), np.uint8), "has 4 channels"),
        (np.zeros((5, 8, 8, 3), np.int32), "dtype int32"),
        (np.full((5, 8, 8, 3), 2.0), "outside \\[0, 1\\]"),
        (np.zeros((8, 8), np.uint8), "4 dimensions"),
        ("/nonexistent/bank.npy", "does not exist"),
        (42, "not a patch source"),
    ],
)
def test_bad_patch_bank(patches, match):
    with pytest.raises(cc.PatchBankError, match=match):
        run(patches=patches)


def test_model_output_of_the_wrong_size_names_the_scale():
    with pytest.raises(cc.ModelError, match=r"returned shape \(1, 3, 32, 32\) for an input of shape \(1, 3, 8, 8\); task sr2 \(scale 2\) expects \(1, 3, 16, 16\).*upscale by 4"):
        run(NearestUpsampleSR(4), task=cc.SuperResolution(2), block_size=2)


def test_model_output_of_the_wrong_channels():
    with pytest.raises(cc.ModelError, match=r"returns 1 channels"):
        run(lambda x: x[:, :1])


def test_model_that_fails_inside_torch():
    gray_net = torch.nn.Conv2d(1, 1, 3, padding=1)
    with pytest.raises(cc.ModelError, match=r"raised RuntimeError when called on a \(1, 3, 16, 16\).*input channels"):
        run(gray_net)


def test_model_returning_a_non_tensor():
    with pytest.raises(cc.ModelError, match=r"returned tuple"):
        run(lambda x: (x,))


def test_model_producing_nan():
    with pytest.raises(cc.ModelError, match=r"produced 768 NaN/inf values"):
        run(lambda x: x * float("nan"))


def test_model_producing_nan_only_for_some_interventions():
    def fragile(x):
        out = x.clone()
        out[x.sum(dim=(1, 2, 3)) < 0.0] = float("nan")
        out[(x[:, :, :4, :4] == x[:, :, :4, :4].amax()).all(dim=(1, 2, 3)), 0, 0, 0] = float("inf")
        return out

    with pytest.raises(cc.ModelError, match="NaN/inf"):
        run(fragile, patches=np.full((1, 4, 4, 3), 255, np.uint8), task=cc.Denoising(0))


def test_non_deterministic_model_warns():
    g = torch.Generator().manual_seed(0)

    def noisy(x):
        return x + 1e-3 * torch.randn(x.shape, generator=g)

    with pytest.warns(cc.NondeterministicModelWarning, match="not deterministic.*support"):
        res = run(noisy)
    assert res.support.all()  # every block looks supported: that is what the warning announces


def test_not_callable_model():
    with pytest.raises(cc.CEMInputError, match="is not callable"):
        run(model="model.pt")


@pytest.mark.parametrize("device, match", [("tpu", "unknown"), (3, "not understood")])
def test_unknown_device(device, match):
    with pytest.raises(cc.DeviceError, match=match):
        run(device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_but_absent():
    with pytest.raises(cc.DeviceError, match=r"CUDA is not available.*device='cpu'"):
        run(device="cuda")


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(mode="turbo"), "mode='turbo' is not available"),
        (dict(coarse=0), "coarse=0 must be an integer >= 1"),
        (dict(fine=2.5), "fine=2.5 must be an integer"),
        (dict(tol_db=-1), "tol_db=-1 must be a finite number >= 0"),
        (dict(seed=-3), "seed=-3"),
        (dict(batch_size=0), "batch_size=0 must be 'auto'"),
        (dict(block_size=0), "block_size=0"),
        (dict(progress="yes"), "progress='yes'"),
        (dict(task="sr"), "task 'sr' is not a known task name"),
        (dict(task=object()), "does not follow the cem_checks.Task protocol"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises(cc.CEMInputError, match=match):
        run(**kw)


def test_errors_are_value_errors_for_callers_catching_builtins():
    with pytest.raises(ValueError):
        run(roi=(100, 0, 4))
    assert issubclass(cc.DeviceError, RuntimeError) and issubclass(cc.ModelError, cc.CEMError)


def test_user_task_returning_the_wrong_shape():
    class Broken(cc.Denoising):
        def intervene(self, blocks, **kw):
            return blocks[:, :, :2]

    with pytest.raises(cc.CEMInputError, match=r"intervene returned shape"):
        run(ConvStack((1,)), task=Broken(10))
