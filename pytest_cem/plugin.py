"""The pytest plugin, registered through the ``pytest11`` entry point ``cem``."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cem(**settings): causal-effect-map settings for this test (task, roi, block_size, seed, mode, ...)",
    )


def pytest_report_header(config: pytest.Config) -> list[str]:
    import torch

    import cem_checks

    cuda = torch.cuda.is_available()
    device = f"cuda ({torch.cuda.get_device_name(0)})" if cuda else "cpu"
    return [f"cem: cem_checks {cem_checks.__version__}, torch {torch.__version__}, default device {device}"]
