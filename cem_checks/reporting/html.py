"""The self-contained HTML report of a results document (:mod:`cem_checks.records`, as ``--cem-json`` writes it).

:func:`render_report` turns the document into one HTML page: summary, a sortable and filterable table of the
properties (failures first), and per test its maps and properties (measured vs bound). Per map: the degraded model
input and the model output with the ROI box, the effect map over the input and per block with a colour bar (base64
PNG data URIs), the effect-vs-distance chart (inline SVG; per distance min/mean/max when a map has more than
:data:`MAX_CHART_POINTS` blocks outside the ROI, so the page grows with the distances, not the blocks), the
uncertainty summary with a stderr map, block counts
and settings. No external resources and no script library: the page opens offline. Maps recorded by older
versions, without images, distances or stderr, render with a note in place of what they lack.

The Jinja2 templates live in the top-level ``templates/`` folder of the source tree, installed inside the wheel as
``cem_checks/templates/`` (see :func:`template_dir`). Autoescape is on and undefined names raise; all the logic is
here, the template only lays out the view model.
"""

from __future__ import annotations

import base64
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .._io import atomic_write_text
from .heatmap import _png, cell_size, colorbar_png, float_grid, heatmap_png, sequential_png, support_png
from .images import boxed_image, overlay_image

TEMPLATE = "report.html.j2"

__all__ = ["MAX_CHART_POINTS", "TEMPLATE", "render_report", "report_context", "template_dir", "write_report"]


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


def _num(v: Any, fmt: str = "{:.3g}", unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        return fmt.format(v) + unit
    return f"{v}{unit}"


def _anchor(index: int, nodeid: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", nodeid).strip("-")[:80]
    return f"t{index}-{slug}" if slug else f"t{index}"


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


def _image_views(m: dict, effect: Any, bound: Any) -> tuple[dict, str | None]:
    """The data URIs of the input, output and overlay images of a map summary (None where there is none), the
    overlay's width (px, 0 without one) and a note saying why images are missing (None when all are drawn)."""
    views: dict[str, Any] = {"input": None, "output": None, "overlay": None, "overlay_width": 0}
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
                over, _ = overlay_image(rec, effect, bound)
                views["overlay"] = _data_uri(_png(Image.fromarray(over, mode="RGB")))
                views["overlay_width"] = int(over.shape[1])
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
    grid = m.get("grid") or []
    shape = (int(grid[0]), int(grid[1])) if len(grid) == 2 and all(isinstance(v, int) for v in grid) else (0, 0)
    se = _grid(m.get("stderr_db"), shape)
    n = _grid(m.get("n_samples"), shape, np.int64)
    vmax = u.get("stderr_max_db")
    if se is not None and n is not None:
        shown = np.where(n > 0, se, np.nan)
        top = float(vmax) if isinstance(vmax, (int, float)) and vmax > 0 else 0.0
        stderr_map = _data_uri(sequential_png(shown, top, _grid(m.get("roi_mask"), shape, bool)))
    return {"rows": rows, "stderr_map": stderr_map, "stderr_max": _num(vmax, "{:.3g}", " dB")}


def _support_view(m: dict) -> dict | None:
    """The support panel of a map summary (None when it records no support grid)."""
    grid = m.get("grid") or []
    shape = (int(grid[0]), int(grid[1])) if len(grid) == 2 and all(isinstance(v, int) for v in grid) else None
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
    return {"image": _data_uri(support_png(sup, resolved, roi)), "caption": caption + "; ROI outlined"}


def _support_stage_view(m: dict, index: int) -> dict:
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
        ("ROI (top, left, size)", ", ".join(str(v) for v in s.get("roi") or []) or "n/a"),
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
        "images": images,
        "image_note": image_note,
        "support": _support_view(m),
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


def _map_view(m: dict, index: int) -> dict:
    if m.get("stage") == "support":
        return _support_stage_view(m, index)
    s = m.get("settings") or {}
    effect = m.get("effect_db")
    bound = m.get("display_bound_db")
    heatmap = colorbar = None
    images, image_note = _image_views(m, effect, bound)
    if effect and bound:
        heatmap = _data_uri(heatmap_png(effect, bound, m.get("roi_mask")))
        width = max(200, images["overlay_width"] or cell_size(len(effect), len(effect[0])) * len(effect[0]))
        colorbar = _data_uri(colorbar_png(bound, m.get("effect_min_db"), m.get("effect_max_db"), width))
    chart = profile_chart(effect, m.get("roi_mask"), m.get("distance_px")) if effect else None
    grid = m.get("grid") or ["?", "?"]
    settings = [
        ("task", s.get("task")),
        ("seed", s.get("seed")),
        ("mode", s.get("mode")),
        ("samples", f"coarse {s.get('coarse')}, fine {s.get('fine')}"),
        ("device", s.get("device")),
        ("block size", _num(s.get("block_size"), unit=" px")),
        ("ROI (top, left, size)", ", ".join(str(v) for v in s.get("roi") or []) or "n/a"),
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
        "heatmap": heatmap,
        "colorbar": colorbar,
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


def _property_view(p: dict, show_passing: bool) -> dict:
    passed = bool(p.get("passed"))
    return {
        "name": str(p.get("name")),
        "status": "passed" if passed else "failed",
        "open": (not passed) or show_passing,
        "measured": str(p.get("measured_text")),
        "bound": str(p.get("bound_text")),
        "description": str(p.get("description") or ""),
        "message": str(p.get("message") or ""),
        "model": str((p.get("settings") or {}).get("model") or ""),
    }


def report_context(document: dict, show_passing: bool = False) -> dict:
    """The view model of the report: everything the template shows, already computed and formatted."""
    tests_in = list(document.get("tests") or [])
    tests, rows = [], []
    models, devices = set(), set()
    passes, wall, duration = 0, 0.0, 0.0
    outcomes: dict[str, int] = {}
    for i, t in enumerate(tests_in):
        outcome = str(t.get("outcome"))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        try:
            duration += float(t.get("duration_s") or 0.0)
        except (TypeError, ValueError):
            pass
        nodeid = str(t.get("nodeid"))
        anchor = _anchor(i, nodeid)
        maps = list(t.get("maps") or [])
        for m in maps:
            models.add(str(m.get("model") or ""))
            devices.add(str((m.get("settings") or {}).get("device") or ""))
            passes += int(m.get("forward_passes") or 0)
            wall += float(m.get("wall_s") or 0.0)
        props = [_property_view(p, show_passing) for p in t.get("properties") or []]
        for p in props:
            rows.append({"nodeid": nodeid, "anchor": anchor, **p})
        n_failed = sum(p["status"] == "failed" for p in props)
        tests.append({
            "nodeid": nodeid,
            "anchor": anchor,
            "outcome": str(t.get("outcome")),
            "duration": _num(t.get("duration_s"), "{:.2f}", " s"),
            "message": str(t.get("message") or ""),
            "maps": [_map_view(m, k) for k, m in enumerate(maps)],
            "properties": [p for p in props if p["status"] == "failed"] + [p for p in props if p["status"] == "passed"],
            "n_failed": n_failed,
            "sort_key": (0 if n_failed or t.get("outcome") == "failed" else 1, nodeid),
        })
    tests.sort(key=lambda t: t["sort_key"])
    rows.sort(key=lambda r: (r["status"] != "failed", r["nodeid"], r["name"]))
    n_failed = sum(r["status"] == "failed" for r in rows)
    settings = document.get("settings") or {}
    env = document.get("environment") or {}
    known = ("passed", "failed", "skipped", "xfailed", "xpassed")
    breakdown = [f"{outcomes.get(k, 0)} {k}" for k in known[:3]] + [f"{outcomes[k]} {k}" for k in known[3:] if k in outcomes] + [f"{v} {k}" for k, v in sorted(outcomes.items())
                                                                if k not in known]
    summary = [
        ("tests", f"{len(tests)}: {', '.join(breakdown)}"),
        ("properties", f"{len(rows)}: {len(rows) - n_failed} passed, {n_failed} failed"),
        ("maps", str(sum(len(t["maps"]) for t in tests))),
        ("models", ", ".join(sorted(m for m in models if m)) or "none"),
        ("devices", ", ".join(sorted(d for d in devices if d)) or "none"),
        ("forward passes", str(passes)),
        ("map time", f"{wall:.2f} s"),
        ("total test time", f"{duration:.2f} s"),
        ("session seed / mode", f"{settings.get('seed')} / {settings.get('mode')}"),
        ("versions", ", ".join(f"{k} {v}" for k, v in sorted(env.items()) if v) or "n/a"),
    ]
    return {
        "title": "pytest-cem report",
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "verdict": "failed" if n_failed else "passed",
        "verdict_text": f"{n_failed} failed propert{'y' if n_failed == 1 else 'ies'}" if n_failed else "all properties passed",
        "summary": summary,
        "rows": rows,
        "tests": tests,
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
