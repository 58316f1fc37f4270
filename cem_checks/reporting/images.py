"""The model input and output images of a map: embedded in the records, drawn in the report (Pillow and numpy).

In the records (:func:`cem_checks.records.map_summary`) an image is a dict made by :func:`embed_image`::

    {"png": <base64 PNG, RGB>, "width": w, "height": h,           # the embedded image, longest side <= the cap
     "source_width": W, "source_height": H,                       # the image it was made from
     "roi_box": [x0, y0, x1, y1]}                                  # the ROI in embedded px, half-open

Images larger than the cap are downscaled with an antialiasing filter (Lanczos), keeping the aspect ratio;
smaller ones are kept as they are. The ROI box is scaled with the image and rounded outwards, so it always
encloses the ROI. The report (:func:`boxed_image`, :func:`overlay_image`) enlarges small images by a whole
factor (nearest neighbour) to about :data:`DISPLAY_SIDE` px and draws the ROI box in :data:`ROI_BOX_RGB` between
two dark lines (:data:`BOX_EDGE_RGB`), so that it stays visible on noisy and on bright inputs.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..errors import CEMInputError
from .heatmap import display_values, float_grid, seismic

#: Default longest side (px) of an image embedded in the records.
DEFAULT_MAX_IMAGE_PX = 384
#: Colour of the ROI box drawn on the images of the report.
ROI_BOX_RGB = (0, 255, 0)
#: Colour of the dark lines on both sides of a box's bright band.
BOX_EDGE_RGB = (0, 0, 0)
#: Colour of the boxes of offending blocks drawn into images (pytest-html extras).
OFFENDING_RGB = (255, 212, 0)
#: Side (px) the report enlarges small images towards (by a whole factor, nearest neighbour).
DISPLAY_SIDE = 256
#: Largest enlargement factor of the report.
MAX_ZOOM = 16
#: Opacity of the effect colours over the (grey) input in the overlay.
OVERLAY_ALPHA = 0.65

__all__ = [
    "DEFAULT_MAX_IMAGE_PX",
    "ROI_BOX_RGB",
    "boxed_image",
    "draw_box",
    "check_max_image_px",
    "decode_image",
    "embed_image",
    "fit_size",
    "overlay_image",
    "pad_to_aspect",
    "scale_box",
    "zoom_factor",
]


def check_max_image_px(value: Any, where: str = "max_image_px") -> int:
    """``value`` as an int >= 0 (the longest side of an embedded image; 0: embed none); else
    :class:`~cem_checks.errors.CEMInputError` naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise CEMInputError(
            f"{where}={value!r} is not a size in pixels; expected an integer >= 0 (the longest side of the "
            f"images embedded per map; 0 embeds none), e.g. {where}={DEFAULT_MAX_IMAGE_PX}."
        )
    return int(value)


def fit_size(width: int, height: int, max_px: int) -> tuple[int, int]:
    """(width, height) scaled so that the longest side is at most ``max_px`` (aspect kept, each side >= 1);
    unchanged when it already fits."""
    longest = max(width, height)
    if longest <= max_px:
        return int(width), int(height)
    f = max_px / longest
    return max(1, min(max_px, round(width * f))), max(1, min(max_px, round(height * f)))


def scale_box(box: Sequence[int], source: tuple[int, int], target: tuple[int, int]) -> list[int]:
    """The half-open box ``(x0, y0, x1, y1)`` of a ``source`` (width, height) image in a ``target`` (width, height)
    image: scaled per axis, rounded outwards (it encloses the original), at least one pixel, inside the image."""
    (sw, sh), (tw, th) = source, target
    fx, fy = tw / sw, th / sh
    x0, y0, x1, y1 = box
    nx0 = min(tw - 1, max(0, math.floor(x0 * fx + 1e-9)))
    ny0 = min(th - 1, max(0, math.floor(y0 * fy + 1e-9)))
    nx1 = max(nx0 + 1, min(tw, math.ceil(x1 * fx - 1e-9)))
    ny1 = max(ny0 + 1, min(th, math.ceil(y1 * fy - 1e-9)))
    return [int(nx0), int(ny0), int(nx1), int(ny1)]


def _png_b64(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB").save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def embed_image(image: Any, roi_box: Sequence[int], max_px: int) -> dict[str, Any] | None:
    """The record of ``image`` (uint8 (h, w, 3)) with its ROI box ``(x0, y0, x1, y1)`` (image px, half-open),
    downscaled to a longest side of at most ``max_px``; None when ``image`` is None or ``max_px`` is 0."""
    max_px = check_max_image_px(max_px)
    if image is None or max_px == 0:
        return None
    arr = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    h, w = arr.shape[:2]
    tw, th = fit_size(w, h, max_px)
    if (tw, th) != (w, h):
        arr = np.asarray(Image.fromarray(arr, mode="RGB").resize((tw, th), Image.Resampling.LANCZOS))
    return {
        "png": _png_b64(arr),
        "width": int(tw),
        "height": int(th),
        "source_width": int(w),
        "source_height": int(h),
        "roi_box": scale_box(roi_box, (w, h), (tw, th)),
    }


def decode_image(record: dict) -> np.ndarray:
    """The RGB uint8 (h, w, 3) array of an image record (:func:`embed_image`); ``ValueError`` when the record
    holds no readable PNG."""
    try:
        data = base64.b64decode(str(record["png"]), validate=True)
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as exc:  # binascii.Error, PIL.UnidentifiedImageError, KeyError, ...
        raise ValueError(f"the image record holds no readable base64 PNG ({type(exc).__name__}: {exc})") from None


def zoom_factor(width: int, height: int) -> int:
    """The whole factor the report enlarges a ``width`` x ``height`` image by: towards :data:`DISPLAY_SIDE` px,
    1 for images at least that large, at most :data:`MAX_ZOOM`."""
    return int(max(1, min(MAX_ZOOM, DISPLAY_SIDE // max(width, height, 1))))


def _zoom(arr: np.ndarray, k: int) -> np.ndarray:
    return arr if k == 1 else np.repeat(np.repeat(arr, k, axis=0), k, axis=1)


def draw_box(arr: np.ndarray, box: Sequence[int], colour=ROI_BOX_RGB, thickness: int | None = None) -> None:
    """Draw the outline of the half-open box ``(x0, y0, x1, y1)`` in place: a band of ``colour`` inside its edges
    (``thickness`` px; default 1 to 3 with the image's size), with a dark line (:data:`BOX_EDGE_RGB`) just outside
    the box and one just inside the band, where they fit. The bright band shows on dark images, the dark lines on
    bright and on noisy ones."""
    x0, y0, x1, y1 = (int(v) for v in box)
    h, w = arr.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        return

    def band(a0: int, b0: int, a1: int, b1: int, t: int, c) -> None:
        """The ring of width ``t`` just inside the box (a0, b0, a1, b1); parts outside the image are left out."""
        if a1 - a0 <= 0 or b1 - b0 <= 0 or t <= 0:
            return
        for ya, yb, xa, xb in ((b0, b0 + t, a0, a1), (b1 - t, b1, a0, a1), (b0, b1, a0, a0 + t), (b0, b1, a1 - t, a1)):
            ya, yb, xa, xb = max(0, ya), min(h, yb), max(0, xa), min(w, xb)
            if ya < yb and xa < xb:
                arr[ya:yb, xa:xb] = c

    t = thickness or max(1, min(3, max(h, w) // 128))
    t = max(1, min(t, (x1 - x0) // 3, (y1 - y0) // 3))
    band(x0 - 1, y0 - 1, x1 + 1, y1 + 1, 1, BOX_EDGE_RGB)  # outside the box (where the image has room)
    band(x0, y0, x1, y1, t, colour)
    if x1 - x0 > 2 * t + 2 and y1 - y0 > 2 * t + 2:
        band(x0 + t, y0 + t, x1 - t, y1 - t, 1, BOX_EDGE_RGB)


def pad_to_aspect(arr: np.ndarray, min_aspect: float, fill=(255, 255, 255)) -> np.ndarray:
    """The (H, W, 3) image ``arr`` at least ``min_aspect`` times as wide as tall: narrower images get columns of
    ``fill`` on both sides (centred), wider ones are returned as they are. For viewers that fill a wide frame and
    crop what does not fit (CSS ``object-fit: cover``): an image of the frame's aspect ratio or wider is shown
    whole."""
    h, w = arr.shape[:2]
    width = math.ceil(h * float(min_aspect))
    if width <= w:
        return arr
    out = np.empty((h, width) + arr.shape[2:], dtype=arr.dtype)
    out[...] = fill
    left = (width - w) // 2
    out[:, left:left + w] = arr
    return out


def boxed_image(record: dict) -> tuple[np.ndarray, list[int]]:
    """The image of ``record`` enlarged by :func:`zoom_factor` with its ROI box drawn; returns the RGB array and
    the box in its pixels."""
    arr = decode_image(record)
    k = zoom_factor(arr.shape[1], arr.shape[0])
    out = np.array(_zoom(arr, k), copy=True)
    box = [int(v) * k for v in record.get("roi_box") or (0, 0, 0, 0)]
    draw_box(out, box)
    return out, box


def overlay_image(record: dict, effect: Any, bound: float, block_px: int | None = None) -> tuple[np.ndarray, list[int]]:
    """The effect map over the input image of ``record``: each block's colour (the heatmap's display: clipped at
    ``bound``, signed power 1/1.2, white at 0) blended over the grey input, enlarged as :func:`boxed_image`, ROI
    box drawn. ``effect`` is the (rows, cols) map in dB (lists with None for NaN accepted). With ``block_px`` (the
    block side in input px) each block covers its own pixels of the input (``source_width`` x ``source_height``)
    and a margin the grid does not cover stays grey; without, the blocks tile the whole image."""
    e = float_grid(effect)
    arr = decode_image(record)
    k = zoom_factor(arr.shape[1], arr.shape[0])
    img = _zoom(arr, k).astype(np.float64)
    h, w = img.shape[:2]
    rows, cols = e.shape
    colours = seismic(display_values(e, bound)).astype(np.float64)
    grey = img @ np.array([0.299, 0.587, 0.114])
    if block_px:
        src_w, src_h = int(record.get("source_width") or w), int(record.get("source_height") or h)
        r_idx = ((np.arange(h) + 0.5) * src_h / h // block_px).astype(np.int64)
        c_idx = ((np.arange(w) + 0.5) * src_w / w // block_px).astype(np.int64)
    else:
        r_idx = np.minimum(rows - 1, (np.arange(h) * rows) // h)
        c_idx = np.minimum(cols - 1, (np.arange(w) * cols) // w)
    inside = (r_idx[:, None] < rows) & (c_idx[None, :] < cols)
    cell = colours[np.minimum(r_idx, rows - 1)[:, None], np.minimum(c_idx, cols - 1)[None, :]]
    cell = np.where(inside[..., None], cell, grey[..., None])
    out = np.round(OVERLAY_ALPHA * cell + (1.0 - OVERLAY_ALPHA) * grey[..., None]).clip(0, 255).astype(np.uint8)
    box = [int(v) * k for v in record.get("roi_box") or (0, 0, 0, 0)]
    draw_box(out, box)
    return out, box
