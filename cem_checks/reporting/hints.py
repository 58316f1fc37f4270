"""One-line hints on how to act on a failed causal property, per kind of property, from its record.

:func:`property_hint` reads a property record (:func:`cem_checks.records.property_record`: ``name``, ``metric``,
``params``, ``measured``, ``op``, ``bound``, ``unit``) and says what the measurement means for the model and what
to do: change the bound when the behaviour is intended, or look at the offending blocks the report outlines.
Records of properties it does not know get a generic hint naming the measurement and the bound. A reach that
gets to the image edge (the farthest blocks from the ROI, ``edge_px``) is named so, not as a number of px: every
block up to the edge may matter, the reach of the model may be global.

:func:`blocks_suggestion` says how to list every block of the result a property was checked on, in terms of what
that result holds: a support-stage result (:class:`~cem_checks.result.SupportResult`) has no effects.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["blocks_suggestion", "property_hint"]


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _px(v: float) -> str:
    return f"{v:g} px"


def _share(v: float) -> str:
    return f"{v * 100:.3g}%"


def _db(v: float) -> str:
    return f"{v:.3g} dB"


def _at_edge(m: float, edge: float | None) -> bool:
    """A reach of ``m`` px gets to the image edge: the farthest blocks from the ROI (``edge`` px)."""
    return edge is not None and m >= edge


def _edge(m: float, what: str = "its farthest blocks, ") -> str:
    return f"the image edge ({what}{_px(m)} from the ROI)"


def _context(m: float, edge: float | None) -> str:
    return "from every block up to the image edge (global reach)" if _at_edge(m, edge) else f"up to {_px(m)}"


def _receptive_field(m: float, b: float, p: dict, edge: float | None) -> str:
    if p.get("within") is not None:
        return (f"blocks farther than {_px(float(p['within']))} (the nearest at {_px(m)}) change the ROI output; the "
                f"bound is {_px(b)}: the model uses context beyond the bound: raise the bound if intended, or inspect "
                "the outlined blocks")
    where = _edge(m, "") if _at_edge(m, edge) else f"up to {_px(m)}"  # a radius in pixels, not blocks
    return (f"the support reaches {where}; the bound is {_px(b)}: the model uses context {_context(m, edge)}: raise "
            "the bound if intended, or inspect the outlined blocks")


def _max_reach(m: float, b: float, p: dict, edge: float | None) -> str:
    kind = "significantly non-zero effect (95% CI excludes 0)" if p.get("significant") else "non-zero effect"
    where = _edge(m) if _at_edge(m, edge) else _px(m)
    return (f"blocks with a {kind} reach {where}; the bound is {_px(b)}: the model draws on context "
            f"{_context(m, edge)}: raise the bound if intended, or inspect the outlined blocks")


def _positive_local(m: float, b: float, p: dict, edge: float | None) -> str:
    mass = _number(p.get("mass"))
    part = f"{_share(mass)} of the positive effect" if mass is not None else "the positive effect"
    where = _edge(m) if _at_edge(m, edge) else f"{_px(m)} from the ROI"
    return (f"{part} needs blocks up to {where}; the bound is {_px(b)}: the ROI is helped by farther context than "
            "allowed: raise the radius if intended, or inspect the outlined (farthest helpful) blocks")


def _negative_fraction(m: float, b: float, p: dict, edge: float | None) -> str:
    what = "of the blocks" if p.get("by", "count") == "count" else "of the absolute effect mass"
    noise = "" if p.get("significant") else "; significant=True counts only blocks whose 95% CI lies below 0"
    return (f"{_share(m)} {what} hurt the ROI; at most {_share(b)} allowed: real content at the outlined blocks "
            f"makes the ROI worse than random content would: inspect them, or raise the bound if expected{noise}")


def _context_beyond(m: float, b: float, p: dict, edge: float | None) -> str:
    beyond = _number(p.get("beyond"))
    where = f"beyond {_px(beyond)}" if beyond is not None else "from far blocks"
    return (f"only {_share(m)} of the effect mass comes from {where}; at least {_share(b)} expected: the model acts "
            "locally: check that it sees the context (image size, padding, global layers), or lower the share or "
            "the radius if local behaviour is fine")


def _effect_range(m: float, bound: Any, p: dict) -> str:
    lo, hi = (_number(v) for v in bound) if isinstance(bound, (list, tuple)) and len(bound) == 2 else (None, None)
    if lo is not None and m < lo:
        return (f"the effect range is {_db(m)}, below {_db(lo)}: the map is nearly flat, the ROI barely depends on "
                "any block: pick an ROI with structure, check the degradation, or lower the bound")
    if hi is not None and m > hi:
        return (f"the effect range is {_db(m)}, above {_db(hi)}: some blocks move the ROI's PSNR strongly: inspect "
                "the outlined extremes, or raise the bound if intended")
    return f"the effect range is {_db(m)}, outside the bound: inspect the outlined extremes"


def _baseline(m: float, b: float, p: dict, edge: float | None) -> str:
    return (f"{m:g} blocks differ from the stored baseline beyond the tolerance: inspect the outlined blocks; if "
            "the change is intended, rerun with --cem-regen and commit the new baseline")


_HINTS = {
    "receptive_field_within": _receptive_field,
    "positive_effect_local": _positive_local,
    "negative_fraction_at_most": _negative_fraction,
    "uses_context_beyond": _context_beyond,
    "matches_baseline": _baseline,
}
_METRIC_HINTS = {
    "support_radius": _receptive_field,
    "max_reach": _max_reach,
    "effective_radius": _positive_local,
    "negative_fraction": _negative_fraction,
    "context_share": _context_beyond,
}


def property_hint(record: dict[str, Any], edge_px: float | None = None) -> str:
    """How to act on the property ``record`` (a :func:`~cem_checks.records.property_record`), in one line; ``""``
    for a property that passed. ``edge_px``: the distance (input px) of the farthest blocks of the map from the ROI,
    when known: a reach there is named the image edge."""
    if record.get("passed"):
        return ""
    params = record.get("params") if isinstance(record.get("params"), dict) else {}
    measured, bound = _number(record.get("measured")), record.get("bound")
    name, metric = str(record.get("name")), str(record.get("metric"))
    if name == "matches_baseline" and measured is None:
        return ("no comparison was made (the baseline was created, or it was computed for another grid): read the "
                "message, then review and commit the baseline or rerun with --cem-regen")
    if measured is None:
        return (f"{record.get('expression') or metric} is undefined for this map (e.g. no effect mass outside the "
                "ROI), so the property fails: check that the map has effects, or use another measurement")
    if name == "effect_range_between" or metric == "effect_range_db":
        return _effect_range(measured, bound, params)
    if name == "receptive_field_within" and metric == "max_reach":
        fn = _max_reach
    else:
        fn = _HINTS.get(name) or _METRIC_HINTS.get(metric)
    b = _number(bound)
    if fn is not None and b is not None:
        return fn(measured, b, params, _number(edge_px))
    got = record.get("measured_text") or f"{record.get('expression') or metric} = {measured:g}"
    return (f"{got} misses the bound {record.get('bound_text') or bound}: adjust the bound if this is intended, or "
            "inspect the outlined blocks that drive the value")


def blocks_suggestion(record: dict[str, Any]) -> str:
    """How to list every block of the result the property ``record`` was checked on: a support-stage result
    (``settings["stage"] == "support"``) lists the support, not effects; a map lists the effects."""
    from ..checks import DEFAULT_MAP_HINT

    settings = record.get("settings") if isinstance(record.get("settings"), dict) else {}
    if settings.get("stage") == "support":
        return ("only the support stage ran, no effect was estimated: result.to_frame() lists every block's "
                "distance_px, support and resolved; the effects need the full map (read result.effect of the cem "
                "fixture's map, or call cem_checks.compute_cem)")
    return DEFAULT_MAP_HINT
