"""The jobs of the engine's golden maps (tests/data/engine_golden.json; see scripts/make_engine_golden.py)."""

from __future__ import annotations

import warnings

import numpy as np
from nets import ConvStack, PixelShuffleSR, PlantedNonLocal

import cem_checks as cc
from cem_checks.models import RCANLite


def _image(size: int = 32) -> np.ndarray:
    img = cc.load_image(cc.bundled_images()["astronaut"])[:, 180 : 180 + size, 200 : 200 + size]
    return (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _planted():
    img = _image()
    roi, source = (4, 4, 4), (24, 20, 4)
    img[20:24, 24:28] = img[4:8, 4:8]
    return PlantedNonLocal(roi, source), img, dict(task=cc.Denoising(10), roi=roi, block_size=4)


BASE = dict(coarse=3, fine=12, progress=False, device="cpu", seed=3, batch_size=8)

#: name -> (model factory, image factory, keyword arguments of compute_cem)
JOBS = {
    "fast-dn-convstack": (lambda: ConvStack((1, 2, 1)), lambda: _image(64),
                          dict(task="dn25", roi=(24, 24, 8), block_size=4)),
    "paper-dn-convstack": (lambda: ConvStack((1, 1)), _image, dict(task="dn25", roi=(8, 8, 8), block_size=4, mode="paper")),
    "fast-sr2-pixelshuffle": (lambda: PixelShuffleSR(2), _image, dict(task="sr2", roi=(8, 8, 8), block_size=2)),
    "fast-dr-convstack": (lambda: ConvStack((2, 2)), _image, dict(task="dr", roi=(12, 12, 8), block_size=4)),
    "fast-global-rcan": (lambda: RCANLite(scale=2, features=8, blocks=1), _image, dict(task="sr2", roi=(8, 8, 8), block_size=4)),
    "fast-planted": None,  # built by _planted
    "fast-switches-off": (lambda: ConvStack((1, 2)), _image,
                          dict(task="dn25", roi=(12, 12, 8), block_size=4,
                               fast=cc.FastOptions(adaptive=False, common_random_numbers=False, local_eval=False))),
    "fast-batch3-tol0": (lambda: ConvStack((1, 1)), _image, dict(task="dn25", roi=(12, 12, 8), block_size=4, tol_db=0.0,
                                                                  batch_size=3)),
}


def run_job(name: str) -> cc.CEMResult:
    import torch

    torch.manual_seed(0)
    if name == "fast-planted":
        model, img, kw = _planted()
    else:
        make_model, make_image, kw = JOBS[name]
        model, img = make_model(), make_image()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cc.OutputRangeWarning)
        return cc.compute_cem(model, img, **{**BASE, **kw})
