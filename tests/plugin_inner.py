"""Shared set-up of the pytester tests of the plugin: a test module preamble with a tiny model and image."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

# In-process pytester runs drop the modules a run imported; the hypothesis plugin imports hypothesis at the end
# of every run, so importing it here once saves seconds per run.
import hypothesis  # noqa: F401

#: Imports, a 32x32 RGB image and the marker of a tiny denoising map (8x8 blocks of 4 px, CPU).
PREAMBLE = dedent(
    """
    import numpy as np
    import pytest
    import torch
    import cem_checks as cc
    from nets import ConvStack

    IMG = (np.arange(32 * 32 * 3).reshape(32, 32, 3) * 37 % 256).astype(np.uint8)
    TINY = dict(task="dn25", roi=(8, 8, 8), block_size=4, coarse=2, fine=4, device="cpu")
    """
)


def make_suite(pytester, body: str, name: str = "test_suite"):
    """Write ``nets.py`` and a test module ``name`` made of :data:`PREAMBLE` and ``body``."""
    pytester.makepyfile(nets=(Path(__file__).parent / "nets.py").read_text())
    return pytester.makepyfile(**{name: PREAMBLE + dedent(body)})


#: Two tests with a map and a property each (radius-2 model: support radius 1 px with blocks of 4 px;
#: radius-5 model: 5 px): one property passes, one fails. The first asks only the receptive-field question, so
#: only its support stage runs; the second reads an attribute of the map first, so its full map runs.
TWO_PROPERTY_SUITE = """
    @pytest.mark.cem(**TINY)
    def test_local(cem):
        cc.assert_receptive_field_within(cem(ConvStack((1, 1)), IMG), radius=2)

    @pytest.mark.cem(**TINY)
    def test_too_wide(cem):
        m = cem(ConvStack((1, 1, 1, 1, 1)), IMG)
        assert np.isfinite(m.base_psnr)
        cc.assert_receptive_field_within(m, radius=1)
"""

#: The two tests above, one skipped for an absent device, one test without maps.
MIXED_SUITE = TWO_PROPERTY_SUITE + """
    @pytest.mark.cem(device="cuda:63")
    def test_absent_device(cem):
        pass

    def test_plain():
        pass
"""
