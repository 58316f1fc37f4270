"""Shared set-up of the pytester tests of the ``cem_sweep`` fixture: a sweep test module over two tiny images.

The sweep has 4 items (2 images of 16x16 px x 2 ROIs of 4 px, blocks of 4 px: a 4x4 grid per map) of the radius-2
``ConvStack((1, 1))``, so a run costs a few seconds; ``--cem-shard K/2`` splits it into items {0, 2} and {1, 3}.
"""

from __future__ import annotations

from plugin_inner import make_suite

#: A test sweeping the 4 items with settings from the marker (task, seed) and the call, with one assertion that
#: passes (support radius) and a check that fails (negative share), both recorded.
SWEEP_SUITE = """
    IMAGES = {"left": IMG[:16, :16].copy(), "right": IMG[16:, 16:].copy()}
    ROIS = [(0, 0, 4), (8, 8, 4)]
    SWEEP = dict(block_size=4, coarse=2, fine=4, context_radius=2, device="cpu")

    @pytest.mark.cem(task="dn25", seed=1)
    def test_sweep(cem_sweep):
        s = cem_sweep(ConvStack((1, 1)), IMAGES, rois=ROIS, **SWEEP)
        cc.assert_over(s, "support_radius_px", at_most=2, statistic="max", name="local_reach")
        cc.check_over(s, "negative_fraction_mass", at_most=0.01, decision="point", name="rarely_hurt")
"""


def make_sweep_suite(pytester, body: str = SWEEP_SUITE, name: str = "test_suite"):
    """:func:`plugin_inner.make_suite` with ``body`` (default :data:`SWEEP_SUITE`)."""
    return make_suite(pytester, body, name)
