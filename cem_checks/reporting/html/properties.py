"""The views of property records: status, measured value and bound, the note, the hint, the offending blocks (a
table of the columns the result has), and their boxes on the maps of the same run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..counts import PROPERTY_STATUS
from ..hints import blocks_suggestion, property_hint
from .base import _block_box, _block_size, _finite, _grid, _num, _run_key, _shape

#: The columns of a table of listed blocks, ``(key, header, numeric)``; numeric cells never wrap. A column in
#: which no listed block has a value (the effect and CI of a support-stage result, which estimates no effect) is
#: left out, and a detail every block shares is said once, above the table.
BLOCK_COLUMNS = (
    ("box_text", "offending block (x, y, w, h) input px", True),
    ("grid", "grid", True),
    ("distance", "distance to the ROI", True),
    ("effect", "effect", True),
    ("ci", "95% CI", True),
    ("detail", "detail", False),
)


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


def _run_of(maps: list[dict], p: dict) -> dict:
    """What the maps (summaries of one test) of the run of property record ``p`` (:data:`RUN_KEYS`) tell about it:
    ``maps`` (their indices), ``block_px`` (the block side, input px), ``edge_px`` (the distance of the farthest
    blocks from the ROI, input px) and ``tol_db`` (the zero threshold), each None when unknown."""
    key = _run_key(p.get("settings"))
    mine = [k for k, m in enumerate(maps) if _run_key(m.get("settings")) == key]
    settings = p.get("settings") if isinstance(p.get("settings"), dict) else {}
    block_px = next((_block_size(maps[k]) for k in mine if _block_size(maps[k])), None)
    if block_px is None:
        b = settings.get("block_size")
        block_px = b if isinstance(b, int) and not isinstance(b, bool) and b > 0 else None
    edge = None
    for k in mine:
        d = _grid(maps[k].get("distance_px"), _shape(maps[k]), np.int64)
        if d is not None:
            edge = int(d.max())
            break
    tols = [settings.get("tol_db")] + [(maps[k].get("settings") or {}).get("tol_db") for k in mine]
    tol = next((float(t) for t in tols if _finite(t) and t > 0), None)
    return {"maps": mine, "block_px": block_px, "edge_px": edge, "tol_db": tol}


def _block_rows(p: dict, run: dict) -> list[dict]:
    """The blocks listed by property record ``p`` (of the run ``run``, :func:`_run_of`) as table rows: box (input
    px), grid place, distance, effect and CI (None when not estimated), detail, and whether the block is an offender
    (outlined) or lies within the bound (:func:`_within_bound`). A block whose effect is below the zero threshold
    ``tol_db`` says so: a support property lists it because it changes the ROI output, however little."""
    rows = []
    tol = run["tol_db"]
    for b in p.get("worst_blocks") or []:
        if not isinstance(b, dict):
            continue
        box = _block_box(b, run["block_px"])
        effect, lo, hi = b.get("effect_db"), b.get("ci_low_db"), b.get("ci_high_db")
        within = _within_bound(p, b.get("distance_px"))
        below = ""
        if _finite(effect) and tol is not None and abs(effect) < tol:
            below = (f"changes the ROI output (below tol_db {tol:g} dB)" if p.get("metric") == "support_radius"
                     else f"below tol_db {tol:g} dB: counted as zero")
        rows.append({
            "offending": not within,
            "row_class": "context-block" if within else "offending-block",
            "box": box,
            "box_text": ", ".join(map(str, box)) if box else f"row {b.get('row')}, col {b.get('col')}",
            "grid": f"row {b.get('row')}, col {b.get('col')}",
            "distance": _num(b.get("distance_px"), unit=" px"),
            "effect": f"{effect:+.3f} dB" if _finite(effect) else None,
            "ci": f"[{lo:+.3f}, {hi:+.3f}] dB" if _finite(lo) and _finite(hi) else None,
            "detail": "; ".join(x for x in (str(b.get("detail") or ""), below,
                                             "within the bound: listed for context, not outlined" if within else "")
                                if x),
        })
    return rows


def _block_table(rows: list[dict]) -> dict:
    """The table of block ``rows`` (:func:`_block_rows`): the :data:`BLOCK_COLUMNS` some row has a value in, the
    cells, and the ``caption`` (the detail of every block, when they share one)."""
    details = {r["detail"] for r in rows}
    caption = details.pop() if len(details) == 1 else ""
    columns = [(key, header, numeric) for key, header, numeric in BLOCK_COLUMNS
               if any(r[key] for r in rows) and not (key == "detail" and caption)]
    return {
        "header": [header for _, header, _ in columns],
        "caption": f"every listed block: {caption}" if caption else "",
        "rows": [{"row_class": r["row_class"], "box": r["box_text"] if r["box"] else "",
                  "cells": [{"text": r[key] if r[key] is not None else "n/a", "numeric": numeric}
                            for key, _, numeric in columns]} for r in rows],
    }


def property_note(p: dict) -> str:
    """The note of property record ``p`` (e.g. why a result is vacuous: nothing was measured); ``""`` when the record
    has none (older files), null or an empty one."""
    note = p.get("note")
    return note.strip() if isinstance(note, str) else ""


def _property_view(p: dict, show_passing: bool, status: str, run: dict) -> dict:
    """The view of property record ``p`` (of the run ``run``, :func:`_run_of`) whose report status
    (:data:`PROPERTY_STATUS`) is ``status``: failures carry the hint, the offending blocks and how to list every
    block of the result."""
    failed = status != "passed"
    blocks = _block_table(_block_rows(p, run)) if failed else {"rows": []}
    expression, _, value = str(p.get("measured_text")).rpartition(" = ")
    return {
        "name": str(p.get("name")),
        "status": status,
        "status_label": PROPERTY_STATUS[status],
        "open": failed or show_passing,
        "measured": str(p.get("measured_text")),
        "measured_expression": expression,
        "measured_value": value,
        "bound": str(p.get("bound_text")),
        "description": str(p.get("description") or ""),
        "note": property_note(p),
        "hint": property_hint(p, run["edge_px"]) if failed else "",
        "suggestion": blocks_suggestion(p) if failed else "",
        "blocks": blocks,
        "blocks_note": ("" if blocks["rows"] or not failed else "no offending block recorded for this property"),
        "message": str(p.get("message") or ""),
        "model": str((p.get("settings") or {}).get("model") or ""),
    }


def failure_hint(maps: list[dict], record: dict) -> str:
    """:func:`~cem_checks.reporting.hints.property_hint` of property ``record`` of a test whose map summaries are
    ``maps``: a reach to the farthest blocks of the map of its run is named the image edge."""
    return property_hint(record, _run_of(maps, record)["edge_px"])


def offending_boxes(maps: list[dict], properties: list[dict]) -> list[list[dict]]:
    """Per map summary of ``maps`` (one test's), the offending blocks of the failed ``properties`` (records) of the
    same run: ``{"box": [x, y, w, h], "title": ...}`` (input px), each box once per map. Blocks a property lists
    within its distance bound (context, :func:`_within_bound`) are left out."""
    boxes: list[list[dict]] = [[] for _ in maps]
    for p in properties:
        if not isinstance(p, dict) or p.get("passed"):
            continue
        run = _run_of(maps, p)
        for row in _block_rows(p, run):
            if row["box"] is None or not row["offending"]:
                continue
            title = "".join((f"{p.get('name')}: block ({row['box_text']}) px at {row['distance']}",
                             f": {row['effect']}" if row["effect"] else "",
                             f"; {row['detail']}" if row["detail"] else ""))
            for k in run["maps"]:
                if not any(b["box"] == row["box"] for b in boxes[k]):
                    boxes[k].append({"box": row["box"], "title": title})
    return boxes
