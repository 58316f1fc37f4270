"""JSON-safe records of maps and property outcomes, and the results file that gathers them per test.

Results file (``RESULTS_FORMAT`` version ``RESULTS_FORMAT_VERSION``), written by the pytest plugin
(``--cem-json``) and read by the report::

    {"format": "pytest-cem-results", "format_version": 1,
     "environment": {"pytest_cem": ..., "torch": ...},
     "settings": {...},                     # session settings: device, mode, seed, batch_size, ...
     "summary": {"tests": n, "maps": n, "properties": n, "failed_properties": n},
     "tests": [{"nodeid": ..., "outcome": "passed" | "failed" | "skipped", "duration_s": ...,
                "longrepr": ... (failed/skipped only), "maps": [map summary, ...],
                "properties": [property record, ...]}, ...]}

A map summary (:func:`map_summary`) holds the run's settings, a few numbers of the map and what the HTML report
needs to draw it: ``effect_db`` (rows x cols list of floats in dB, rounded to 4 decimals, NaN as null),
``roi_mask`` (rows x cols list of booleans) and ``display_bound_db`` (the task's colour-scale bound). A
property record (:func:`property_record`) is :meth:`PropertyOutcome.to_record` plus ``measured_text`` and
``bound_text``, the two strings a summary line shows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import metrics as M
from .checks import PropertyOutcome, _fmt, run_settings
from .errors import CEMInputError
from .result import CEMResult, _json_safe
from .tasks import parse_task

RESULTS_FORMAT = "pytest-cem-results"
RESULTS_FORMAT_VERSION = 1

#: Decimals of the per-block effects kept in a map summary (0.1 mdB: far below the 0.01 dB zero threshold).
EFFECT_DECIMALS = 4

__all__ = ["RESULTS_FORMAT", "RESULTS_FORMAT_VERSION", "map_summary", "property_line", "property_record"]


def display_bound(result: CEMResult) -> float:
    """The colour-scale bound (dB) of ``result``'s task (SR 2.5, DN 1, DR 2); for a task the name does not
    resolve, the largest absolute effect (1 dB when the map is all zero)."""
    try:
        return float(parse_task(result.task).display_bound_db)
    except (CEMInputError, AttributeError):
        finite = np.abs(result.effect[np.isfinite(result.effect)])
        top = float(finite.max()) if finite.size else 0.0
        return top if top > 0 else 1.0


def map_summary(result: CEMResult) -> dict[str, Any]:
    """A JSON-safe summary of ``result``: settings, grid, base PSNR (dB), effect range (dB), block counts, support
    radius (input px), cost, and for drawing it the per-block effect (dB), the ROI mask and the display bound."""
    result = M._check_result(result)
    c = M.counts(result, include_roi=True)
    effect = np.round(np.asarray(result.effect, dtype=np.float64), EFFECT_DECIMALS)
    return _json_safe(
        {
            "model": result.model,
            "settings": run_settings(result),
            "grid": [result.rows, result.cols],
            "input_shape": list(result.input_shape),
            "output_shape": list(result.output_shape),
            "base_psnr_db": result.base_psnr,
            "effect_min_db": float(result.effect.min()),
            "effect_max_db": float(result.effect.max()),
            "positive_blocks": c.positive,
            "negative_blocks": c.negative,
            "zero_blocks": c.zero,
            "support_blocks": int(result.support.sum()),
            "support_radius_px": M.support_radius(result),
            "forward_passes": result.forward_passes,
            "pixels_processed": result.pixels_processed,
            "wall_s": result.wall_s,
            "patch_bank": dict(result.patch_bank),
            "display_bound_db": display_bound(result),
            "effect_db": effect,
            "roi_mask": np.asarray(result.roi_mask, dtype=bool),
        }
    )


def property_record(outcome: PropertyOutcome) -> dict[str, Any]:
    """:meth:`PropertyOutcome.to_record` plus ``measured_text`` (e.g. ``"support_radius() = 3 px"``) and
    ``bound_text`` (e.g. ``"<= 1 px"``)."""
    if not isinstance(outcome, PropertyOutcome):
        raise TypeError(f"expected a PropertyOutcome, got {type(outcome).__name__}")
    rec = outcome.to_record()
    rec["measured_text"] = f"{outcome.expression} = {_fmt(outcome.measured, outcome.unit)}"
    rec["bound_text"] = outcome.bound_text
    return rec


def property_line(record: dict[str, Any]) -> str:
    """One line for a property record: ``"<name> passed|FAILED: <measured>; bound <bound>"``."""
    verdict = "passed" if record.get("passed") else "FAILED"
    return f"{record.get('name')} {verdict}: {record.get('measured_text')}; bound {record.get('bound_text')}"
