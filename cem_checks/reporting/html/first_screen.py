"""The first screen of the report: what failed, where and why, before any table. Per failed property (failures
first, then expected failures) a card: its status, test and model, the measured value against the bound, its note,
the hint, and a thumbnail of the map of its run (the support panel for a support property or a support-stage map,
else the effect per block) with the property's offending blocks outlined, linking to the failure in its test's
section. Then the properties that passed with a note (e.g. a vacuous pass: nothing was measured).
"""

from __future__ import annotations

from typing import Any

from .base import _block_size, _outlines, _shape
from .properties import offending_boxes

#: Most failed properties the first screen shows as cards; the others are counted there (the properties table
#: lists them all).
FIRST_SCREEN_CARDS = 8
#: The thumbnails' largest side (CSS px): the panel is scaled to fit, its aspect ratio kept.
THUMBNAIL_PX = 160


def _thumbnail(p: dict, m: dict, view: dict) -> dict | None:
    """The thumbnail of property record ``p`` on map summary ``m`` (its view ``view``): the support panel for a
    property of the support (or a map of the support stage alone), else the effect per block; ``None`` when the map
    has neither panel or no block grid."""
    shape, b = _shape(m), _block_size(m)
    support = p.get("metric") == "support_radius" or not view.get("heatmap")
    if support and view.get("support"):
        kind, image, what = "support", view["support"]["image"], "support (the blocks that change the ROI output)"
    elif view.get("heatmap"):
        kind, image, what = "effect", view["heatmap"], "causal effect per block"
    else:
        return None
    if not shape or not b:
        return None
    (boxes,) = offending_boxes([m], [p])
    return {"kind": kind, "image": image, "alt": f"{what} of {view['model'] or 'the model'}, offending blocks outlined",
            "outlines": _outlines(boxes, shape[1] * b, shape[0] * b), "size": THUMBNAIL_PX}


def failure_card(p: dict, view: dict, test: dict[str, Any], maps: list[dict], map_views: list[dict],
                 run: dict) -> dict:
    """The first-screen card of failed property record ``p`` (its view ``view``, its run ``run``) of the test whose
    section is ``test`` (``nodeid``, ``anchor``), with the map summaries ``maps`` of that test and their views."""
    thumb = next((t for k in run["maps"] if (t := _thumbnail(p, maps[k], map_views[k])) is not None), None)
    return {
        "link": view["anchor"],
        "nodeid": test["nodeid"],
        "status": view["status"],
        "status_label": view["status_label"],
        "name": view["name"],
        "model": view["model"],
        "measured_expression": view["measured_expression"],
        "measured_value": view["measured_value"],
        "bound": view["bound"],
        "note": view["note"],
        "hint": view["hint"],
        "thumb": thumb,
    }


def first_screen(tests: list[dict]) -> dict:
    """The first screen of the report from the test sections ``tests`` (in the report's order): the cards of the
    failed properties (failures, then expected failures; at most :data:`FIRST_SCREEN_CARDS`), how many more
    there are, and the properties that passed with a note."""
    cards = sorted((c for t in tests for c in t["cards"]), key=lambda c: c["status"] != "failed")
    noted = [{"link": p["anchor"], "nodeid": t["nodeid"], "name": p["name"], "note": p["note"]}
             for t in tests for p in t["properties"] if p["note"]]
    n_more = max(0, len(cards) - FIRST_SCREEN_CARDS)
    return {
        "cards": cards[:FIRST_SCREEN_CARDS],
        "more": (f"and {n_more} more failed propert{'y' if n_more == 1 else 'ies'}: the properties table below "
                 "lists them all") if n_more else "",
        "noted": noted,
    }
