"""PNG heatmaps of effect maps with Pillow and numpy (no matplotlib).

Display (the method's convention): effects are clipped to +-bound (the task's ``display_bound_db``: SR 2.5,
DN 1, DR 2 dB), compressed by a signed power 1/1.2 and coloured with a diverging colormap that is white at 0,
blue for negative and red for positive effects (the anchors of matplotlib's ``"seismic"``). One colour cell per
block, scaled up to whole pixels; the ROI blocks are outlined. NaN blocks are drawn grey.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

#: Exponent of the signed power applied after clipping.
POWER = 1 / 1.2
#: Anchors of matplotlib's "seismic" colormap: position in [0, 1] -> (r, g, b) in [0, 1].
_SEISMIC = np.array(
    [
        [0.00, 0.0, 0.0, 0.3],
        [0.25, 0.0, 0.0, 1.0],
        [0.50, 1.0, 1.0, 1.0],
        [0.75, 1.0, 0.0, 0.0],
        [1.00, 0.5, 0.0, 0.0],
    ]
)
NAN_RGB = (190, 190, 190)
OUTLINE_RGB = (0, 0, 0)
#: Largest side (px) of a heatmap image before the cell size stops growing.
TARGET_SIDE = 320


def display_values(effect: Any, bound: float) -> np.ndarray:
    """``effect`` (dB) mapped to [-1, 1]: clipped to +-``bound``, divided by it, signed power 1/1.2; NaN stays."""
    bound = float(bound)
    if not (math.isfinite(bound) and bound > 0):
        raise ValueError(f"bound={bound!r} must be a positive finite number of dB")
    e = np.asarray(effect, dtype=np.float64)
    x = np.clip(e / bound, -1.0, 1.0)
    return np.sign(x) * np.abs(x) ** POWER


def seismic(values: Any) -> np.ndarray:
    """RGB uint8 colours (..., 3) of ``values`` in [-1, 1] (outside: clipped): white at 0, blue < 0, red > 0;
    NaN gives :data:`NAN_RGB`."""
    v = np.asarray(values, dtype=np.float64)
    nan = np.isnan(v)
    t = (np.clip(np.where(nan, 0.0, v), -1.0, 1.0) + 1.0) / 2.0
    rgb = np.stack([np.interp(t, _SEISMIC[:, 0], _SEISMIC[:, c]) for c in (1, 2, 3)], axis=-1)
    out = np.round(rgb * 255.0).astype(np.uint8)
    out[nan] = NAN_RGB
    return out


def float_grid(values: Any) -> np.ndarray:
    """A float64 array of an array or of a record's nested lists, where JSON null (None) stands for NaN."""
    if isinstance(values, list):
        return np.array([[np.nan if v is None else v for v in row] for row in values], dtype=np.float64)
    return np.asarray(values, dtype=np.float64)


def _as_effect(effect: Any) -> np.ndarray:
    e = float_grid(effect)
    if e.ndim != 2 or e.size == 0:
        raise ValueError(f"expected a non-empty (rows, cols) effect map, got shape {e.shape}")
    return e


def cell_size(rows: int, cols: int) -> int:
    """Pixels per block side: the image's larger side near :data:`TARGET_SIDE`, 2..32 px per block."""
    return int(max(2, min(32, TARGET_SIDE // max(rows, cols, 1))))


def heatmap_image(effect: Any, bound: float, roi_mask: Any = None, cell: int | None = None) -> Image.Image:
    """The heatmap of ``effect`` ((rows, cols) dB; lists with None for NaN accepted) as an RGB image."""
    e = _as_effect(effect)
    rows, cols = e.shape
    cell = cell_size(rows, cols) if cell is None else int(cell)
    return Image.fromarray(_cells(seismic(display_values(e, bound)), cell, roi_mask, "the effect map"), mode="RGB")


def _cells(rgb: np.ndarray, cell: int, roi_mask: Any, what: str) -> np.ndarray:
    """The (rows, cols, 3) colours ``rgb`` as an image of ``cell`` x ``cell`` px per block, ROI blocks outlined."""
    big = np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)
    if roi_mask is not None:
        m = np.asarray(roi_mask, dtype=bool)
        if m.shape != rgb.shape[:2]:
            raise ValueError(f"roi_mask has shape {m.shape}; {what} has {rgb.shape[:2]}")
        _outline(big, m, cell)
    return big


def _outline(img: np.ndarray, mask: np.ndarray, cell: int) -> None:
    """Draw the boundary of the ``mask`` blocks (edges between a masked block and anything else) in place."""
    w = max(1, cell // 6)
    rows, cols = mask.shape
    padded = np.pad(mask, 1)
    for r, c in zip(*np.nonzero(mask)):
        y0, x0 = r * cell, c * cell
        if not padded[r, c + 1]:  # above
            img[y0:y0 + w, x0:x0 + cell] = OUTLINE_RGB
        if not padded[r + 2, c + 1]:  # below
            img[y0 + cell - w:y0 + cell, x0:x0 + cell] = OUTLINE_RGB
        if not padded[r + 1, c]:  # left
            img[y0:y0 + cell, x0:x0 + w] = OUTLINE_RGB
        if not padded[r + 1, c + 2]:  # right
            img[y0:y0 + cell, x0 + cell - w:x0 + cell] = OUTLINE_RGB


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def heatmap_png(effect: Any, bound: float, roi_mask: Any = None, cell: int | None = None) -> bytes:
    """PNG bytes of :func:`heatmap_image`."""
    return _png(heatmap_image(effect, bound, roi_mask, cell))


#: Colour of the largest value of :func:`sequential` (0 is white).
SEQUENTIAL_TOP_RGB = (84, 39, 143)


def sequential(values: Any, vmax: float) -> np.ndarray:
    """RGB uint8 colours (..., 3) of non-negative ``values``: white at 0 to :data:`SEQUENTIAL_TOP_RGB` at ``vmax``
    (clipped above); NaN gives :data:`NAN_RGB`."""
    v = np.asarray(values, dtype=np.float64)
    nan = np.isnan(v)
    vmax = float(vmax)
    t = np.clip(np.where(nan, 0.0, v) / vmax, 0.0, 1.0) if math.isfinite(vmax) and vmax > 0 else np.zeros(v.shape)
    top = np.asarray(SEQUENTIAL_TOP_RGB, dtype=np.float64)
    out = np.round(255.0 + t[..., None] * (top - 255.0)).astype(np.uint8)
    out[nan] = NAN_RGB
    return out


def sequential_png(values: Any, vmax: float, roi_mask: Any = None, cell: int | None = None) -> bytes:
    """PNG bytes of a (rows, cols) map of non-negative ``values`` (lists with None for NaN accepted) coloured by
    :func:`sequential`, one cell per block, ROI blocks outlined."""
    v = _as_effect(values)
    rows, cols = v.shape
    cell = max(2, cell_size(rows, cols) // 2) if cell is None else int(cell)
    return _png(Image.fromarray(_cells(sequential(v, vmax), cell, roi_mask, "the map"), mode="RGB"))


def colorbar_image(bound: float, vmin: float | None, vmax: float | None, width: int = 320, height: int = 14) -> Image.Image:
    """A horizontal colour bar from -``bound`` to +``bound`` (same display transform as the heatmap), framed, with
    ticks below it at the map's min and max effect. The labels are not drawn into the image: the report writes them
    as text under it (:func:`colorbar_ticks` says where)."""
    bound = float(bound)
    t = np.linspace(-1.0, 1.0, width)
    row = seismic(np.sign(t) * np.abs(t) ** POWER)
    bar = np.repeat(row[None, :, :], height, axis=0)
    img = Image.new("RGB", (width, height + 5), (255, 255, 255))
    img.paste(Image.fromarray(bar, mode="RGB"), (0, 0))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, width - 1, height - 1], outline=(120, 120, 120))
    for v in (vmin, vmax):
        if v is not None and math.isfinite(v):
            x = round(colorbar_position(v, bound) * (width - 1))
            draw.line([x, 0, x, height + 4], fill=(0, 0, 0), width=1)
    return img


def colorbar_position(value: float, bound: float) -> float:
    """Where ``value`` (dB) sits on a colour bar from -``bound`` to +``bound``: 0 (left end) to 1 (right end),
    clipped. The bar is linear in dB; only its colours follow the display transform."""
    return (min(max(float(value) / float(bound), -1.0), 1.0) + 1.0) / 2.0


def colorbar_png(bound: float, vmin: float | None, vmax: float | None, width: int = 320) -> bytes:
    """PNG bytes of :func:`colorbar_image`."""
    return _png(colorbar_image(bound, vmin, vmax, width))


#: Colours of the support panel: a block in the support (changes the ROI output), a block decided to have no
#: effect, and a block not decided (a group that changed, never tested alone).
SUPPORT_RGB = {"support": (84, 39, 143), "none": (255, 255, 255), "unresolved": (200, 200, 200)}


def support_image(support: Any, resolved: Any = None, roi_mask: Any = None, cell: int | None = None) -> Image.Image:
    """A (rows, cols) support map as an RGB image: :data:`SUPPORT_RGB` colours per block (``resolved`` None: every
    block decided), ROI blocks outlined."""
    sup = np.asarray(support, dtype=bool)
    if sup.ndim != 2 or sup.size == 0:
        raise ValueError(f"expected a non-empty (rows, cols) support map, got shape {sup.shape}")
    res = np.ones_like(sup) if resolved is None else np.asarray(resolved, dtype=bool)
    if res.shape != sup.shape:
        raise ValueError(f"resolved has shape {res.shape}; the support map has {sup.shape}")
    rows, cols = sup.shape
    cell = cell_size(rows, cols) if cell is None else int(cell)
    rgb = np.empty(sup.shape + (3,), dtype=np.uint8)
    rgb[...] = SUPPORT_RGB["unresolved"]
    rgb[res & ~sup] = SUPPORT_RGB["none"]
    rgb[sup] = SUPPORT_RGB["support"]
    return Image.fromarray(_cells(rgb, cell, roi_mask, "the support map"), mode="RGB")


def support_png(support: Any, resolved: Any = None, roi_mask: Any = None, cell: int | None = None) -> bytes:
    """PNG bytes of :func:`support_image`."""
    return _png(support_image(support, resolved, roi_mask, cell))


def sequential_bar_png(width: int = 160, height: int = 12) -> bytes:
    """PNG bytes of the colour bar of :func:`sequential`: white (0, left) to :data:`SEQUENTIAL_TOP_RGB` (the top
    value, right), framed."""
    row = sequential(np.linspace(0.0, 1.0, width), 1.0)
    img = Image.fromarray(np.repeat(row[None, :, :], height, axis=0), mode="RGB")
    ImageDraw.Draw(img).rectangle([0, 0, width - 1, height - 1], outline=(120, 120, 120))
    return _png(img)
