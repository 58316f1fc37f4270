"""The effect-vs-distance chart of a map as geometry (numbers only; the template draws the SVG), and the
round ticks of the report's charts.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import _grid


#: The largest magnitude on the charts' axes: a results file may hold numbers up to the float limit (~1.8e308, e.g.
#: the effects of a model that blew up), whose range and tick steps overflow; the axes end at +-AXIS_LIMIT and the
#: values beyond are drawn at the ends (:func:`axis_values`).
AXIS_LIMIT = 1e300


def axis_values(values: Any) -> np.ndarray:
    """``values`` as float64, clipped to ``[-AXIS_LIMIT, AXIS_LIMIT]`` (infinities too; NaN stays NaN)."""
    return np.clip(np.asarray(values, dtype=np.float64), -AXIS_LIMIT, AXIS_LIMIT)


def nice_ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> tuple[float, float, list[float]]:
    """Round tick values (1, 2 or 5 times a power of ten) covering ``[lo, hi]`` (clipped to +-:data:`AXIS_LIMIT`)
    with about ``n`` ticks; returns the widened range and the ticks. ``integer``: steps of at least 1."""
    lo, hi = (float(axis_values(v)) if math.isfinite(v) else v for v in (lo, hi))
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        lo, hi = (lo - 1.0, lo + 1.0) if math.isfinite(lo) else (-1.0, 1.0)
    raw = (hi - lo) / max(1, n - 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 5.0, 10.0) if m * mag >= raw)
    if integer:
        step = max(1.0, float(round(step)))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    ticks = [k * step for k in range(first, last + 1)]
    return ticks[0], ticks[-1], ticks


def _tick_label(v: float, step: float) -> str:
    if step >= 1e6:  # large values: significant digits, not every digit (at most 8 characters)
        return "0" if v == 0 else f"{v:.3g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    text = f"{v:.{decimals}f}"
    return "0" if float(text) == 0 else text


#: Geometry of the effect-vs-distance chart (SVG user units = CSS px).
CHART = {"width": 380, "height": 240, "left": 56, "right": 12, "top": 12, "bottom": 44}
#: Point colours of the chart: positive (red), negative (blue) and zero (grey) effects.
CHART_COLOURS = {"pos": "#e00000", "neg": "#0030e0", "zero": "#9a9a9a"}


#: Most blocks the effect-vs-distance chart draws one point each. A map with more blocks outside the ROI is drawn
#: per distance instead (a bar from the lowest to the highest effect, the mean line, and the lowest and highest
#: block as points), so the chart grows with the number of distances, not of blocks.
MAX_CHART_POINTS = 2000


def profile_chart(effect: Any, roi_mask: Any, distance: Any, max_points: int = MAX_CHART_POINTS) -> dict | None:
    """The geometry of the effect-vs-distance chart of a map (numbers only; the template draws the SVG). Blocks
    outside the ROI with a finite effect are charted (x: Chebyshev distance to the ROI in input px, y: effect dB):
    up to ``max_points`` of them one point each, in order of distance; above that, per distance a bar from the
    lowest to the highest effect (``ranges``, with the count, min, mean and max) and the lowest and highest block
    as points (``aggregated`` True, ``note`` says so). The line of the mean effect per distance is always drawn.
    None when a grid is missing."""
    e = _grid(effect, None)
    if e is None:
        return None
    roi = _grid(roi_mask, e.shape, bool)
    d = _grid(distance, e.shape, np.int64)
    if roi is None or d is None:
        return None
    keep = ~roi & np.isfinite(e)
    g = dict(CHART)
    pw, ph = g["width"] - g["left"] - g["right"], g["height"] - g["top"] - g["bottom"]
    n_roi = int(roi.sum())
    if not keep.any():
        return {**g, "points": [], "n_points": 0, "n_roi": n_roi, "empty": True}
    rows, cols = np.nonzero(keep)
    dist = d[rows, cols].astype(np.int64)
    eff = e[rows, cols]
    order = np.lexsort((cols, rows, dist))
    rows, cols, dist, eff = rows[order], cols[order], dist[order], eff[order]
    val = axis_values(eff)  # the drawn values: the recorded ones, those beyond +-AXIS_LIMIT at the axis' ends
    x_lo, x_hi, x_ticks = nice_ticks(0.0, float(max(1, dist.max())), 6, integer=True)
    y_lo, y_hi, y_ticks = nice_ticks(min(0.0, float(val.min())), max(0.0, float(val.max())), 5)
    if y_lo == y_hi:
        y_lo, y_hi = y_lo - 1.0, y_hi + 1.0

    def X(v: float) -> float:
        return round(g["left"] + (v - x_lo) / (x_hi - x_lo) * pw, 2)

    def Y(v: float) -> float:
        return round(g["top"] + (y_hi - v) / (y_hi - y_lo) * ph, 2)

    # per distance (dist is sorted): first index, count, mean, min, max
    dists, starts, counts = np.unique(dist, return_index=True, return_counts=True)
    groups = [(int(v), int(s), int(k), val[s:s + k]) for v, s, k in zip(dists, starts, counts)]
    means = [(v, float(seg.mean())) for v, _, _, seg in groups]
    n_blocks = int(eff.size)
    aggregated = n_blocks > max_points
    if aggregated:
        shown = sorted({i for _, s, _, seg in groups for i in (s + int(np.argmin(seg)), s + int(np.argmax(seg)))})
    else:
        shown = range(n_blocks)
    points = [
        {"cx": X(dist[i]), "cy": Y(val[i]), "kind": "pos" if eff[i] > 0 else "neg" if eff[i] < 0 else "zero",
         "distance": int(dist[i]), "effect": f"{eff[i]:+.4g}", "row": int(rows[i]), "col": int(cols[i])}
        for i in shown
    ]
    ranges = [
        {"cx": X(v), "y_top": Y(float(seg.max())), "y_bottom": Y(float(seg.min())), "distance": v, "count": k,
         "min": f"{seg.min():+.4g}", "mean": f"{seg.mean():+.4g}", "max": f"{seg.max():+.4g}"}
        for v, _, k, seg in groups
    ] if aggregated else []
    if aggregated:
        note = (f"{n_blocks} blocks: shown as per-distance min/mean/max (more than the {max_points} drawn one by one):"
                " a bar from the lowest to the highest effect at each distance, the line through the means, and "
                "the lowest and highest block of each distance as points")
        caption = (f"effect against distance, per distance: bar from min to max, points: the lowest and highest "
                   f"block (red positive, blue negative, grey zero), line: mean; the {n_roi} ROI blocks are left out")
    else:
        note = None
        caption = (f"effect against distance: one point per block outside the ROI (red positive, blue negative, grey "
                   f"zero), line: mean per distance; the {n_roi} ROI blocks are left out")
    x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    return {
        **g,
        "empty": False,
        "plot_right": g["width"] - g["right"],
        "plot_bottom": g["height"] - g["bottom"],
        "x_ticks": [(X(v), _tick_label(v, x_step)) for v in x_ticks],
        "y_ticks": [(Y(v), _tick_label(v, y_step)) for v in y_ticks],
        "zero_y": Y(0.0),
        "points": points,
        "n_points": len(points),
        "n_blocks": n_blocks,
        "n_roi": n_roi,
        "aggregated": aggregated,
        "ranges": ranges,
        "note": note,
        "caption": caption,
        "mean_line": " ".join(f"{X(v)},{Y(m)}" for v, m in means),
        "means": [{"distance": v, "cx": X(v), "cy": Y(m), "effect": f"{m:+.4g}"} for v, m in means],
        "x_label_x": round(g["left"] + pw / 2, 2),
        "x_label_y": g["height"] - 6,
        "y_label_x": 14,
        "y_label_y": round(g["top"] + ph / 2, 2),
        "colours": CHART_COLOURS,
    }
