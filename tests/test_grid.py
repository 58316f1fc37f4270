"""Block grid geometry: Chebyshev distances against a brute-force pixel computation."""

from __future__ import annotations

import numpy as np
import pytest

import cem_checks as cc


@pytest.mark.parametrize("h, w, b, roi, scale", [(32, 24, 4, (5, 9, 6), 1), (16, 16, 2, (8, 4, 12), 2), (12, 12, 3, (0, 0, 1), 1)])
def test_distance_matches_brute_force(h, w, b, roi, scale):
    grid = cc.BlockGrid(h, w, b)
    fp = cc.ROI(*roi).footprint(scale)
    d = grid.distance(fp)
    ys, xs = np.mgrid[0:h, 0:w]
    fy, fx = np.mgrid[fp[1]:fp[3], fp[0]:fp[2]]
    for r in range(grid.rows):
        for c in range(grid.cols):
            py = ys[r * b:(r + 1) * b, c * b:(c + 1) * b].ravel()
            px = xs[r * b:(r + 1) * b, c * b:(c + 1) * b].ravel()
            cheb = np.maximum(np.abs(py[:, None] - fy.ravel()[None]), np.abs(px[:, None] - fx.ravel()[None]))
            assert d[r, c] == cheb.min(), (r, c)


def test_roi_parse_forms():
    assert cc.ROI.parse((1, 2, 3)) == cc.ROI.parse([1, 2, 3]) == cc.ROI.parse({"x": 1, "y": 2, "size": 3}) == cc.ROI(1, 2, 3)
    assert cc.ROI(8, 4, 8).footprint(4) == (2, 1, 4, 3)
