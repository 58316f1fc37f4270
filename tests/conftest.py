from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import numpy as np
import pytest
import torch

import cem_checks

# pytester's in-process runs restore sys.modules after each run, dropping the modules the run imported, while the
# cem_checks package (imported when the plugin starts) keeps them as attributes: a later run would then mix two
# copies of a module and its classes. Importing the whole library here keeps one copy for every run.
for _module in pkgutil.walk_packages(cem_checks.__path__, "cem_checks."):
    importlib.import_module(_module.name)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data beside the checkout (../shared/data); tests that use it skip when it is absent."""
    if not (SHARED / "dncnn_color_blind.pth").is_file():
        pytest.skip(f"real data not found at {SHARED} (pretrained DnCNN, demo images)")
    return SHARED


@pytest.fixture(scope="session")
def natural32() -> np.ndarray:
    """A 32x32 RGB uint8 crop of a bundled natural image."""
    import cem_checks

    img = cem_checks.load_image(cem_checks.bundled_images()["astronaut"])
    return (img[:, 180:212, 200:232].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


@pytest.fixture
def natural32_png(tmp_path, natural32) -> Path:
    """:func:`natural32` written as ``<tmp_path>/img.png``."""
    from PIL import Image

    Image.fromarray(natural32).save(tmp_path / "img.png")
    return tmp_path / "img.png"


@pytest.fixture(scope="session")
def planted_map(natural32):
    """``(result, far, d)``: the paper-mode map of ``PlantedNonLocal`` (the 4x4 ROI at (4, 4) copies the block
    at (24, 20), which holds the ROI's own content), the (row, col) of that far block and its distance (px)."""
    import cem_checks as cc
    from nets import PlantedNonLocal

    img = natural32.copy()
    roi, source = (4, 4, 4), (24, 20, 4)
    img[20:24, 24:28] = img[4:8, 4:8]
    result = cc.compute_cem(PlantedNonLocal(roi, source), img, task=cc.Denoising(10), roi=roi, block_size=4,
                            mode="paper", coarse=2, fine=4, progress=False, device="cpu")
    far = (source[1] // 4, source[0] // 4)
    return result, far, int(result.distance[far])


@pytest.fixture
def pytester(pytester, monkeypatch):
    """pytester whose inner pytest runs (in process or in a subprocess) never load pytest-randomly: the plugin tests
    read the inner runs' output, which must not depend on a shuffled test order."""
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:randomly")  # set after pytester has cleared the outer value
    return pytester


def pytest_configure(config):
    # The analytic test models (tests/nets.py) have untrained weights and overshoot [0, 1] by several units; the
    # engine's warning about outputs on another scale is asserted in tests/test_engine_output_checks.py.
    config.addinivalue_line("filterwarnings", "ignore::cem_checks.errors.OutputRangeWarning")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; torch.cuda.is_available() is False on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
