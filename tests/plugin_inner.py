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


#: Two tests with a map and a property each (radius-2 model: support radius 2 px, exact in pixels;
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

#: A file mixing every outcome of pytest's summary line, with and without maps, 14 tests: 3 passed (1 with a map, 2
#: without; one of them also errors at teardown), 3 failed (a failed property, a plain assertion, a strict xpass), 3 errors
#: (2 fixture errors in setup, one of a test using cem, and the teardown error), 2 skipped (a marker, at run time),
#: 3 xfailed (a plain one, one never run, one with a failed property: an expected failure), 1 xpassed.
OUTCOMES_SUITE = TWO_PROPERTY_SUITE + """
    @pytest.fixture
    def broken():
        raise RuntimeError("fixture boom")

    @pytest.fixture
    def bad_teardown():
        yield
        raise RuntimeError("teardown boom")

    def test_plain():
        pass

    def test_plain_fails():
        assert 1 == 2

    def test_setup_error(broken):
        pass

    @pytest.mark.cem(**TINY)
    def test_cem_setup_error(cem, broken):
        pass

    def test_teardown_error(bad_teardown):
        pass

    @pytest.mark.skip(reason="never runs")
    def test_skipped_by_marker():
        pass

    def test_skipped_at_run_time():
        pytest.skip("skipped at run time")

    @pytest.mark.xfail(reason="known bug")
    def test_xfailed():
        assert False

    @pytest.mark.xfail(run=False, reason="would crash")
    def test_xfail_not_run():
        pass

    @pytest.mark.xfail(strict=True, reason="the 5 px model is claimed to reach 1 px")
    @pytest.mark.cem(**TINY)
    def test_expected_property_failure(cem):
        cc.assert_receptive_field_within(cem(ConvStack((1, 1, 1, 1, 1)), IMG), radius=1)

    @pytest.mark.xfail(reason="maybe fixed")
    def test_xpassed():
        pass

    @pytest.mark.xfail(strict=True, reason="strict")
    def test_strict_xpass():
        pass
"""

#: pytest's summary line of :data:`OUTCOMES_SUITE` (``RunResult.parseoutcomes()`` keys).
OUTCOMES_SUITE_COUNTS = {"passed": 3, "failed": 3, "errors": 3, "skipped": 2, "xfailed": 3, "xpassed": 1}
