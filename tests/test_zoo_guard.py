"""The engine never changes the user's model, on every architecture of the spandrel zoo (tests/zoo.py): after
``compute_support``, every module's attributes are bound as before, its parameters, buffers and tensor attributes
hold the same bits, its output on a probe is the same bit for bit, and a second call finds the same support.

Runs where spandrel imports (`make test-spandrel`): the zoo's representative subset, every architecture with
CEM_ZOO_ALL=1 (minutes on 2 cores)."""

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


def _params():
    for a in zoo.ARCHS:
        marks = [] if a.name in zoo.REPRESENTATIVE else [pytest.mark.slow] if ALL else [
            pytest.mark.slow, pytest.mark.skip(reason="outside the zoo's representative subset: CEM_ZOO_ALL=1 runs it")]
        yield pytest.param(a.name, id=a.name, marks=marks)


@pytest.mark.parametrize("name", list(_params()))
def test_the_engine_never_changes_a_zoo_model(name):
    a = zoo.arch(name)
    model = a.build()
    probe = torch.rand(1, a.channels, a.size, a.size, generator=torch.Generator().manual_seed(1))
    kw = a.job()
    image = kw.pop("image")
    before = snapshot(model, probe)
    kw.update(progress=False, device="cpu", seed=0)
    first = cc.compute_support(model, image, **kw)
    assert changes(model, before, probe) == []
    before = snapshot(model, probe)  # the probe's own forward rebinds what forward writes: compare from here
    second = cc.compute_support(model, image, **kw)
    assert changes(model, before, probe) == []
    assert first.support.any()  # the ROI's own blocks at least
    assert np.array_equal(first.support, second.support) and np.array_equal(first.resolved, second.resolved)
    assert first.radius_px == second.radius_px
