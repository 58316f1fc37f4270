"""The views of property records: status, measured value and bound, the hint, the offending blocks, and
their boxes on the maps of the same run.
"""

from __future__ import annotations

from typing import Any

from ..hints import property_hint
from .base import _block_box, _block_size, _num, _run_key


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
