"""The views of a map summary: its panels (input, output, effect over the input, effect per block, support,
stderr), colour bars, numbers and settings, with the offending blocks outlined; :func:`panel_pngs` for tools that
show images.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

from ..heatmap import (SUPPORT_RGB, _png, cell_size, colorbar_png, colorbar_position, heatmap_image, heatmap_png,
                       sequential_bar_png, sequential_png, support_image, support_png)
from ..images import OFFENDING_RGB, boxed_image, draw_box, overlay_image, pad_to_aspect
from .base import _block_size, _data_uri, _finite, _grid, _num, _outlines, _rgb, _shape
from .charts import profile_chart


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


def _settings(m: dict, stage: list[tuple[str, Any]], after_roi: tuple | list = ()) -> list[tuple[str, str]]:
    """The settings table of map summary ``m``: task and seed, the rows of its ``stage``, device, block size, ROI,
    ``after_roi``, and its cost and patch bank (``"n/a"`` for what is not recorded)."""
    s = m.get("settings") or {}
    rows = [
        ("task", s.get("task")),
        ("seed", s.get("seed")),
        *stage,
        ("device", s.get("device")),
        ("block size", _num(s.get("block_size"), unit=" px")),
        ("ROI (x, y, size)", ", ".join(str(v) for v in s.get("roi") or []) or "n/a"),
        *after_roi,
        ("forward passes", _num(m.get("forward_passes"))),
        ("time", _num(m.get("wall_s"), "{:.2f}", " s")),
        ("patch bank", ", ".join(f"{k} {v}" for k, v in sorted((m.get("patch_bank") or {}).items())) or "n/a"),
    ]
    return [(k, "n/a" if v is None else str(v)) for k, v in rows]


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
        "settings": _settings(m, [("draws per group test", s.get("draws"))]),
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
        "settings": _settings(m, [("mode", s.get("mode")),
                                  ("samples", f"coarse {s.get('coarse')}, fine {s.get('fine')}")],
                              [("zero threshold", _num(s.get("tol_db"), unit=" dB"))]),
    }


def panel_pngs(m: dict, boxes: list[dict], min_aspect: float | None = None) -> list[tuple[str, bytes]]:
    """The map panels of map summary ``m`` as PNG images with the offending ``boxes`` (:func:`offending_boxes`)
    drawn in (:data:`~cem_checks.reporting.images.OFFENDING_RGB` between dark lines): ``(name, png)`` for the
    effect over the input (when the summary has images), the effect per block and the support, as far as the
    summary records them. For tools that show images, not HTML (the pytest-html extras). ``min_aspect``: panels
    narrower than that (width / height) are padded with white on both sides
    (:func:`~cem_checks.reporting.images.pad_to_aspect`), for viewers that crop images to a wide frame."""
    out: list[tuple[str, bytes]] = []
    shape, b = _shape(m), _block_size(m)
    effect, bound = m.get("effect_db"), m.get("display_bound_db")

    def outlined(arr: np.ndarray, scale_x: float, scale_y: float, thickness: int) -> bytes:
        arr = np.array(arr, copy=True)
        for box in boxes:
            x, y, w, h = box["box"]
            draw_box(arr, (math.floor(x * scale_x), math.floor(y * scale_y), math.ceil((x + w) * scale_x),
                           math.ceil((y + h) * scale_y)), OFFENDING_RGB, thickness)
        if min_aspect is not None:
            arr = pad_to_aspect(arr, min_aspect)
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
