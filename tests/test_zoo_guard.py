"""The engine never changes the user's model, on every architecture of the spandrel zoo (tests/zoo.py): after
``compute_support``, every module's attributes are bound as before, its parameters, buffers and tensor attributes
hold the same bits, its output on a probe is the same bit for bit, and a second call finds the same support.

Runs where spandrel imports (`make test-spandrel`); architectures marked slow in the zoo run with CEM_ZOO_ALL=1."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import zoo
from model_state import changes, snapshot

import cem_checks as cc

UNAVAILABLE = zoo.unavailable()
ALL = os.environ.get("CEM_ZOO_ALL") == "1"
pytestmark = pytest.mark.skipif(
    UNAVAILABLE is not None,
    reason=f"{UNAVAILABLE}; `make test-spandrel` runs the zoo in an environment with spandrel")


def zoo_job(a: zoo.Arch) -> dict:
    """The clean image (a natural crop whose model input is ``a.size`` px) and the support job's arguments: an
    8-px ROI at the centre of the output, blocks making a 4x4 grid."""
    side = a.size * a.scale
    img = cc.load_image(cc.bundled_images()["astronaut"])[:, 150 : 150 + side, 180 : 180 + side]
    image = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    c = side // 2 - 4
    return dict(image=image, task=a.task, roi=(c, c, 8), block_size=a.size // 4)


def _params():
    for a in zoo.ARCHS:
        marks = [] if ALL or not a.slow else [pytest.mark.skip(reason="slow zoo architecture: CEM_ZOO_ALL=1 runs it")]
        yield pytest.param(a.name, id=a.name, marks=marks)


@pytest.mark.parametrize("name", _params())
def test_the_engine_never_changes_a_zoo_model(name):
    a = zoo.arch(name)
    model = a.build()
    probe = torch.rand(1, a.channels, a.size, a.size, generator=torch.Generator().manual_seed(1))
    job = zoo_job(a)
    before = snapshot(model, probe)
    kw = dict(task=job["task"], roi=job["roi"], block_size=job["block_size"], progress=False, device="cpu", seed=0)
    first = cc.compute_support(model, job["image"], **kw)
    assert changes(model, before, probe) == []
    before = snapshot(model, probe)  # the probe's own forward rebinds what forward writes: compare from here
    second = cc.compute_support(model, job["image"], **kw)
    assert changes(model, before, probe) == []
    assert first.support.any()  # the ROI's own blocks at least
    assert np.array_equal(first.support, second.support) and np.array_equal(first.resolved, second.resolved)
    assert first.radius_px == second.radius_px
