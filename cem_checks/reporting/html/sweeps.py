"""The section of a sweep: the histograms of its metrics (:func:`histogram_chart`), its assertions, the
sortable per-item table and the maps of the worst items.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import _finite, _num
from .charts import _tick_label, axis_values, nice_ticks
from .maps import _map_view


#: Geometry of a sweep's histogram (SVG user units = CSS px).
HISTOGRAM = {"width": 380, "height": 210, "left": 44, "right": 12, "top": 22, "bottom": 44}
#: Most bars of a histogram: integer metrics get one bar per value up to this many values, others this many bins
#: at most (about the square root of the number of items).
MAX_BINS = 12
#: The per-item table's column headers, by column of ``Sweep.frame`` (others are shown by their name); x, y and size
#: are shown as one column, the ROI box.
SWEEP_COLUMN_LABELS = {
    "index": "#",
    "image": "image",
    "roi": "ROI (x, y, size) px",
    "texture_energy": "texture energy",
    "support_radius_px": "support radius (px)",
    "effective_radius_px": "effective radius (px)",
    "positive_fraction_count": "positive share (count)",
    "positive_fraction_mass": "positive share (mass)",
    "negative_fraction_count": "negative share (count)",
    "negative_fraction_mass": "negative share (mass)",
    "context_share_beyond": "context share beyond r",
    "base_psnr_db": "base PSNR (dB)",
    "forward_passes": "forward passes",
    "wall_s": "time (s)",
}
#: The metric whose distribution a sweep without an assertion on a column of its table shows, by stage.
SWEEP_DEFAULT_METRIC = {"map": "context_share_beyond", "support": "support_radius_px"}


def histogram_chart(values: Any, *, metric: str, bounds: Any = (), marks: Any = (),
                    max_bins: int = MAX_BINS) -> dict:
    """The geometry of the histogram of ``values`` (one sweep metric per item; None and non-finite values are left
    out and counted in ``n_missing``; values beyond +-AXIS_LIMIT are counted at those ends), numbers only (the
    template draws the SVG): integer values get one bar per value (up to ``max_bins`` values), others
    ``min(max_bins, ceil(sqrt(n)))`` equal bins over their range; every bin is a bar (``bars``, empty ones of height
    0, so ``n_bars`` is the number of bins). ``bounds``: ``(value, label)`` of the assertions' bounds, drawn as
    dashed vertical lines; ``marks``: ``(value, ci_low, ci_high, label)`` of the assertions' statistics, a line
    with its interval as a band. ``empty`` when no value is finite."""
    raw = list(values)
    a = axis_values([float(v) for v in raw if _finite(v)])
    g = dict(HISTOGRAM)
    n_missing = len(raw) - int(a.size)
    if not a.size:
        return {**g, "empty": True, "metric": metric, "n": 0, "n_missing": n_missing, "bars": [], "n_bars": 0}
    lo, hi = float(a.min()), float(a.max())
    integer = bool(np.all(a == np.round(a))) and hi - lo + 1 <= max_bins
    if integer:
        edges = np.arange(lo - 0.5, hi + 1.0, 1.0)
    elif hi == lo:
        edges = np.array([lo - 0.5, lo + 0.5]) if lo == 0 else np.array([lo - abs(lo) * 0.05, lo + abs(lo) * 0.05])
    else:
        edges = np.linspace(lo, hi, min(max_bins, max(1, math.ceil(math.sqrt(a.size)))) + 1)
    counts, _ = np.histogram(a, bins=edges)
    extra = [float(b) for b, _ in bounds if _finite(b)] + [float(v) for m in marks for v in m[:3] if _finite(v)]
    x_lo, x_hi, x_ticks = nice_ticks(min([float(edges[0])] + extra), max([float(edges[-1])] + extra), 5)
    y_lo, y_hi, y_ticks = nice_ticks(0.0, float(max(1, counts.max())), 4, integer=True)
    pw, ph = g["width"] - g["left"] - g["right"], g["height"] - g["top"] - g["bottom"]

    def X(v: float) -> float:
        return round(g["left"] + (v - x_lo) / (x_hi - x_lo) * pw, 2)

    def Y(v: float) -> float:
        return round(g["top"] + (y_hi - v) / (y_hi - y_lo) * ph, 2)

    bars = []
    for k, n in enumerate(counts):
        left, right = X(float(edges[k])), X(float(edges[k + 1]))
        if integer:
            span = f"{edges[k] + 0.5:g}"
        else:
            close = "]" if k == len(counts) - 1 else ")"
            span = f"[{edges[k]:.4g}, {edges[k + 1]:.4g}{close}"
        bars.append({"x": round(left + 0.5, 2), "width": round(max(1.0, right - left - 1.0), 2), "y": Y(float(n)),
                     "height": round(Y(0.0) - Y(float(n)), 2), "count": int(n), "range": span})
    x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    return {
        **g,
        "empty": False,
        "metric": metric,
        "n": int(a.size),
        "n_missing": n_missing,
        "integer": integer,
        "bars": bars,
        "n_bars": len(bars),
        "plot_right": g["width"] - g["right"],
        "plot_bottom": g["height"] - g["bottom"],
        "plot_height": ph,
        "bound_top": g["top"] - 8,
        "x_ticks": [(X(v), _tick_label(v, x_step)) for v in x_ticks],
        "y_ticks": [(Y(v), _tick_label(v, y_step)) for v in y_ticks],
        "bounds": [{"x": X(float(b)), "label": str(label)} for b, label in bounds if _finite(b)],
        "marks": [{"x": X(float(v)), "band_x": X(float(lo_)) if _finite(lo_) else None,
                   "band_width": round(X(float(hi_)) - X(float(lo_)), 2) if _finite(lo_) and _finite(hi_) else 0,
                   "label": str(label)} for v, lo_, hi_, label in marks if _finite(v)],
        "x_label_x": round(g["left"] + pw / 2, 2),
        "x_label_y": g["height"] - 6,
        "y_label_x": 12,
        "y_label_y": round(g["top"] + ph / 2, 2),
        "x_label": SWEEP_COLUMN_LABELS.get(metric, metric),
        "caption": (f"distribution of {metric} over {int(a.size)} items"
                    + (f" ({n_missing} without a value left out)" if n_missing else "")
                    + (": one bar per value" if integer else f": {len(bars)} equal bins")
                    + ("; dashed: the bound" if bounds else "")
                    + ("; solid line and band: the statistic and its interval" if marks else "")),
    }


def _cell(column: str, v: Any) -> dict:
    """A cell of the per-item table: its text and the value it sorts by (numbers; text for the others)."""
    if v is None:
        return {"text": "n/a", "value": "", "kind": "number"}
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return {"text": str(v), "value": str(v), "kind": "text"}
    if not math.isfinite(v):
        return {"text": "n/a", "value": "", "kind": "number"}
    if isinstance(v, int):
        text = str(v)
    elif column in ("base_psnr_db",):
        text = f"{v:.2f}"
    elif column == "wall_s":
        text = f"{v:.2f}"
    else:
        text = f"{v:.3g}"
    return {"text": text, "value": repr(float(v)), "kind": "number"}


def _over_view(a: dict) -> dict:
    """An assertion over a sweep, as the sweep section lists it."""
    lo, hi = a.get("ci_low"), a.get("ci_high")
    conf = a.get("confidence")
    worst = []
    for w in a.get("worst_items") or []:
        if isinstance(w, dict):
            roi = w.get("roi") or []
            worst.append(f"{w.get('image')} ({', '.join(str(v) for v in roi)}): {_num(w.get('value'), '{:.4g}')}")
    shard = a.get("shard")
    return {
        "name": str(a.get("name")),
        "status": "passed" if a.get("passed") else "failed",
        "statistic": str(a.get("statistic")),
        "metric": str(a.get("metric_expression") or a.get("metric")),
        "value": _num(a.get("measured"), "{:.4g}"),
        "interval": (f"[{_num(lo, '{:.4g}')}, {_num(hi, '{:.4g}')}]" + (f" ({conf * 100:.3g}%)" if _finite(conf) else "")
                     if _finite(lo) and _finite(hi) else "n/a"),
        "bound": str(a.get("bound_text")),
        "n_items": _num(a.get("n_items")),
        "shard": (f"{shard[0]}/{shard[1]}" if isinstance(shard, list) and len(shard) == 2 else "")
                 + (f" ({a.get('source')})" if a.get("source") else ""),
        "worst": worst,
        "message": str(a.get("message") or ""),
    }


def _sweep_title(rec: dict, index: int) -> str:
    items = rec.get("items") or []
    images = len({r.get("image") for r in items if isinstance(r, dict)})
    shard, merged = rec.get("shard"), rec.get("merged_shards")
    where = ""
    if isinstance(shard, list) and len(shard) == 2:
        where = f", shard {shard[0]} of {shard[1]} (counted from 0)"
    elif isinstance(merged, list) and merged:
        n = merged[0][1] if isinstance(merged[0], list) and len(merged[0]) == 2 else "?"
        where = (f", merged from {len(merged)} of {n} shards"
                 + ("" if rec.get("complete", True) else ": incomplete, some shards missing"))
    stage = "support stage" if rec.get("stage") == "support" else "maps"
    return (f"sweep {index + 1}: {rec.get('model') or 'model'}, {stage} of {_num(rec.get('n_items'))} items over "
            f"{images} image{'' if images == 1 else 's'}{where}")


def _sweep_view(rec: dict, index: int, anchor: str) -> dict:
    """The section of sweep record ``rec`` (:func:`cem_checks.records.sweep_record`): title, settings and counts,
    the histograms of its metrics (those its assertions used, else :data:`SWEEP_DEFAULT_METRIC`), the assertions, the
    sortable per-item table (worst items marked) and the map views of the worst items."""
    columns = [c for c in rec.get("columns") or [] if isinstance(c, str)]
    items = [r for r in rec.get("items") or [] if isinstance(r, dict)]
    assertions = [a for a in rec.get("assertions") or [] if isinstance(a, dict)]
    worst_maps = [w for w in rec.get("worst_maps") or [] if isinstance(w, dict)]
    worst_index = {w.get("index") for w in worst_maps}
    shown = [c for c in columns if c not in ("x", "y", "size")]
    if all(c in columns for c in ("x", "y", "size")):
        at = shown.index("image") + 1 if "image" in shown else min(1, len(shown))
        shown.insert(at, "roi")
    header = [{"label": SWEEP_COLUMN_LABELS.get(c, c), "col": k,
               "kind": "text" if c in ("image", "roi") else "number", "column": c} for k, c in enumerate(shown)]
    rows = []
    for r in items:
        cells = []
        for c in shown:
            if c == "roi":
                box = [r.get("x"), r.get("y"), r.get("size")]
                cells.append({"text": ", ".join(str(v) for v in box), "kind": "text",
                              "value": "%09d,%09d,%09d" % tuple(int(v) if _finite(v) else 0 for v in box)})
            else:
                cells.append(_cell(c, r.get(c)))
        rows.append({"cells": cells, "worst": r.get("index") in worst_index, "index": r.get("index")})
    # histograms: one per metric of the table an assertion used (its bounds and statistics drawn), else the default
    def column_of(a: dict) -> str | None:
        for key in ("metric", "metric_expression"):
            if isinstance(a.get(key), str) and a[key] in columns:
                return a[key]
        return None

    metrics: list[str] = []
    for a in assertions:
        m = column_of(a)
        if m is not None and m not in metrics:
            metrics.append(m)
    outside = sorted({str(a.get("metric_expression") or a.get("metric")) for a in assertions if column_of(a) is None})
    if not metrics:
        default = SWEEP_DEFAULT_METRIC.get(str(rec.get("stage") or "map"))
        if default in columns:
            metrics.append(default)
    histograms = []
    for m in metrics:
        mine = [a for a in assertions if column_of(a) == m]
        bounds, marks = [], []
        for a in mine:
            b = a.get("bound")
            for v in (b if isinstance(b, list) else [b]):
                if _finite(v):
                    bounds.append((v, f"{a.get('name')}: {a.get('bound_text')}"))
            marks.append((a.get("measured"), a.get("ci_low"), a.get("ci_high"),
                          f"{a.get('statistic')} {_num(a.get('measured'), '{:.4g}')}"))
        histograms.append(histogram_chart([r.get(m) for r in items], metric=m, bounds=bounds, marks=marks))
    s = rec.get("settings") or {}
    settings = [(str(k), "n/a" if v is None else str(v)) for k, v in sorted(s.items())]
    counts = [(str(k), _num(v, "{:.3g}") if isinstance(v, float) else str(v))
              for k, v in sorted((rec.get("counts") or {}).items())]
    maps = []
    for k, w in enumerate(worst_maps):
        m = w.get("map")
        if not isinstance(m, dict):
            continue
        view = _map_view(m, k, [])
        roi = ", ".join(str(v) for v in w.get("roi") or [])
        why = "; ".join(f"{r.get('assertion')}: {r.get('metric')} = {_num(r.get('value'), '{:.4g}')}"
                        for r in w.get("reasons") or [] if isinstance(r, dict))
        view["title"] = f"worst item #{w.get('index')}: {w.get('image')}, ROI ({roi}) px: {why}"
        maps.append(view)
    return {
        "anchor": f"{anchor}-sweep-{index + 1}",
        "title": _sweep_title(rec, index),
        "stage": str(rec.get("stage") or "map"),
        "settings": settings,
        "counts": counts,
        "histograms": histograms,
        "outside_note": (f"no per-item values of {', '.join(outside)} in the records (written by a version that did "
                         "not record them): its worst items are listed with the assertion"
                         if outside else ""),
        "assertions": [_over_view(a) for a in assertions],
        "header": header,
        "rows": rows,
        "n_worst": sum(r["worst"] for r in rows),
        "maps": maps,
        "maps_open": any(not a.get("passed") for a in assertions),
        "maps_note": ("" if maps else "no assertion over this sweep named worst items: no map is recorded"),
        "merged_sources": ", ".join(str(v) for v in rec.get("merged_sources") or []),
    }
