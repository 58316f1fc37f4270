"""The self-contained HTML report of a results document (:mod:`cem_checks.records`, as ``--cem-json`` writes it).

:func:`render_report` turns the document into one HTML page: summary, a sortable and filterable table of the
properties (failures first), and per test its maps and properties (measured vs bound). Per map: the degraded model
input and the model output with the ROI box, the effect map over the input and per block with a colour bar (base64
PNG data URIs), the effect-vs-distance chart (inline SVG; per distance min/mean/max when a map has more than
:data:`MAX_CHART_POINTS` blocks outside the ROI, so the page grows with the distances, not the blocks), the
uncertainty summary with a stderr map, block counts
and settings. Per sweep (``sweeps`` of a test, :func:`cem_checks.records.sweep_record`): the distribution of each
metric its assertions used (an SVG histogram, :func:`histogram_chart`, with the bounds and the statistics), the
assertions (statistic, interval, bound, worst items), a sortable per-item table (image, ROI box, texture energy,
the metric columns; worst items marked) and the map views of the worst items. No external resources and no script library: the page opens offline. Maps recorded by older
versions, without images, distances or stderr, render with a note in place of what they lack.

Each test's section starts with its failed properties, expanded: the measured value, the bound, a one-line hint on
how to act (:mod:`cem_checks.reporting.hints`), the offending blocks as input-px boxes ``(x, y, w, h)`` with their
effect, CI and distance, and the full message. The offending blocks are outlined on the panels of the test's maps
of the same run (model, task, ROI, block size, scale and seed): elements with ``data-cem-offending="x,y,w,h"``
(input px) positioned over the support panel, the heatmap and the overlay. Every test of the results appears in
the summary's counts (as pytest's summary line counts them, :func:`cem_checks.records.outcome_counts`); tests
without maps, properties or a failure are listed in one table. A failed property of a test that pytest counted as
an expected failure (xfail) is labelled "xfailed", apart from the failures.

The Jinja2 templates live in the top-level ``templates/`` folder of the source tree, installed inside the wheel as
``cem_checks/templates/`` (see :func:`template_dir`). Autoescape is on and undefined names raise; all the logic is
here, the template only lays out the view model.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .._io import atomic_write_text
from .heatmap import (SUPPORT_RGB, _png, cell_size, colorbar_png, colorbar_position, float_grid,
                      heatmap_png, sequential_bar_png, sequential_png, support_png)
from .hints import property_hint
from .images import boxed_image, overlay_image

TEMPLATE = "report.html.j2"

__all__ = ["MAX_BINS", "MAX_CHART_POINTS", "TEMPLATE", "histogram_chart", "offending_boxes", "panel_pngs", "render_report", "report_context",
           "section_anchor", "template_dir", "write_report"]


def template_dir() -> Path:
    """The folder of the report templates: ``cem_checks/templates`` in an installed wheel, else the top-level
    ``templates/`` of the source checkout (editable installs)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "templates", here.parents[1] / "templates"):
        if (candidate / TEMPLATE).is_file():
            return candidate
    raise FileNotFoundError(f"the report template {TEMPLATE} was found neither in {here.parent / 'templates'} "
                            f"nor in {here.parents[1] / 'templates'}")


def _environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    return Environment(loader=FileSystemLoader(str(template_dir())), autoescape=True, undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _finite(v: Any) -> bool:
    """``v`` is a finite number (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _num(v: Any, fmt: str = "{:.3g}", unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        return fmt.format(v) + unit
    return f"{v}{unit}"


def section_anchor(nodeid: str) -> str:
    """The id of a test's section in the report: the node id made URL-safe (at most 80 characters) and 8 hex digits
    of its SHA-1, so that it depends on the node id alone (other tools link to it, e.g. the pytest-html extras)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", str(nodeid)).strip("-")[:80]
    digest = hashlib.sha1(str(nodeid).encode("utf-8")).hexdigest()[:8]
    return f"t-{slug}-{digest}" if slug else f"t-{digest}"


def _grid(values: Any, shape: tuple[int, int] | None, dtype=float) -> "np.ndarray | None":
    """A (rows, cols) array of a record's nested list (None as NaN for floats), or None when absent, not 2-D or
    not of ``shape`` (any non-empty 2-D shape when None)."""
    if not isinstance(values, list):
        return None
    try:
        a = float_grid(values) if dtype is float else np.array(values, dtype=dtype)
    except (TypeError, ValueError):
        return None
    if a.ndim != 2 or not a.size:
        return None
    return a if shape is None or a.shape == tuple(shape) else None


def nice_ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> tuple[float, float, list[float]]:
    """Round tick values (1, 2 or 5 times a power of ten) covering ``[lo, hi]`` with about ``n`` ticks; returns
    the widened range and the ticks. ``integer``: steps of at least 1."""
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
    x_lo, x_hi, x_ticks = nice_ticks(0.0, float(max(1, dist.max())), 6, integer=True)
    y_lo, y_hi, y_ticks = nice_ticks(min(0.0, float(eff.min())), max(0.0, float(eff.max())), 5)
    if y_lo == y_hi:
        y_lo, y_hi = y_lo - 1.0, y_hi + 1.0

    def X(v: float) -> float:
        return round(g["left"] + (v - x_lo) / (x_hi - x_lo) * pw, 2)

    def Y(v: float) -> float:
        return round(g["top"] + (y_hi - v) / (y_hi - y_lo) * ph, 2)

    # per distance (dist is sorted): first index, count, mean, min, max
    dists, starts, counts = np.unique(dist, return_index=True, return_counts=True)
    groups = [(int(v), int(s), int(k), eff[s:s + k]) for v, s, k in zip(dists, starts, counts)]
    means = [(v, float(seg.mean())) for v, _, _, seg in groups]
    n_blocks = int(eff.size)
    aggregated = n_blocks > max_points
    if aggregated:
        shown = sorted({i for _, s, _, seg in groups for i in (s + int(np.argmin(seg)), s + int(np.argmax(seg)))})
    else:
        shown = range(n_blocks)
    points = [
        {"cx": X(dist[i]), "cy": Y(eff[i]), "kind": "pos" if eff[i] > 0 else "neg" if eff[i] < 0 else "zero",
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


def _block_size(m: dict) -> int | None:
    """The block side (input px) of a map summary, from its settings (None when absent or not a positive int)."""
    b = (m.get("settings") or {}).get("block_size")
    return int(b) if isinstance(b, int) and not isinstance(b, bool) and b > 0 else None


def _shape(m: dict) -> tuple[int, int] | None:
    grid = m.get("grid") or []
    if len(grid) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in grid):
        return int(grid[0]), int(grid[1])
    return None


#: The settings that identify the run of a map: a property outcome and a map summary of a test with equal values
#: are of the same map (the property's offending blocks are outlined on that map's panels).
RUN_KEYS = ("model", "task", "roi", "block_size", "scale", "seed")


def _run_key(settings: Any) -> str:
    s = settings if isinstance(settings, dict) else {}
    return json.dumps([s.get(k) for k in RUN_KEYS], default=str)


def _block_box(block: dict, block_px: int | None) -> list[int] | None:
    """The box ``[x, y, w, h]`` (input px) of an offending block record: its ``box_px``, else its row and column
    times ``block_px``; None when neither is known."""
    box = block.get("box_px")
    if isinstance(box, list) and len(box) == 4 and all(isinstance(v, int) for v in box):
        return [int(v) for v in box]
    r, c = block.get("row"), block.get("col")
    if block_px and isinstance(r, int) and isinstance(c, int):
        return [c * block_px, r * block_px, block_px, block_px]
    return None


def _outlines(boxes: list[dict], frame_w: float, frame_h: float) -> list[dict]:
    """The outline elements of ``boxes`` (``{"box": [x, y, w, h], "title": ...}``, input px) over an image showing
    the input-px rectangle ``(0, 0, frame_w, frame_h)``: ``data`` (``"x,y,w,h"``) and the CSS position in percent of
    the image."""
    out = []
    for b in boxes:
        x, y, w, h = b["box"]
        style = (f"left: {100 * x / frame_w:.4f}%; top: {100 * y / frame_h:.4f}%; width: {100 * w / frame_w:.4f}%; "
                 f"height: {100 * h / frame_h:.4f}%")
        out.append({"data": ",".join(str(v) for v in b["box"]), "style": style, "title": b["title"]})
    return out


def _colorbar_view(bound: Any, vmin: Any, vmax: Any, width: int) -> dict:
    """A colour bar of the effect display (-bound .. +bound dB) ``width`` px wide, its labels written as text under
    it: the two ends and 0, and the map's min and max effect (ticks on the bar)."""
    b = float(bound)
    ticks = []
    for name, v in (("min", vmin), ("max", vmax)):
        if _finite(v):
            ticks.append(f"{name} {v:+.3g} dB")
    clipped = [v for v in (vmin, vmax) if isinstance(v, (int, float)) and math.isfinite(v) and abs(v) > b]
    return {
        "image": _data_uri(colorbar_png(b, vmin, vmax, width)),
        "width": int(width),
        "low": f"-{b:g} dB",
        "high": f"+{b:g} dB",
        "range": ("map " + ", ".join(ticks) + (" (beyond the scale: clipped)" if clipped else "")) if ticks else
                 "map min and max: n/a",
        "tick_positions": [round(100 * colorbar_position(v, b), 2) for v in (vmin, vmax)
                           if isinstance(v, (int, float)) and math.isfinite(v)],
    }


def _image_views(m: dict, effect: Any, bound: Any) -> tuple[dict, str | None]:
    """The data URIs of the input, output and overlay images of a map summary (None where there is none), the
    overlay's width (px, 0 without one), the input-px size of the image the overlay shows, and a note saying why
    images are missing (None when all are drawn)."""
    views: dict[str, Any] = {"input": None, "output": None, "overlay": None, "overlay_width": 0, "source": None}
    images = m.get("images")
    if not isinstance(images, dict):
        return views, "no image data in the records (this map was recorded by an older pytest-cem)"
    if images.get("max_px") == 0:
        return views, ("images not embedded: the maximum image size was 0 px (--cem-report-max-image-px / "
                       "--max-image-px)")
    notes = []
    for key, what in (("input", "input"), ("output", "output")):
        rec = images.get(key)
        if not isinstance(rec, dict):
            notes.append(f"no {what} image in the records (the result carries none, e.g. a map built with "
                         "CEMResult.from_effects or loaded from a file saved without images)")
            continue
        try:
            arr, _ = boxed_image(rec)
            views[key] = _data_uri(_png(Image.fromarray(arr, mode="RGB")))
            if key == "input" and effect and bound:
                over, _ = overlay_image(rec, effect, bound, _block_size(m))
                views["overlay"] = _data_uri(_png(Image.fromarray(over, mode="RGB")))
                views["overlay_width"] = int(over.shape[1])
                src = (rec.get("source_width"), rec.get("source_height"))
                if all(isinstance(v, int) and v > 0 for v in src):
                    views["source"] = src
        except (ValueError, TypeError, KeyError) as exc:
            notes.append(f"unreadable {what} image data in the records ({exc})")
    return views, "; ".join(notes) or None


def _uncertainty_view(m: dict) -> dict | None:
    u = m.get("uncertainty")
    if not isinstance(u, dict):
        return None
    rows = [
        ("sampled blocks", _num(u.get("sampled_blocks"))),
        ("median stderr", _num(u.get("stderr_median_db"), "{:.3g}", " dB")),
        ("max stderr", _num(u.get("stderr_max_db"), "{:.3g}", " dB")),
        ("max 95% CI half-width", _num(u.get("ci_halfwidth_max_db"), "{:.3g}", " dB")),
        ("non-zero blocks whose 95% CI contains 0",
         f"{_num(u.get('nonzero_ci_contains_zero'))} of {_num(u.get('nonzero_blocks'))}"),
        ("draws", f"{_num(u.get('draws_total'))} in all, {_num(u.get('draws_mean'), '{:.1f}')} per sampled block, "
                  f"at most {_num(u.get('draws_max'))}"),
    ]
    stderr_map = None
    shape = _shape(m) or (0, 0)
    se = _grid(m.get("stderr_db"), shape)
    n = _grid(m.get("n_samples"), shape, np.int64)
    vmax = u.get("stderr_max_db")
    width = 0
    if se is not None and n is not None:
        shown = np.where(n > 0, se, np.nan)
        top = float(vmax) if isinstance(vmax, (int, float)) and vmax > 0 else 0.0
        png = sequential_png(shown, top, _grid(m.get("roi_mask"), shape, bool))
        stderr_map = _data_uri(png)
        width = max(1, max(2, cell_size(*shape) // 2) * shape[1])
    bar = None
    if stderr_map is not None:
        bar = {"image": _data_uri(sequential_bar_png(max(120, width))), "width": max(120, width), "low": "0 dB",
               "high": _num(vmax, "{:.3g}", " dB")}
    return {"rows": rows, "stderr_map": stderr_map, "stderr_max": _num(vmax, "{:.3g}", " dB"), "bar": bar}


def _rgb(c: tuple) -> str:
    return "#%02x%02x%02x" % tuple(int(v) for v in c)


def _support_view(m: dict) -> dict | None:
    """The support panel of a map summary (None when it records no support grid) and its legend."""
    shape = _shape(m)
    sup = _grid(m.get("support"), shape, bool)
    if sup is None:
        return None
    resolved = _grid(m.get("resolved"), sup.shape, bool)
    roi = _grid(m.get("roi_mask"), sup.shape, bool)
    n_unresolved = int((~resolved).sum()) if resolved is not None else 0
    caption = (f"support: {int(sup.sum())} of {sup.size} blocks change the ROI output when replaced (purple; exact, "
               "bit for bit); white: no effect")
    if n_unresolved:
        caption += (f"; grey: {n_unresolved} blocks not decided (their group changed the ROI output, none was "
                    "tested alone)")
    legend = [(_rgb(SUPPORT_RGB["support"]), f"changes the ROI output ({int(sup.sum())})"),
              (_rgb(SUPPORT_RGB["none"]), "no effect")]
    if n_unresolved:
        legend.append((_rgb(SUPPORT_RGB["unresolved"]), f"not decided ({n_unresolved})"))
    return {"image": _data_uri(support_png(sup, resolved, roi)), "caption": caption + "; ROI outlined",
            "legend": legend, "width": cell_size(*sup.shape) * sup.shape[1]}


def _offending_views(m: dict, boxes: list[dict], images: dict) -> dict:
    """The outlines of the offending ``boxes`` over the panels of map summary ``m``: ``grid`` for the support panel
    and the heatmap (which show the grid of blocks), ``overlay`` for the overlay (which shows the whole input)."""
    shape, b = _shape(m), _block_size(m)
    grid = _outlines(boxes, shape[1] * b, shape[0] * b) if boxes and shape and b else []
    source = images.get("source")
    overlay = _outlines(boxes, source[0], source[1]) if boxes and source else []
    return {"grid": grid, "overlay": overlay, "count": len(boxes)}


def _support_stage_view(m: dict, index: int, boxes: list[dict]) -> dict:
    """The view of a map of which only the support stage ran: the support panel and its numbers, no effects."""
    s = m.get("settings") or {}
    grid = m.get("grid") or ["?", "?"]
    images, image_note = _image_views(m, None, None)
    within, beyond = m.get("within_px"), m.get("beyond_within")
    radius = m.get("support_radius_px")
    numbers = [
        ("support radius", _num(radius, unit=" px") if radius is not None else "not searched"),
        ("base ROI PSNR", _num(m.get("base_psnr_db"), "{:.2f}", " dB")),
    ]
    if within is not None:
        numbers.append((f"anything beyond {_num(within, '{:g}')} px", "yes" if beyond else "no"))
    settings = [
        ("task", s.get("task")),
        ("seed", s.get("seed")),
        ("draws per group test", s.get("draws")),
        ("device", s.get("device")),
        ("block size", _num(s.get("block_size"), unit=" px")),
        ("ROI (x, y, size)", ", ".join(str(v) for v in s.get("roi") or []) or "n/a"),
        ("forward passes", _num(m.get("forward_passes"))),
        ("time", _num(m.get("wall_s"), "{:.2f}", " s")),
        ("patch bank", ", ".join(f"{k} {v}" for k, v in sorted((m.get("patch_bank") or {}).items())) or "n/a"),
    ]
    return {
        "stage": "support",
        "title": f"map {index + 1}: {m.get('model') or 'model'} ({grid[0]}x{grid[1]} blocks), support stage only",
        "stage_note": (f"Only the support stage ran: the properties of this test asked which blocks can change the "
                       f"ROI output, which {_num(m.get('group_tests'))} group tests and "
                       f"{_num(m.get('forward_passes'))} forward passes answered; no effect was estimated."),
        "model": str(m.get("model") or ""),
        "heatmap": None,
        "colorbar": None,
        "overlay_colorbar": None,
        "images": images,
        "image_note": image_note,
        "support": _support_view(m),
        "offending": _offending_views(m, boxes, images),
        "chart": None,
        "uncertainty": None,
        "bound": "n/a",
        "counts": [
            ("in the support", _num(m.get("support_blocks"))),
            ("decided", _num(m.get("resolved_blocks"))),
            ("group tests", _num(m.get("group_tests"))),
        ],
        "numbers": numbers,
        "settings": [(k, "n/a" if v is None else str(v)) for k, v in settings],
    }


def _map_view(m: dict, index: int, boxes: list[dict]) -> dict:
    if m.get("stage") == "support":
        return _support_stage_view(m, index, boxes)
    s = m.get("settings") or {}
    effect = m.get("effect_db")
    bound = m.get("display_bound_db")
    heatmap = colorbar = overlay_colorbar = None
    images, image_note = _image_views(m, effect, bound)
    if effect and bound:
        heatmap = _data_uri(heatmap_png(effect, bound, m.get("roi_mask")))
        width = cell_size(len(effect), len(effect[0])) * len(effect[0])
        colorbar = _colorbar_view(bound, m.get("effect_min_db"), m.get("effect_max_db"), width)
        if images["overlay"]:
            overlay_colorbar = _colorbar_view(bound, m.get("effect_min_db"), m.get("effect_max_db"),
                                              images["overlay_width"])
    chart = profile_chart(effect, m.get("roi_mask"), m.get("distance_px")) if effect else None
    grid = m.get("grid") or ["?", "?"]
    settings = [
        ("task", s.get("task")),
        ("seed", s.get("seed")),
        ("mode", s.get("mode")),
        ("samples", f"coarse {s.get('coarse')}, fine {s.get('fine')}"),
        ("device", s.get("device")),
        ("block size", _num(s.get("block_size"), unit=" px")),
        ("ROI (x, y, size)", ", ".join(str(v) for v in s.get("roi") or []) or "n/a"),
        ("zero threshold", _num(s.get("tol_db"), unit=" dB")),
        ("forward passes", _num(m.get("forward_passes"))),
        ("time", _num(m.get("wall_s"), "{:.2f}", " s")),
        ("patch bank", ", ".join(f"{k} {v}" for k, v in sorted((m.get("patch_bank") or {}).items())) or "n/a"),
    ]
    return {
        "stage": "map",
        "title": f"map {index + 1}: {m.get('model') or 'model'} ({grid[0]}x{grid[1]} blocks)",
        "stage_note": None,
        "model": str(m.get("model") or ""),
        "support": _support_view(m),
        "offending": _offending_views(m, boxes, images),
        "heatmap": heatmap,
        "colorbar": colorbar,
        "overlay_colorbar": overlay_colorbar,
        "images": images,
        "image_note": image_note,
        "chart": chart,
        "uncertainty": _uncertainty_view(m),
        "bound": _num(bound, "{:g}", " dB"),
        "counts": [
            ("positive", _num(m.get("positive_blocks"))),
            ("negative", _num(m.get("negative_blocks"))),
            ("zero", _num(m.get("zero_blocks"))),
        ],
        "numbers": [
            ("base ROI PSNR", _num(m.get("base_psnr_db"), "{:.2f}", " dB")),
            ("effect min", _num(m.get("effect_min_db"), "{:+.3g}", " dB")),
            ("effect max", _num(m.get("effect_max_db"), "{:+.3g}", " dB")),
            ("support radius", _num(m.get("support_radius_px"), unit=" px")),
        ],
        "settings": [(k, "n/a" if v is None else str(v)) for k, v in settings],
    }


def panel_pngs(m: dict, boxes: list[dict]) -> list[tuple[str, bytes]]:
    """The map panels of map summary ``m`` as PNG images with the offending ``boxes`` (:func:`offending_boxes`)
    drawn in (:data:`~cem_checks.reporting.images.OFFENDING_RGB` between dark lines): ``(name, png)`` for the
    effect over the input (when the summary has images), the effect per block and the support, as far as the
    summary records them. For tools that show images, not HTML (the pytest-html extras)."""
    from .heatmap import heatmap_image, support_image
    from .images import OFFENDING_RGB, draw_box

    out: list[tuple[str, bytes]] = []
    shape, b = _shape(m), _block_size(m)
    effect, bound = m.get("effect_db"), m.get("display_bound_db")

    def outlined(arr: np.ndarray, scale_x: float, scale_y: float, thickness: int) -> bytes:
        arr = np.array(arr, copy=True)
        for box in boxes:
            x, y, w, h = box["box"]
            draw_box(arr, (math.floor(x * scale_x), math.floor(y * scale_y), math.ceil((x + w) * scale_x),
                           math.ceil((y + h) * scale_y)), OFFENDING_RGB, thickness)
        return _png(Image.fromarray(arr, mode="RGB"))

    images = m.get("images") if isinstance(m.get("images"), dict) else {}
    rec = images.get("input")
    if effect and bound and isinstance(rec, dict):
        try:
            over, _ = overlay_image(rec, effect, bound, b)
            src_w, src_h = rec.get("source_width"), rec.get("source_height")
            if isinstance(src_w, int) and isinstance(src_h, int) and src_w > 0 and src_h > 0:
                out.append(("CEM over the input", outlined(over, over.shape[1] / src_w, over.shape[0] / src_h, 2)))
        except (ValueError, TypeError, KeyError):
            pass  # unreadable image data: no overlay panel here (the cem report says why where it draws the map)
    if effect and bound and shape and b:
        cell = cell_size(*shape)
        heat = np.asarray(heatmap_image(effect, bound, m.get("roi_mask"), cell))
        out.append(("CEM per block", outlined(heat, cell / b, cell / b, max(1, cell // 8))))
    sup = _grid(m.get("support"), shape, bool) if shape else None
    if sup is not None and b:
        cell = cell_size(*shape)
        resolved, roi = _grid(m.get("resolved"), shape, bool), _grid(m.get("roi_mask"), shape, bool)
        arr = np.asarray(support_image(sup, resolved, roi, cell))
        out.append(("support", outlined(arr, cell / b, cell / b, max(1, cell // 8))))
    return out


# ------------------------------------------------------------------------------------------ sweeps
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
    out and counted in ``n_missing``), numbers only (the template draws the SVG): integer values get one bar per
    value (up to ``max_bins`` values), others ``min(max_bins, ceil(sqrt(n)))`` equal bins over their range; every
    bin is a bar (``bars``, empty ones of height 0, so ``n_bars`` is the number of bins). ``bounds``: ``(value,
    label)`` of the assertions' bounds, drawn as dashed vertical lines; ``marks``: ``(value, ci_low, ci_high,
    label)`` of the assertions' statistics, a line with its interval as a band. ``empty`` when no value is
    finite."""
    raw = list(values)
    a = np.array([float(v) for v in raw if _finite(v)], dtype=np.float64)
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


#: The status of a property in the report: passed, failed, or failed inside a test pytest counted as an expected
#: failure (xfail), with the label shown.
PROPERTY_STATUS = {"passed": "passed", "failed": "failed", "xfailed": "expected failure (xfail)"}


def _within_bound(p: dict, distance: Any) -> bool:
    """Whether a listed block of property record ``p`` lies within the property's distance bound: for a bound in px
    compared with ``<=`` / ``<`` (receptive field, effective radius), the blocks at that distance or nearer do not
    break it (they are listed after the offenders, as context); other properties: never."""
    bound, op = p.get("bound"), p.get("op")
    if p.get("unit") != "px" or op not in ("<=", "<") or not isinstance(distance, int):
        return False
    if isinstance(bound, bool) or not isinstance(bound, (int, float)):
        return False
    return distance <= bound if op == "<=" else distance < bound


def _block_rows(p: dict, block_px: int | None) -> list[dict]:
    """The blocks listed by property record ``p`` as table rows: box (input px), distance, effect, CI, detail, and
    whether the block is an offender (outlined) or lies within the bound (:func:`_within_bound`)."""
    rows = []
    for b in p.get("worst_blocks") or []:
        if not isinstance(b, dict):
            continue
        box = _block_box(b, block_px)
        effect, lo, hi = b.get("effect_db"), b.get("ci_low_db"), b.get("ci_high_db")
        known = isinstance(effect, (int, float)) and not isinstance(effect, bool)
        within = _within_bound(p, b.get("distance_px"))
        rows.append({
            "offending": not within,
            "row_class": "context-block" if within else "offending-block",
            "box": box,
            "box_text": ", ".join(map(str, box)) if box else f"row {b.get('row')}, col {b.get('col')}",
            "grid": f"row {b.get('row')}, col {b.get('col')}",
            "distance": _num(b.get("distance_px"), unit=" px"),
            "effect": f"{effect:+.3f} dB" if known else "not estimated (support stage)",
            "ci": (f"[{lo:+.3f}, {hi:+.3f}] dB" if all(isinstance(v, (int, float)) for v in (lo, hi)) else "n/a"),
            "detail": "; ".join(x for x in (str(b.get("detail") or ""),
                                             "within the bound: listed for context, not outlined" if within else "")
                                if x),
        })
    return rows


def _property_view(p: dict, show_passing: bool, status: str, block_px: int | None) -> dict:
    """The view of property record ``p`` whose report status (:data:`PROPERTY_STATUS`) is ``status``: failures
    carry the hint and the offending blocks."""
    blocks = _block_rows(p, block_px) if status != "passed" else []
    return {
        "name": str(p.get("name")),
        "status": status,
        "status_label": PROPERTY_STATUS[status],
        "open": status != "passed" or show_passing,
        "measured": str(p.get("measured_text")),
        "bound": str(p.get("bound_text")),
        "description": str(p.get("description") or ""),
        "note": str(p.get("note") or ""),
        "hint": property_hint(p) if status != "passed" else "",
        "blocks": blocks,
        "blocks_note": ("" if blocks or status == "passed" else "no offending block recorded for this property"),
        "message": str(p.get("message") or ""),
        "model": str((p.get("settings") or {}).get("model") or ""),
    }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 or word != "error" else f"{n} errors"


def _tests_text(counts: dict[str, int], n_tests: int) -> str:
    """``"6: 2 passed, 1 failed, 1 error, 1 skipped, 1 xfailed"``: passed, failed and skipped always, the other
    outcomes when some test had them (pytest's words)."""
    from ..records import OUTCOMES  # records imports this package: imported when called

    always = ("passed", "failed", "skipped")
    parts = [_plural(counts.get(k, 0), k) for k in OUTCOMES if k in always or counts.get(k)]
    parts += [f"{v} {k}" for k, v in sorted(counts.items()) if k not in OUTCOMES and v]
    return f"{n_tests}: {', '.join(parts)}"


def _badges(n_failed: int, n_expected: int, counts: dict[str, int]) -> list[dict]:
    """The verdict badges: failed properties (red), expected failures (orange, a failed property of an xfailed
    test), failed tests and errors (red), or one green badge when nothing failed."""
    out = []
    if n_failed:
        out.append({"kind": "failed", "text": f"{n_failed} failed propert{'y' if n_failed == 1 else 'ies'}"})
    if n_expected:
        plural = "" if n_expected == 1 else "s"
        out.append({"kind": "xfailed", "text": f"{n_expected} expected failure{plural} (xfail)"})
    bad = [_plural(counts[k], k) for k in ("failed", "error") if counts.get(k)]
    if bad:
        out.append({"kind": "failed", "text": "tests: " + ", ".join(bad)})
    if not n_failed and not bad:
        out.insert(0, {"kind": "passed", "text": "all properties passed"})
    return out


def _maps_of(maps: list[dict], p: dict) -> tuple[list[int], int | None]:
    """The indices of the maps (summaries of one test) of the run of property record ``p`` (:data:`RUN_KEYS`) and
    the block side (input px) of that run."""
    key = _run_key(p.get("settings"))
    mine = [k for k, m in enumerate(maps) if _run_key(m.get("settings")) == key]
    block_px = next((_block_size(maps[k]) for k in mine if _block_size(maps[k])), None)
    if block_px is None:
        b = (p.get("settings") or {}).get("block_size")
        block_px = b if isinstance(b, int) and not isinstance(b, bool) and b > 0 else None
    return mine, block_px


def offending_boxes(maps: list[dict], properties: list[dict]) -> list[list[dict]]:
    """Per map summary of ``maps`` (one test's), the offending blocks of the failed ``properties`` (records) of the
    same run: ``{"box": [x, y, w, h], "title": ...}`` (input px), each box once per map. Blocks a property lists
    within its distance bound (context, :func:`_within_bound`) are left out."""
    boxes: list[list[dict]] = [[] for _ in maps]
    for p in properties:
        if not isinstance(p, dict) or p.get("passed"):
            continue
        mine, block_px = _maps_of(maps, p)
        for row in _block_rows(p, block_px):
            if row["box"] is None or not row["offending"]:
                continue
            title = f"{p.get('name')}: block ({row['box_text']}) px at {row['distance']}: {row['effect']}"
            for k in mine:
                if not any(b["box"] == row["box"] for b in boxes[k]):
                    boxes[k].append({"box": row["box"], "title": title})
    return boxes


def _test_view(t: dict, show_passing: bool) -> tuple[dict, list[dict]]:
    """The section of test record ``t`` and its rows of the property table."""
    outcome = str(t.get("outcome"))
    nodeid = str(t.get("nodeid"))
    anchor = section_anchor(nodeid)
    maps = [m for m in t.get("maps") or [] if isinstance(m, dict)]
    props = [p for p in t.get("properties") or [] if isinstance(p, dict)]
    sweeps = [w for w in t.get("sweeps") or [] if isinstance(w, dict)]
    merged = t.get("merged_sweeps_into") if isinstance(t.get("merged_sweeps_into"), list) else []
    failures, passes, rows = [], [], []
    for p in props:
        status = "passed" if p.get("passed") else "xfailed" if outcome == "xfailed" else "failed"
        view = _property_view(p, show_passing, status, _maps_of(maps, p)[1])
        (passes if status == "passed" else failures).append(view)
        rows.append({"nodeid": nodeid, "anchor": anchor, **view})
    boxes = offending_boxes(maps, props)
    message = str(t.get("message") or "")
    teardown = t.get("teardown_error")
    if teardown is not None:
        message = (message + "\n\n" if message else "") + f"error at teardown:\n{teardown}"
    view = {
        "nodeid": nodeid,
        "anchor": anchor,
        "outcome": outcome,
        "duration": _num(t.get("duration_s"), "{:.2f}", " s"),
        "message": message,
        "message_open": outcome in ("failed", "error") and not failures or teardown is not None,
        "maps": [_map_view(m, k, boxes[k]) for k, m in enumerate(maps)],
        "sweeps": [_sweep_view(w, k, anchor) for k, w in enumerate(sweeps)],
        "merged_note": (f"the sweep shards of this test are merged into the sweep of {', '.join(map(str, merged))}"
                        if merged else ""),
        "failures": failures,
        "properties": passes,
        "n_failed": sum(f["status"] == "failed" for f in failures),
        "n_expected": sum(f["status"] == "xfailed" for f in failures),
        "sort_key": (0 if any(f["status"] == "failed" for f in failures) or outcome in ("failed", "error") else
                     1 if failures else 2, nodeid),
        "section": (bool(maps or sweeps or failures or passes) or outcome in ("failed", "error")
                    or teardown is not None),
    }
    return view, rows


def report_context(document: dict, show_passing: bool = False) -> dict:
    """The view model of the report: everything the template shows, already computed and formatted."""
    from ..records import outcome_counts  # records imports this package: imported when called

    tests_in = [t for t in document.get("tests") or [] if isinstance(t, dict)]
    tests, rows = [], []
    models, devices = set(), set()
    passes, wall, duration = 0, 0.0, 0.0
    for t in tests_in:
        try:
            duration += float(t.get("duration_s") or 0.0)
        except (TypeError, ValueError):
            pass
        for m in t.get("maps") or []:
            models.add(str(m.get("model") or ""))
            devices.add(str((m.get("settings") or {}).get("device") or ""))
            passes += int(m.get("forward_passes") or 0)
            wall += float(m.get("wall_s") or 0.0)
        view, prop_rows = _test_view(t, show_passing)
        tests.append(view)
        rows += prop_rows
    tests.sort(key=lambda t: t["sort_key"])
    sweeps = [w for t in tests for w in t["sweeps"]]
    order = {"failed": 0, "xfailed": 1, "passed": 2}
    rows.sort(key=lambda r: (order[r["status"]], r["nodeid"], r["name"]))
    n_failed = sum(r["status"] == "failed" for r in rows)
    n_expected = sum(r["status"] == "xfailed" for r in rows)
    counts = outcome_counts(tests_in)
    settings = document.get("settings") or {}
    env = document.get("environment") or {}
    props = f"{len(rows)}: {len(rows) - n_failed - n_expected} passed, {n_failed} failed"
    if n_expected:
        props += f", {n_expected} expected failure{'' if n_expected == 1 else 's'} (in xfailed tests)"
    summary = [
        ("tests", _tests_text(counts, len(tests_in))),
        ("properties", props),
        ("maps", str(sum(len(t["maps"]) for t in tests))),
        *([("sweeps", f"{len(sweeps)}: {sum(len(w['rows']) for w in sweeps)} items, "
                      f"{sum(len(w['maps']) for w in sweeps)} maps of worst items")] if sweeps else []),
        ("models", ", ".join(sorted(m for m in models if m)) or "none"),
        ("devices", ", ".join(sorted(d for d in devices if d)) or "none"),
        ("forward passes", str(passes)),
        ("map time", f"{wall:.2f} s"),
        ("total test time", f"{duration:.2f} s"),
        ("session seed / mode", f"{settings.get('seed')} / {settings.get('mode')}"),
        ("versions", ", ".join(f"{k} {v}" for k, v in sorted(env.items()) if v) or "n/a"),
    ]
    others = [{"nodeid": t["nodeid"], "outcome": t["outcome"], "duration": t["duration"],
               "reason": t["message"].strip().splitlines()[-1] if t["message"].strip() else ""}
              for t in tests if not t["section"]]
    return {
        "title": "pytest-cem report",
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "badges": _badges(n_failed, n_expected, counts),
        "summary": summary,
        "rows": rows,
        "tests": [t for t in tests if t["section"]],
        "other_tests": others,
        "show_passing": bool(show_passing),
    }


def render_report(document: dict, show_passing: bool = False) -> str:
    """The HTML report of ``document`` (a results document); passing properties are collapsed unless
    ``show_passing``."""
    if not isinstance(document, dict):
        raise TypeError(f"expected a results document (dict), got {type(document).__name__}")
    return _environment().get_template(TEMPLATE).render(**report_context(document, show_passing))


def write_report(document: dict, path: str | os.PathLike, show_passing: bool = False) -> str:
    """Render ``document`` and write it to ``path`` atomically (temporary file, then rename); returns the path."""
    return str(atomic_write_text(path, render_report(document, show_passing)))
