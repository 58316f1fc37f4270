"""pytest-xdist workers are spread over the GPUs when the device is ``cuda`` (or ``auto``) without an index."""

from __future__ import annotations

import pytest
import torch

from cem_checks import spread_device

from plugin_inner import make_suite

pytest_plugins = ["pytester"]


@pytest.mark.parametrize(
    "device, worker, gpus, expected",
    [
        ("cuda", "gw0", 4, "cuda:0"),
        ("cuda", "gw5", 4, "cuda:1"),
        ("CUDA", "gw3", 2, "cuda:1"),
        ("auto", "gw2", 2, "cuda:0"),
        ("cuda:3", "gw1", 4, "cuda:3"),  # an explicit index is kept
        ("cpu", "gw1", 4, "cpu"),
        ("mps", "gw1", 4, "mps"),
        ("cuda", "gw7", 1, "cuda"),  # one GPU: nothing to spread
        ("auto", "gw7", 0, "auto"),  # no GPU
        ("cuda", None, 4, "cuda"),  # not under xdist
        ("cuda", "master", 4, "cuda"),
    ],
)
def test_spread_device(device, worker, gpus, expected):
    assert spread_device(device, worker, gpus) == expected


def test_a_torch_device_is_left_alone():
    dev = torch.device("cuda", 2)
    assert spread_device(dev, "gw1", 4) is dev


def test_cem_device_puts_worker_gw5_on_the_second_of_four_gpus(pytester, monkeypatch):
    """The fixture reads PYTEST_XDIST_WORKER and the GPU count (here four GPUs as torch reports them)."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw5")
    pytester.makeconftest("""
        import pytest, torch

        @pytest.fixture(autouse=True)
        def four_gpus(monkeypatch):
            monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
            monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
            monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    """)
    make_suite(pytester, """
        def test_default_cuda(cem_device):
            assert cem_device == torch.device("cuda", 1)

        @pytest.mark.cem(device="cuda:3")
        def test_explicit_index(cem_device):
            assert cem_device == torch.device("cuda", 3)

        @pytest.mark.cem(device="cpu")
        def test_cpu(cem_device):
            assert cem_device == torch.device("cpu")
    """)
    pytester.runpytest("--cem-device", "cuda").assert_outcomes(passed=3)
