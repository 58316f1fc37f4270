"""Shared pieces of the report's view model: number formatting, record grids, block boxes and their
outlines, the runs of maps and the section anchors.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from typing import Any

import numpy as np

from ..heatmap import float_grid


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


def _rgb(c: tuple) -> str:
    return "#%02x%02x%02x" % tuple(int(v) for v in c)
