"""JSON-safe records of maps and property outcomes, and the results file that gathers them per test.

Results file (``RESULTS_FORMAT`` version ``RESULTS_FORMAT_VERSION``), written by the pytest plugin
(``--cem-json``) and read by the report::

    {"format": "pytest-cem-results", "format_version": 1,
     "environment": {"pytest_cem": ..., "torch": ...},
     "settings": {...},                     # session settings: device, mode, seed, batch_size, ...
     "summary": {"tests": n, "maps": n, "properties": n, "failed_properties": n},
     "tests": [{"nodeid": ..., "outcome": "passed" | "failed" | "error" | "skipped" | "xfailed" | "xpassed",
                "duration_s": ...,
                "message": ... (failure text or skip reason; absent for a plain pass),
                "teardown_error": ... (only when the teardown failed: its text),
                "maps": [map summary, ...],
                "properties": [property record, ...],
                "sweeps": [sweep record, ...] (only when the test ran sweeps)}, ...]}

The pytest plugin records every test of the session, with or without maps: ``outcome`` is the test's verdict
as pytest's summary line counts it (``"error"``: it failed in setup; a teardown failure adds ``teardown_error``,
which pytest counts as one more error; see :func:`outcome_counts`).

A map summary (:func:`map_summary`, ``"stage": "map"``) holds the run's settings, a few numbers of the map and
what the HTML report needs to draw it: ``effect_db`` (rows x cols list of floats in dB, rounded to 4 decimals, NaN
as null), ``support`` (rows x cols booleans: the block changed the ROI output),
``roi_mask`` (rows x cols list of booleans), ``display_bound_db`` (the task's colour-scale bound),
``distance_px`` (rows x cols ints: each block's Chebyshev distance to the ROI footprint, input px), ``stderr_db``
(rows x cols, dB, 4 decimals, null where undefined), ``n_samples`` (rows x cols ints: draws per block),
``uncertainty`` (:func:`uncertainty_summary`) and ``images``: ``{"max_px": cap, "input": image, "output": image}``
where each image is None (cap 0, or a result without images) or the record of
:func:`cem_checks.reporting.images.embed_image` (a base64 PNG of longest side <= cap and the ROI box in its
pixels; the input is the degraded model input, the output the model's baseline output, both 8-bit). Summaries
written by older versions lack these keys; the report says so where they would be drawn. A support summary
(:func:`support_summary`, ``"stage": "support"``) records a map of which only the support stage ran (no effect
was estimated): ``support``, ``resolved`` (the block was decided), ``roi_mask``, ``distance_px``, the support
radius (or ``within_px`` and ``beyond_within``), ``group_tests``, the cost and the images. A
property record (:func:`property_record`) is :meth:`PropertyOutcome.to_record` plus ``measured_text`` and
``bound_text``, the two strings a summary line shows; each of its ``worst_blocks`` names the block's box
``box_px`` ``[x, y, w, h]`` in input px (null in records of older versions).

A sweep record (:func:`sweep_record`, ``cem_checks.sweeps``: one map, or support stage, per (image, ROI) item)
holds the sweep's stage, model, ``settings``, ``shard`` (``[K, N]`` or null), ``counts`` (forward passes, wall
time, ...), the per-item table as ``columns`` and ``items`` (one JSON object per row of ``Sweep.frame``, in item
index order, NaN as null; plus a column per metric an assertion used that the frame lacks, from the assertion's
per-item values, see :func:`_metric_columns`), ``aggregates`` (per metric column: n, mean, std, min, median, q90,
max over the items; :func:`sweep_aggregates`), the ``assertions`` made over it (:func:`over_record`, also listed among the test's
``properties``) and ``worst_maps``: the map summaries (:func:`result_summary`) of the worst few items of each
assertion (:data:`SWEEP_WORST_MAPS`), each with the assertions that chose it. :func:`merge_sweeps` joins the
records of the shards of one sweep (``--cem-shard K/N``) into the record of the whole, with the same table and
aggregates as an unsharded run (``merged_shards`` lists the shards).

:func:`scalar_summary` and :func:`property_scalars` keep the numbers of a map summary and of a property record
without the per-block grids and images: what the plugin writes into junit-xml by default.

:func:`record_test` and :func:`results_document` build the same structure outside pytest (the ``cem run``
command); :func:`load_document` reads and validates a results file (down to each value the report reads),
:func:`write_document` writes one, :func:`merge_documents` joins several (shards of one run on different machines)
into one document, and :func:`recount_summary` recomputes a document's summary from its tests.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import metrics as M
from ._io import atomic_write_text
from .checks import PropertyOutcome, _fmt, run_settings
from .errors import CEMInputError, ResultsFileError, describe_value
from .result import CEMResult, SupportResult, _json_safe
from .reporting.images import DEFAULT_MAX_IMAGE_PX, check_max_image_px, embed_image
from .shards import document_shard, merge_shard_documents
from .tasks import parse_task

RESULTS_FORMAT = "pytest-cem-results"
RESULTS_FORMAT_VERSION = 1

#: Test outcomes of a results file, the categories of pytest's summary line: passed, failed, error (failed in
#: setup), skipped, and the xfail verdicts (an expected failure that failed or passed).
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")

#: Decimals of the per-block effects kept in a map summary (0.1 mdB: far below the 0.01 dB zero threshold).
EFFECT_DECIMALS = 4

__all__ = [
    "RESULTS_FORMAT",
    "RESULTS_FORMAT_VERSION",
    "check_document",
    "load_document",
    "map_images",
    "map_summary",
    "merge_documents",
    "merge_sweeps",
    "over_record",
    "outcome_counts",
    "property_scalars",
    "relative_paths",
    "scalar_summary",
    "result_summary",
    "support_summary",
    "property_line",
    "property_record",
    "record_test",
    "recount_summary",
    "results_document",
    "default_environment",
    "summarize",
    "sweep_aggregates",
    "sweep_record",
    "sweep_scalars",
    "uncertainty_summary",
    "write_document",
]


def display_bound(result: CEMResult) -> float:
    """The colour-scale bound (dB) of ``result``'s task (SR 2.5, DN 1, DR 2); for a task the name does not
    resolve, the largest absolute effect (1 dB when the map is all zero)."""
    try:
        return float(parse_task(result.task).display_bound_db)
    except (CEMInputError, AttributeError):
        finite = np.abs(result.effect[np.isfinite(result.effect)])
        top = float(finite.max()) if finite.size else 0.0
        return top if top > 0 else 1.0


def uncertainty_summary(result: CEMResult) -> dict[str, Any]:
    """How precise the map is, from ``result``'s per-block arrays (ROI blocks included).

    Sampled blocks are those with ``n_samples > 0`` (fast mode's group testing leaves the blocks it proves exactly
    zero unsampled). Keys: ``sampled_blocks``; ``stderr_median_db`` / ``stderr_max_db`` (over sampled blocks with
    a finite stderr; None when there are none); ``ci_halfwidth_max_db`` (largest half-width of the 95 % interval
    over the same blocks); ``nonzero_blocks`` (effect != 0) and ``nonzero_ci_contains_zero`` (of those, how many
    have ``ci_low <= 0 <= ci_high``: their sign is not established at 95 %); ``draws_total``, ``draws_mean`` (per
    sampled block; None when none) and ``draws_max`` (of ``n_samples``)."""
    n = np.asarray(result.n_samples, dtype=np.int64)
    se = np.asarray(result.stderr, dtype=np.float64)
    lo, hi = np.asarray(result.ci_low, dtype=np.float64), np.asarray(result.ci_high, dtype=np.float64)
    effect = np.asarray(result.effect, dtype=np.float64)
    sampled = n > 0
    known = sampled & np.isfinite(se)
    half = (hi - lo) / 2.0
    half_known = known & np.isfinite(half)
    nonzero = np.isfinite(effect) & (effect != 0)
    crosses = nonzero & np.isfinite(lo) & np.isfinite(hi) & (lo <= 0) & (hi >= 0)
    n_sampled = int(sampled.sum())
    return {
        "sampled_blocks": n_sampled,
        "stderr_median_db": float(np.median(se[known])) if known.any() else None,
        "stderr_max_db": float(se[known].max()) if known.any() else None,
        "ci_halfwidth_max_db": float(half[half_known].max()) if half_known.any() else None,
        "nonzero_blocks": int(nonzero.sum()),
        "nonzero_ci_contains_zero": int(crosses.sum()),
        "draws_total": int(n.sum()),
        "draws_mean": float(n.sum() / n_sampled) if n_sampled else None,
        "draws_max": int(n.max()) if n.size else 0,
    }


def map_images(result: CEMResult, max_image_px: int = DEFAULT_MAX_IMAGE_PX) -> dict[str, Any]:
    """The ``images`` entry of a map summary: ``{"max_px", "input", "output"}``, the input and output images of
    ``result`` embedded as base64 PNGs of longest side <= ``max_image_px`` with the ROI box (input: the ROI's
    footprint, ROI / scale; output: the ROI) in their pixels; None for an image the result lacks, both None when
    ``max_image_px`` is 0."""
    cap = check_max_image_px(max_image_px)
    roi = result.roi
    out_box = (roi.x, roi.y, roi.x + roi.size, roi.y + roi.size)
    return {
        "max_px": cap,
        "input": embed_image(result.input_image, roi.footprint(result.scale), cap),
        "output": embed_image(result.output_image, out_box, cap),
    }


def _summary_head(result: CEMResult | SupportResult, stage: str) -> dict[str, Any]:
    """The first entries of a map or support summary: stage, model, settings, grid, shapes, base PSNR."""
    return {
        "stage": stage,
        "model": result.model,
        "settings": run_settings(result),
        "grid": [result.rows, result.cols],
        "input_shape": list(result.input_shape),
        "output_shape": list(result.output_shape),
        "base_psnr_db": result.base_psnr,
    }


def map_summary(result: CEMResult, max_image_px: int = DEFAULT_MAX_IMAGE_PX) -> dict[str, Any]:
    """A JSON-safe summary of ``result``: settings, grid, base PSNR (dB), effect range (dB), block counts, support
    radius (input px), cost, and for drawing it the per-block effect (dB), the ROI mask, the display bound, the
    per-block distance (input px), stderr (dB) and draws, the :func:`uncertainty_summary` and the input and
    output images (:func:`map_images`, longest side <= ``max_image_px``; 0 embeds none)."""
    result = M._validate_result(result)
    images = map_images(result, max_image_px)
    c = M.counts(result, include_roi=True)
    effect = np.round(np.asarray(result.effect, dtype=np.float64), EFFECT_DECIMALS)
    stderr = np.round(np.asarray(result.stderr, dtype=np.float64), EFFECT_DECIMALS)
    return _json_safe(
        {
            **_summary_head(result, "map"),
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
            "distance_px": np.asarray(result.distance, dtype=np.int64),
            "stderr_db": stderr,
            "n_samples": np.asarray(result.n_samples, dtype=np.int64),
            "support": np.asarray(result.support, dtype=bool),
            "uncertainty": uncertainty_summary(result),
            "images": images,
        }
    )


def support_summary(result: SupportResult, max_image_px: int = DEFAULT_MAX_IMAGE_PX) -> dict[str, Any]:
    """A JSON-safe summary of a :class:`SupportResult` (``"stage": "support"``: the support stage ran, no effect
    was estimated): settings, grid, base PSNR (dB), support radius (input px; None when the search stopped at
    ``within_px``), ``within_px`` / ``beyond_within``, block counts (supported, resolved), group tests, cost, and for
    drawing it the per-block ``support``, ``resolved``, ROI mask and distance, and the images (:func:`map_images`)."""
    if not isinstance(result, SupportResult):
        raise CEMInputError(f"result {describe_value(result)} is not a SupportResult; pass compute_support()'s value.")
    return _json_safe(
        {
            **_summary_head(result, "support"),
            "support_radius_px": result.radius_px,
            "within_px": result.within_px,
            "beyond_within": result.beyond_within,
            "support_blocks": int(result.support.sum()),
            "resolved_blocks": int(result.resolved.sum()),
            "group_tests": result.group_tests,
            "forward_passes": result.forward_passes,
            "wall_s": result.wall_s,
            "patch_bank": dict(result.patch_bank),
            "support": np.asarray(result.support, dtype=bool),
            "resolved": np.asarray(result.resolved, dtype=bool),
            "roi_mask": np.asarray(result.roi_mask, dtype=bool),
            "distance_px": np.asarray(result.distance, dtype=np.int64),
            "images": map_images(result, max_image_px),
        }
    )


def result_summary(result: Any, max_image_px: int = DEFAULT_MAX_IMAGE_PX) -> dict[str, Any]:
    """:func:`support_summary` of a :class:`SupportResult`, else :func:`map_summary`."""
    if isinstance(result, SupportResult):
        return support_summary(result, max_image_px)
    return map_summary(result, max_image_px)


def property_record(outcome: PropertyOutcome) -> dict[str, Any]:
    """:meth:`PropertyOutcome.to_record` plus ``measured_text`` (e.g. ``"support_radius() = 3 px"``) and
    ``bound_text`` (e.g. ``"<= 1 px"``)."""
    if not isinstance(outcome, PropertyOutcome):
        raise TypeError(f"expected a PropertyOutcome, got {type(outcome).__name__}")
    rec = outcome.to_record()
    rec["measured_text"] = f"{outcome.expression} = {_fmt(outcome.measured, outcome.unit)}"
    rec["bound_text"] = outcome.bound_text
    return rec


#: The entries of a property record :func:`property_scalars` keeps.
PROPERTY_SCALARS = ("name", "passed", "expression", "measured", "op", "bound", "unit", "measured_text", "bound_text")


def property_scalars(record: dict[str, Any]) -> dict[str, Any]:
    """The verdict and numbers of a property record (:data:`PROPERTY_SCALARS`): no message, blocks or settings."""
    return {k: record[k] for k in PROPERTY_SCALARS if k in record}


def scalar_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """A map or support summary without its per-block grids, images and objects: the stage, model, grid, counts,
    support radius, effect range, base PSNR and cost (every entry that is a number, a string, a boolean or null),
    plus ``grid`` and the run's ``settings``. About 1 KB whatever the grid's size."""
    out = {k: v for k, v in summary.items() if v is None or isinstance(v, (bool, int, float, str))}
    for key in ("grid", "settings"):
        if key in summary:
            out[key] = summary[key]
    return out


def relative_paths(value: Any, root: str | os.PathLike) -> Any:
    """``value`` (a record: dicts, lists and strings) with every path under the folder ``root`` written relative
    to it: the text ``<root>/`` is left out of each string (keys are kept). Records written this way name the same
    files on every machine that checks out the project (e.g. a baseline path in a failure message)."""
    prefix = str(Path(root)).rstrip(os.sep) + os.sep
    if prefix == os.sep:
        return value

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return v.replace(prefix, "") if prefix in v else v
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(walk(x) for x in v)
        return v

    return walk(value)


def property_line(record: dict[str, Any]) -> str:
    """One line for a property record: ``"<name> passed|FAILED: <measured>; bound <bound>"``."""
    verdict = "passed" if record.get("passed") else "FAILED"
    return f"{record.get('name')} {verdict}: {record.get('measured_text')}; bound {record.get('bound_text')}"


# ------------------------------------------------------------------------------------------ sweeps
#: The columns of a sweep's per-item table that say which item a row is: left out of the aggregates.
SWEEP_KEY_COLUMNS = ("index", "image", "x", "y", "size")
#: Columns that vary from run to run (timings): left out of the aggregates, summed in a merge's counts.
SWEEP_TIMING_COLUMNS = ("wall_s",)
#: The statistics :func:`sweep_aggregates` gives per column, over the items with a finite value.
SWEEP_STATISTICS = ("n", "mean", "std", "min", "median", "q90", "max")
#: How many of the worst items of each assertion over a sweep have their map recorded in the sweep record.
SWEEP_WORST_MAPS = 3


def _roi_list(roi: Any) -> list | None:
    try:
        return [int(v) for v in roi]
    except (TypeError, ValueError):
        return None


def over_record(outcome: Any, *, sweep: int | None = None) -> dict[str, Any]:
    """A property record of an assertion over a sweep (``cem_checks.sweeps.OverOutcome``, made by ``check_over`` /
    ``assert_over``): its ``to_record()`` (name, metric, params, statistic, value, ci_low, ci_high, op, bound, unit,
    passed, decision, n_items, n_nan, confidence, n_boot, seed, settings, note, message) plus what the report and the
    summaries read of any property record: ``kind`` ``"sweep"``, ``description``, ``expression`` (e.g.
    ``"quantile:0.9 of effective_radius_px over 12 items"``), ``measured`` (the statistic), ``measured_text``
    (with the interval), ``bound_text``, ``worst_blocks`` (none), ``worst_items`` (``{"image", "roi": [x, y,
    size], "value"}``, worst first), ``metric_expression`` (the metric with its parameters, e.g.
    ``"context_share(beyond=7)"``), ``values`` (the metric per item, in item order), ``sweep`` (its position among the test's sweeps, None when unknown) and ``shard`` (the sweep's ``[K, N]``
    or None)."""
    rec = dict(outcome.to_record())
    unit = str(rec.get("unit") or "")
    statistic, n_items = rec.get("statistic"), rec.get("n_items")
    value, lo, hi, confidence = rec.get("value"), rec.get("ci_low"), rec.get("ci_high"), rec.get("confidence")
    expression = f"{statistic} of {outcome.expression} over {n_items} items"
    ci = ""
    if _is_number(lo) and _is_number(hi):
        level = f"{confidence * 100:.3g}% " if _is_number(confidence) else ""
        ci = f" ({level}CI [{_fmt(lo, unit)}, {_fmt(hi, unit)}])"
    worst = [{"image": str(w.get("image")), "roi": _roi_list(w.get("roi")), "value": w.get("value")}
             for w in rec.pop("worst", None) or [] if isinstance(w, dict)]
    settings = dict(rec.get("settings") or {})
    shard = settings.get("shard")
    decided = "its interval" if rec.get("decision") == "interval" else "the statistic itself"
    rec["values"] = [float(v) for v in getattr(outcome, "values", ()) or ()]
    rec.update({
        "kind": "sweep",
        "metric_expression": outcome.expression,
        "description": (f"the {statistic} of {outcome.expression} over the items of a sweep, {decided} compared with "
                        "the bound (percentile bootstrap over the items)"),
        "expression": expression,
        "measured": value,
        "measured_text": f"{expression} = {_fmt(value, unit)}{ci}",
        "bound_text": outcome.bound_text,
        "worst_items": worst,
        "worst_blocks": [],
        "map_hint": "",
        "sweep": sweep,
        "shard": list(shard) if isinstance(shard, (list, tuple)) else None,
    })
    return _json_safe(rec)


def _frame_items(sweep: Any) -> tuple[list[str], list[dict]]:
    """The columns and rows (JSON-safe dicts, in item index order) of ``sweep.frame``."""
    frame = sweep.frame
    columns = [str(c) for c in frame.columns]
    rows = [_json_safe({str(k): (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
            for row in frame.to_dict(orient="records")]
    if "index" in columns:
        rows.sort(key=lambda r: (r.get("index") is None, r.get("index")))
    return columns, rows


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def sweep_aggregates(columns: Sequence[str], items: Sequence[dict]) -> dict[str, dict[str, Any]]:
    """Per numeric column of a sweep's table (not :data:`SWEEP_KEY_COLUMNS` nor :data:`SWEEP_TIMING_COLUMNS`): the
    :data:`SWEEP_STATISTICS` over the items with a finite value, in item index order (``n`` counts them; the others
    are None when ``n`` is 0; ``std`` is the sample standard deviation, None below 2 items; ``q90`` the 0.9
    quantile, linear interpolation). Items in the same order give the same floats: a merged sweep's aggregates equal
    the unsharded run's."""
    ordered = sorted(items, key=lambda r: (r.get("index") is None, r.get("index"))) if "index" in columns else items
    out: dict[str, dict[str, Any]] = {}
    for c in columns:
        if c in SWEEP_KEY_COLUMNS or c in SWEEP_TIMING_COLUMNS:
            continue
        values = [r.get(c) for r in ordered]
        if not all(v is None or _is_number(v) for v in values):
            continue  # a column of text
        a = np.array([float(v) for v in values if v is not None], dtype=np.float64)
        a = a[np.isfinite(a)]
        n = int(a.size)
        out[c] = {
            "n": n,
            "mean": float(a.mean()) if n else None,
            "std": float(a.std(ddof=1)) if n > 1 else None,
            "min": float(a.min()) if n else None,
            "median": float(np.median(a)) if n else None,
            "q90": float(np.quantile(a, 0.9)) if n else None,
            "max": float(a.max()) if n else None,
        }
    return out


def _worst_key(op: str, bound: Any, value: Any) -> float | None:
    """How bad ``value`` is for an assertion ``op bound`` (larger: worse), None when it is not a number."""
    if not _is_number(value) or not math.isfinite(value):
        return None
    if op in ("<=", "<"):
        return float(value)
    if op in (">=", ">"):
        return -float(value)
    if op == "between" and isinstance(bound, (list, tuple)) and len(bound) == 2:
        return max(float(value) - float(bound[1]), float(bound[0]) - float(value))
    return abs(float(value))


def _item_key(image: Any, roi: Any) -> tuple:
    return str(image), tuple(_roi_list(roi) or ())


def _metric_columns(sweep: Any, assertions: Sequence[dict], columns: list[str], items: list[dict]) -> None:
    """Add to the table (in place) a column per metric an assertion used that ``Sweep.frame`` lacks, named by the
    metric with its parameters (``metric_expression``, e.g. ``"context_share(beyond=7)"``), from the assertion's
    per-item ``values`` (:func:`over_record`); an assertion without one value per item adds no column."""
    by_index = {int(it.index): k for k, it in enumerate(sweep.items)}
    for a in assertions:
        name, expr = a.get("metric"), a.get("metric_expression") or a.get("metric")
        if name in columns or expr in columns or not isinstance(expr, str):
            continue
        values = a.get("values")
        if not (isinstance(values, list) and len(values) == len(items)):
            continue
        for row in items:
            v = values[by_index[int(row["index"])]]
            row[expr] = v if _is_number(v) and math.isfinite(v) else None
        columns.append(expr)


def sweep_record(sweep: Any, assertions: Sequence[dict] = (), max_image_px: int = DEFAULT_MAX_IMAGE_PX,
                 worst_maps: int = SWEEP_WORST_MAPS) -> dict[str, Any]:
    """A JSON-safe record of ``sweep`` (a ``cem_checks.sweeps.Sweep``, or one shard of it; see the module docstring)
    with the ``assertions`` made over it (:func:`over_record` dicts) and the map summaries (:func:`result_summary`,
    images of longest side <= ``max_image_px``) of the first ``worst_maps`` worst items of each assertion."""
    columns, items = _frame_items(sweep)
    _metric_columns(sweep, assertions, columns, items)
    first = sweep.results[0] if len(sweep.results) else None
    shard = sweep.shard
    by_key = {_item_key(it.image, it.roi): k for k, it in enumerate(sweep.items)}
    chosen: dict[int, dict[str, Any]] = {}
    for a in assertions:
        for w in (a.get("worst_items") or [])[:worst_maps]:
            k = by_key.get(_item_key(w.get("image"), w.get("roi")))
            if k is None:
                continue
            item = sweep.items[k]
            entry = chosen.get(k)
            if entry is None:
                entry = chosen[k] = {"index": int(item.index), "image": str(item.image), "roi": _roi_list(item.roi),
                                     "reasons": [], "map": result_summary(sweep.results[k], max_image_px)}
            entry["reasons"].append({"assertion": a.get("name"), "metric": a.get("metric"),
                                     "statistic": a.get("statistic"), "op": a.get("op"), "bound": a.get("bound"),
                                     "value": w.get("value"),
                                     "key": _worst_key(str(a.get("op")), a.get("bound"), w.get("value"))})
    record = {
        "kind": "sweep",
        "stage": str(sweep.stage),
        "model": sweep.settings.get("model") or getattr(first, "model", None),
        "settings": dict(sweep.settings),
        "shard": list(shard) if shard is not None else None,
        "counts": dict(sweep.counts),
        "n_items": len(items),
        "columns": columns,
        "items": items,
        "aggregates": sweep_aggregates(columns, items),
        "assertions": list(assertions),
        "worst_maps": sorted(chosen.values(), key=lambda e: e["index"]),
    }
    return _json_safe(record)


def sweep_scalars(record: dict[str, Any]) -> dict[str, Any]:
    """A sweep record without its per-item table and maps: stage, model, settings, shard, counts, the number of
    items, the aggregates, the verdicts and numbers of its assertions and the indices of its worst items. What the
    plugin writes into junit-xml by default (a few KB whatever the number of items)."""
    out = {k: record.get(k) for k in ("kind", "stage", "model", "settings", "shard", "merged_shards", "counts",
                                      "n_items", "columns", "aggregates") if k in record}
    keep = PROPERTY_SCALARS + ("statistic", "ci_low", "ci_high", "confidence", "n_items", "shard")
    out["assertions"] = [{k: a[k] for k in keep if k in a} for a in record.get("assertions") or []]
    out["worst_items"] = [w.get("index") for w in record.get("worst_maps") or []]
    return out


def _sweep_fields(record: dict) -> dict[str, Any]:
    """What the shards of one sweep share, by field: stage, model, columns, every setting (but ``execution``: how
    each shard ran, except its ``shard_by``: how the items were split) and N, the number of shards."""
    shard = record.get("shard")
    settings = record.get("settings") or {}
    out = {"stage": record.get("stage"), "model": record.get("model"), "columns": record.get("columns"),
           "shard N": shard[1] if isinstance(shard, list) and len(shard) == 2 else None,
           "settings.execution.shard_by": (settings.get("execution") or {}).get("shard_by", "item")}
    out.update({f"settings.{k}": v for k, v in settings.items() if k != "execution"})
    return out


def _sweep_identity(record: dict) -> str:
    return json.dumps(_sweep_fields(record), sort_keys=True, default=str)


def sweep_difference(a: dict, b: dict) -> str | None:
    """The first field (:func:`_sweep_fields`) in which the sweep records ``a`` and ``b`` differ, with both values
    (``"settings.seed (0 vs 1)"``); None when they could be shards of one sweep."""
    fa, fb = _sweep_fields(a), _sweep_fields(b)
    for key in sorted(set(fa) | set(fb)):
        if fa.get(key) != fb.get(key):
            return f"{key} ({describe_value(fa.get(key), 60)} vs {describe_value(fb.get(key), 60)})"
    return None


def _sum_counts(counts: Sequence[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in counts:
        for k, v in (c or {}).items():
            if _is_number(v) and (k not in out or _is_number(out[k])):
                out[k] = out.get(k, 0) + v
            else:
                out.setdefault(k, v)
    return out


def merge_sweeps(records: Sequence[dict], labels: Sequence[str] | None = None) -> dict[str, Any]:
    """The record of a whole sweep from the records of its shards (``shard`` ``[K, N]`` with one N, distinct K's,
    and equal stage, model, settings and columns; :class:`CEMInputError` otherwise): the items concatenated in index
    order, the aggregates recomputed (:func:`sweep_aggregates`: the same as an unsharded run's), the counts summed,
    every shard's assertions kept (each says its ``shard``; ``source`` its document when ``labels`` are given), the
    worst maps re-chosen among the shards' (the first :data:`SWEEP_WORST_MAPS` of each assertion by its worst
    value), ``shard`` None, ``merged_shards`` the ``[K, N]`` merged (``merged_sources`` their labels) and
    ``complete`` whether all N shards were given."""
    records = list(records)
    if not records:
        raise CEMInputError("merge_sweeps needs at least one sweep record.")
    shards = [r.get("shard") for r in records]
    if not all(isinstance(s, list) and len(s) == 2 for s in shards):
        raise CEMInputError(f"merge_sweeps merges the shards of one sweep; got shard={shards!r} (each must be [K, N]).")
    ks = [s[0] for s in shards]
    for i, r in enumerate(records[1:], 1):
        diff = sweep_difference(records[0], r)
        if diff is not None:
            raise CEMInputError(f"merge_sweeps got records that are not shards of one sweep: records 0 and {i} differ "
                                f"in {diff}; merge only the shards of one sweep.")
    twice = sorted({k for k in ks if ks.count(k) > 1})
    if twice:
        raise CEMInputError(f"merge_sweeps got shard {twice[0]}/{shards[0][1]} more than once (shards {shards!r}); "
                            "merge each shard once.")
    labels = list(labels) if labels is not None else [None] * len(records)
    order = sorted(range(len(records)), key=lambda i: ks[i])
    items = sorted((it for i in order for it in records[i].get("items") or []),
                   key=lambda r: (r.get("index") is None, r.get("index")))
    columns = list(records[0].get("columns") or [])
    assertions = []
    for i in order:
        for a in records[i].get("assertions") or []:
            assertions.append(dict(a, source=labels[i]) if labels[i] is not None else dict(a))
    # the worst maps: per assertion (name, metric, statistic, op, bound), the first SWEEP_WORST_MAPS items by worst
    # value among the shards' candidates (each shard's worst items of that assertion include the whole's)
    candidates: dict[int, dict] = {}
    for i in order:
        for w in records[i].get("worst_maps") or []:
            candidates.setdefault(w.get("index"), w)
    groups: dict[str, list[tuple]] = {}
    for idx, w in candidates.items():
        for reason in w.get("reasons") or []:
            key = json.dumps([reason.get(k) for k in ("assertion", "metric", "statistic", "op", "bound")], default=str)
            groups.setdefault(key, []).append((reason.get("key"), idx, reason))
    keep: dict[int, list] = {}
    for group in groups.values():
        group.sort(key=lambda t: (t[0] is not None, -(t[0] or 0.0), t[1]))  # undefined (NaN) values first
        for _, idx, reason in group[:SWEEP_WORST_MAPS]:
            keep.setdefault(idx, []).append(reason)
    worst = [dict(candidates[idx], reasons=keep[idx]) for idx in sorted(keep, key=lambda v: (v is None, v))]
    n = shards[0][1]
    merged = {k: v for k, v in records[order[0]].items()}
    merged.update({
        "shard": None,
        "merged_shards": [shards[i] for i in order],
        "complete": sorted(ks) == list(range(n)),
        "counts": {**_sum_counts([records[i].get("counts") or {} for i in order]), "shards": len(records)},
        "n_items": len(items),
        "items": items,
        "aggregates": sweep_aggregates(columns, items),
        "assertions": assertions,
        "worst_maps": worst,
    })
    if any(lab is not None for lab in labels):
        merged["merged_sources"] = [labels[i] for i in order]
    return merged


# ------------------------------------------------------------------------------------------ results documents
def record_test(nodeid: str, *, outcome: str, duration_s: float = 0.0, maps: Sequence[dict] = (),
                properties: Sequence[dict] = (), message: str | None = None,
                teardown_error: str | None = None, sweeps: Sequence[dict] = ()) -> dict[str, Any]:
    """One entry of a document's ``tests``: ``outcome`` one of :data:`OUTCOMES`; ``maps`` are :func:`map_summary`
    dicts, ``properties`` :func:`property_record` (or :func:`over_record`) dicts, ``sweeps`` :func:`sweep_record`
    dicts (the key is written only when there are some); ``message`` (failure text or skip reason) and
    ``teardown_error`` (the text of a failed teardown, which pytest counts as one more error) are kept when
    given."""
    if outcome not in OUTCOMES:
        raise CEMInputError(
            f"outcome={outcome!r} is not a test outcome; expected one of {', '.join(map(repr, OUTCOMES))} (the "
            "categories of pytest's summary line).")
    entry: dict[str, Any] = {
        "nodeid": str(nodeid),
        "outcome": outcome,
        "duration_s": float(duration_s),
        "maps": list(maps),
        "properties": list(properties),
    }
    if sweeps:
        entry["sweeps"] = list(sweeps)
    if message is not None:
        entry["message"] = str(message)
    if teardown_error is not None:
        entry["teardown_error"] = str(teardown_error)
    return entry


def outcome_counts(tests: Sequence[dict]) -> dict[str, int]:
    """How many of ``tests`` ended in each of :data:`OUTCOMES` (all keys present), counted as pytest's summary
    line counts them: one per test by its outcome, plus one ``"error"`` per test whose teardown failed
    (``teardown_error``). Outcomes outside :data:`OUTCOMES` (files of other tools) get keys of their own."""
    counts = dict.fromkeys(OUTCOMES, 0)
    for t in tests:
        outcome = str(t.get("outcome"))
        counts[outcome] = counts.get(outcome, 0) + 1
        if t.get("teardown_error") is not None:
            counts["error"] += 1
    return counts


def summarize(tests: Sequence[dict], exitstatus: int | None = None) -> dict[str, Any]:
    """The ``summary`` of a document holding ``tests``: counts of tests, maps, properties and failed properties."""
    return {
        "tests": len(tests),
        "maps": sum(len(t.get("maps") or []) for t in tests),
        "properties": sum(len(t.get("properties") or []) for t in tests),
        "failed_properties": sum(not p.get("passed") for t in tests for p in t.get("properties") or []),
        "exitstatus": exitstatus,
    }


def default_environment(*distributions: str) -> dict[str, str | None]:
    """The installed versions of pytest-cem, torch and ``distributions`` (None when not installed), keyed by the
    distribution name with ``-`` as ``_`` (e.g. ``"pytest_cem"``)."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    return {d.replace("-", "_"): ver(d) for d in ("pytest-cem", "torch", *distributions)}


def results_document(tests: Sequence[dict], *, settings: dict | None = None, environment: dict | None = None,
                     exitstatus: int | None = None) -> dict[str, Any]:
    """A results document (the format of the module docstring) of ``tests`` (:func:`record_test` entries);
    ``environment`` defaults to the installed pytest-cem and torch versions."""
    tests = list(tests)
    return {
        "format": RESULTS_FORMAT,
        "format_version": RESULTS_FORMAT_VERSION,
        "environment": dict(environment) if environment is not None else default_environment(),
        "settings": _json_safe(dict(settings or {})),
        "summary": summarize(tests, exitstatus),
        "tests": tests,
    }


def recount_summary(document: dict) -> dict[str, Any]:
    """``document`` (a results document) with its ``summary`` recomputed from its ``tests`` (:func:`summarize`);
    the stored ``exitstatus`` is kept when it is an integer. A stored summary is never shown as it is: a file
    edited or cut short could claim maps or failures its tests do not hold."""
    status = (document.get("summary") or {}).get("exitstatus") if isinstance(document.get("summary"), dict) else None
    keep = status if isinstance(status, int) and not isinstance(status, bool) else None
    return dict(document, summary=summarize(document["tests"], keep))


#: The per-block grids of a map summary the report reads: key -> (accepted JSON types, null allowed, what is
#: expected). Null stands for NaN in the float grids.
MAP_GRIDS = {
    "effect_db": ((int, float), True, "a number (dB) or null (NaN)"),
    "stderr_db": ((int, float), True, "a number (dB) or null (undefined)"),
    "distance_px": ((int,), False, "an integer (input px)"),
    "n_samples": ((int,), False, "an integer (draws)"),
    "roi_mask": ((bool,), False, "true or false"),
    "support": ((bool,), False, "true or false"),
    "resolved": ((bool,), False, "true or false"),
}
#: The stages a map summary may record: the full map, or the support stage alone.
MAP_STAGES = ("map", "support")
#: The numbers and the counts (integers) of a map summary the report reads (null allowed: shown as n/a).
MAP_NUMBERS = ("base_psnr_db", "effect_min_db", "effect_max_db", "display_bound_db", "support_radius_px", "wall_s",
               "within_px")
MAP_COUNTS = ("forward_passes", "pixels_processed", "positive_blocks", "negative_blocks", "zero_blocks",
              "support_blocks", "resolved_blocks", "group_tests")
#: The objects (dicts) of a map summary the report reads (null allowed for ``images``).
MAP_OBJECTS = ("settings", "patch_bank", "uncertainty", "images")
_REDO = "Re-create the file with pytest --cem-json or cem run -o FILE.json, or correct that value."


def _is(value: Any, types: tuple) -> bool:
    """``value`` is one of the JSON ``types`` (a JSON true/false is not a number)."""
    return type(value) in types


def _check_grid(values: Any, key: str, where: str) -> tuple[int, int]:
    """The (rows, cols) of the map summary grid ``values`` under ``key``; :class:`ResultsFileError` (``where``
    names the file, test and map) at the first value that is not a list of equally long rows of what
    :data:`MAP_GRIDS` expects."""
    types, nullable, expected = MAP_GRIDS[key]
    if not isinstance(values, list) or not values or not isinstance(values[0], list) or not values[0]:
        raise ResultsFileError(
            f"{where}: {key} is {describe_value(values)}; expected a non-empty list of rows (rows x cols blocks), "
            f"each a list of {expected}. {_REDO}")
    cols = len(values[0])
    for r, row in enumerate(values):
        if not isinstance(row, list) or len(row) != cols:
            got = f"a row of {len(row)} values" if isinstance(row, list) else describe_value(row)
            raise ResultsFileError(
                f"{where}: {key}[{r}] is {got}; expected a row of {cols} values like {key}[0], each {expected}. "
                f"{_REDO}")
        if all(_is(v, types) or (nullable and v is None) for v in row):
            continue
        c, bad = next((c, v) for c, v in enumerate(row) if not (_is(v, types) or (nullable and v is None)))
        raise ResultsFileError(f"{where}: {key}[{r}][{c}] is {describe_value(bad)}; expected {expected}. {_REDO}")
    return len(values), cols


def _check_map(m: Any, where: str) -> None:
    """:class:`ResultsFileError` unless the map summary ``m`` holds what the report reads in the types it reads:
    the grids of :data:`MAP_GRIDS` (when present) of one shape, equal to ``grid``; the numbers of
    :data:`MAP_NUMBERS` and integers of :data:`MAP_COUNTS` (or null), a positive ``display_bound_db``; the objects
    of :data:`MAP_OBJECTS`. Keys that older versions did not write may be absent."""
    if not isinstance(m, dict):
        raise ResultsFileError(f"{where} is {describe_value(m)}; expected a map summary (a JSON object). {_REDO}")
    stage = m.get("stage", "map")
    if stage not in MAP_STAGES:
        raise ResultsFileError(
            f"{where}: stage is {describe_value(stage)}; expected one of {', '.join(map(repr, MAP_STAGES))}. {_REDO}")
    if m.get("beyond_within") is not None and not isinstance(m["beyond_within"], bool):
        raise ResultsFileError(
            f"{where}: beyond_within is {describe_value(m['beyond_within'])}; expected true, false or null. {_REDO}")
    grid = m.get("grid")
    if grid is not None and not (isinstance(grid, list) and len(grid) == 2
                                 and all(_is(v, (int,)) and v > 0 for v in grid)):
        raise ResultsFileError(
            f"{where}: grid is {describe_value(grid)}; expected [rows, cols], two integers >= 1. {_REDO}")
    shape, first = (tuple(grid), "grid") if grid is not None else (None, None)
    for key in MAP_GRIDS:
        if m.get(key) is None:
            continue
        got = _check_grid(m[key], key, where)
        if shape is None:
            shape, first = got, key
        elif got != shape:
            raise ResultsFileError(
                f"{where}: {key} is {got[0]}x{got[1]} blocks; expected {shape[0]}x{shape[1]} like {first}. {_REDO}")
    for keys, types, expected in ((MAP_NUMBERS, (int, float), "a number"), (MAP_COUNTS, (int,), "an integer")):
        for key in keys:
            v = m.get(key)
            if v is not None and not _is(v, types):
                raise ResultsFileError(f"{where}: {key} is {describe_value(v)}; expected {expected} or null. {_REDO}")
    bound = m.get("display_bound_db")
    if bound is not None and not (bound > 0 and np.isfinite(bound)):
        raise ResultsFileError(
            f"{where}: display_bound_db is {bound!r}; expected a positive number of dB (the colour scale's bound, "
            f"e.g. 1.0 for denoising). {_REDO}")
    for key in MAP_OBJECTS:
        v = m.get(key)
        if v is not None and not isinstance(v, dict):
            raise ResultsFileError(f"{where}: {key} is {describe_value(v)}; expected a JSON object. {_REDO}")
    roi = (m.get("settings") or {}).get("roi")
    if roi is not None and not isinstance(roi, list):
        raise ResultsFileError(
            f"{where}: settings.roi is {describe_value(roi)}; expected a list [top, left, size] or null. {_REDO}")
    for k, v in (m.get("uncertainty") or {}).items():
        if v is not None and not _is(v, (int, float)):
            raise ResultsFileError(
                f"{where}: uncertainty.{k} is {describe_value(v)}; expected a number or null. {_REDO}")


def _list_field(record: dict, key: str, where: str) -> list:
    """``record[key]``: a list, or [] when absent or null; else :class:`ResultsFileError`."""
    rows = record.get(key)
    if rows is None:
        return []
    if not isinstance(rows, list):
        raise ResultsFileError(f"{where}: {key} is {describe_value(rows)}; expected a list. {_REDO}")
    return rows


def _check_object_fields(record: dict, keys: Sequence[str], where: str) -> None:
    """:class:`ResultsFileError` unless each of ``keys`` of ``record`` is absent, null or a JSON object."""
    for key in keys:
        if record.get(key) is not None and not isinstance(record[key], dict):
            raise ResultsFileError(f"{where}: {key} is {describe_value(record[key])}; expected a JSON object. {_REDO}")


def _check_property(p: Any, where: str) -> None:
    """:class:`ResultsFileError` unless ``p`` is a property record the report and the summaries can count: a JSON
    object whose ``settings`` is an object (or absent) and whose ``passed`` is true or false (a string such as
    ``"no"`` would count as passed)."""
    if not isinstance(p, dict) or not isinstance(p.get("settings") or {}, dict):
        raise ResultsFileError(
            f"{where} is {describe_value(p)}; expected a property record (a JSON object, its settings an object). "
            f"{_REDO}")
    if not isinstance(p.get("passed"), bool):
        got = describe_value(p["passed"]) if "passed" in p else "absent"
        raise ResultsFileError(
            f"{where} ({p.get('name')}): passed is {got}; expected true or false (the property's verdict). {_REDO}")


def _check_sweep(s: Any, where: str) -> None:
    """:class:`ResultsFileError` unless the sweep record ``s`` holds what the report reads in the types it reads:
    ``stage`` (map or support), ``settings`` / ``counts`` / ``aggregates`` objects, ``shard`` null or ``[K, N]``,
    ``columns`` a list of strings, ``items`` a list of objects whose values are numbers, strings or null (lists for
    a ROI), ``assertions`` a list of objects, ``worst_maps`` a list of objects each holding a map summary ``map``
    (checked by :func:`_check_map`)."""
    if not isinstance(s, dict):
        raise ResultsFileError(f"{where} is {describe_value(s)}; expected a sweep record (a JSON object). {_REDO}")
    if s.get("stage", "map") not in MAP_STAGES:
        raise ResultsFileError(
            f"{where}: stage is {describe_value(s.get('stage'))}; expected one of "
            f"{', '.join(map(repr, MAP_STAGES))}. {_REDO}")
    _check_object_fields(s, ("settings", "counts", "aggregates"), where)
    v = s.get("shard")
    if v is not None and not (isinstance(v, list) and len(v) == 2 and all(_is(x, (int,)) for x in v)
                              and 0 <= v[0] < v[1]):
        raise ResultsFileError(
            f"{where}: shard is {describe_value(v)}; expected [K, N] (shard K of N, 0 <= K < N) or null. {_REDO}")
    columns = s.get("columns")
    if columns is not None and not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
        raise ResultsFileError(f"{where}: columns is {describe_value(columns)}; expected a list of names. {_REDO}")
    for key in ("items", "assertions", "worst_maps"):
        for k, row in enumerate(_list_field(s, key, where)):
            if not isinstance(row, dict):
                raise ResultsFileError(
                    f"{where}: {key}[{k}] is {describe_value(row)}; expected a JSON object. {_REDO}")
            if key == "assertions":
                _check_property(row, f"{where}: assertions[{k}]")
            elif key == "items":
                bad = next(((c, v) for c, v in row.items()
                            if not (v is None or _is(v, (int, float, str, bool, list)))), None)
                if bad is not None:
                    raise ResultsFileError(
                        f"{where}: items[{k}].{bad[0]} is {describe_value(bad[1])}; expected a number, a string or "
                        f"null. {_REDO}")
            elif key == "worst_maps":
                _check_map(row.get("map"), f"{where}, worst map {k + 1}")
    for col, stats in (s.get("aggregates") or {}).items():
        if not isinstance(stats, dict) or not all(v is None or _is(v, (int, float)) for v in stats.values()):
            raise ResultsFileError(
                f"{where}: aggregates.{col} is {describe_value(stats)}; expected an object of numbers or null. "
                f"{_REDO}")


def check_document(document: Any, source: str = "the document") -> dict[str, Any]:
    """``document`` if it is a results document of this format version whose tests hold what the report reads
    (maps, properties and sweeps as lists of objects; each map checked by :func:`_check_map`: numeric grids of one
    shape, numbers, objects; each sweep by :func:`_check_sweep`); else :class:`ResultsFileError` naming ``source``,
    and for a bad map the test, the map, the field, the value and what is expected."""
    if not isinstance(document, dict) or document.get("format") != RESULTS_FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise ResultsFileError(
            f"{source} is not a pytest-cem results file (format {found!r}, expected {RESULTS_FORMAT!r}); pass a "
            "file written by pytest --cem-json or by cem run -o FILE.json."
        )
    version = document.get("format_version")
    if version != RESULTS_FORMAT_VERSION:
        raise ResultsFileError(
            f"{source} has results format version {version!r}; this pytest-cem reads version "
            f"{RESULTS_FORMAT_VERSION}. Re-run the tests with this version, or use the pytest-cem that wrote it."
        )
    tests = document.get("tests")
    if not isinstance(tests, list) or not all(isinstance(t, dict) and "nodeid" in t for t in tests):
        raise ResultsFileError(f"{source} has no valid 'tests' list (each entry a dict with a 'nodeid').")
    _check_object_fields(document, ("settings", "environment", "summary"), source)
    for t in tests:
        test = f"{source}: test {t['nodeid']!r}"
        for key in ("maps", "properties", "sweeps"):
            for k, item in enumerate(_list_field(t, key, test)):
                if key == "maps":
                    _check_map(item, f"{test}, map {k + 1}")
                elif key == "sweeps":
                    _check_sweep(item, f"{test}, sweep {k + 1}")
                else:
                    _check_property(item, f"{test}: property {k + 1}")
    return document


def load_document(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate the results file at ``path``; :class:`ResultsFileError` (naming the file) when it is
    missing, unreadable, not JSON, not a results document or of another format version."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsFileError(f"cannot read the results file {str(p)!r}: {exc}") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ResultsFileError(f"the results file {str(p)!r} is not valid JSON: {exc}") from None
    return check_document(document, f"the results file {str(p)!r}")


def write_document(document: dict, path: str | os.PathLike) -> str:
    """Write ``document`` as JSON to ``path`` atomically (temporary file, then rename); returns the path."""
    return str(atomic_write_text(path, json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n"))


def _labels(sources: Sequence[str]) -> list[str]:
    names = [Path(s).name or str(s) for s in sources]
    return names if len(set(names)) == len(names) else [str(s) for s in sources]


def _merge_sweep_shards(tests: list[dict], original: list[str]) -> None:
    """Merge, in place, the sweep records of ``tests`` (entries of a merged document; ``original``: their node ids
    before labelling) that are shards of one sweep (see :func:`merge_documents`)."""
    groups: dict[tuple, list[tuple[int, int]]] = {}
    for ti, t in enumerate(tests):
        for k, rec in enumerate(t.get("sweeps") or []):
            if isinstance(rec, dict) and rec.get("shard") is not None:
                groups.setdefault((original[ti], k, _sweep_identity(rec)), []).append((ti, k))
    drop: dict[int, set] = {}
    for places in groups.values():
        if len({ti for ti, _ in places}) < 2:
            continue
        records = [tests[ti]["sweeps"][k] for ti, k in places]
        try:
            merged = merge_sweeps(records, [str(tests[ti].get("source")) for ti, _ in places])
        except CEMInputError:
            continue  # not distinct shards (e.g. one shard's file given twice): kept apart, as they are
        (first, k0), rest = places[0], places[1:]
        tests[first] = dict(tests[first], sweeps=list(tests[first]["sweeps"]))
        tests[first]["sweeps"][k0] = merged
        for ti, k in rest:
            drop.setdefault(ti, set()).add(k)
            into = tests[ti].setdefault("merged_sweeps_into", [])
            if tests[first]["nodeid"] not in into:
                into.append(tests[first]["nodeid"])
    for ti, ks in drop.items():
        kept = [r for k, r in enumerate(tests[ti]["sweeps"]) if k not in ks]
        if kept:
            tests[ti]["sweeps"] = kept
        else:
            tests[ti].pop("sweeps")


def _concatenate(documents: Sequence[dict], labels: Sequence[str]) -> list[dict]:
    """The tests of whole documents (not shards of one run), in order, each labelled with its source; a node id
    present in several documents kept from each as ``"<nodeid> [<source>]"``; the shards of a sweep made with
    ``cem_sweep(..., shard=...)`` in different documents merged (:func:`_merge_sweep_shards`)."""
    seen: dict[str, int] = {}
    for doc in documents:
        for nodeid in {str(t["nodeid"]) for t in doc["tests"]}:
            seen[nodeid] = seen.get(nodeid, 0) + 1
    tests, original = [], []
    for doc, label in zip(documents, labels):
        for t in doc["tests"]:
            entry = dict(t)
            entry["source"] = label
            if seen[str(t["nodeid"])] > 1:
                entry["nodeid"] = f"{t['nodeid']} [{label}]"
            tests.append(entry)
            original.append(str(t["nodeid"]))
    _merge_sweep_shards(tests, original)
    return tests


def merge_documents(documents: Sequence[dict], sources: Sequence[str] | None = None) -> dict[str, Any]:
    """One results document holding every test of ``documents`` (e.g. the shards of a CI matrix), in order.

    Documents written by ``pytest --cem-shard K/N`` (``settings.shard`` ``[K, N]``) are the shards of one run and
    merge into the results of the whole run (:mod:`cem_checks.shards`: each test once, the sweeps whole with their
    assertions recomputed, ``shards`` saying which were merged and which are missing; refused with
    :class:`ResultsFileError` naming the field for the same shard twice, another N, another seed, ...). Any other
    documents are concatenated as follows.

    The shards of a sweep (``--cem-shard K/N``: the same test, the same position among its sweeps, one N, distinct
    K's, equal stage, model and settings) become one sweep record (:func:`merge_sweeps`: the whole sweep's table and
    aggregates), kept in the first of those tests; the others lose that sweep and name that test in
    ``merged_sweeps_into``.

    Each test keeps its maps and properties and gains ``source`` (the file name of its document, or the full
    ``sources`` entry when two names coincide). A node id present in more than one document is kept from each
    and labelled with its source: ``"<nodeid> [<source>]"``. The summary is recomputed (``exitstatus``: the
    largest of the documents', None when none has one); ``settings`` and ``environment`` are the first
    document's, and ``merged_from`` lists each source with its settings, environment and summary (recounted from
    its tests, :func:`recount_summary`). ``merge_notes`` lists what the reader should know of the merge (missing
    shards, sweeps whose model could not be checked); empty for whole documents.

    Args:
        documents: results documents (each checked with :func:`check_document`).
        sources: a name per document (e.g. its file path); default ``"document 1"``, ``"document 2"``, ...
    """
    documents = list(documents)
    if not documents:
        raise CEMInputError("merge_documents needs at least one results document.")
    if sources is None:
        sources = [f"document {i + 1}" for i in range(len(documents))]
    sources = [str(s) for s in sources]
    if len(sources) != len(documents):
        raise CEMInputError(f"got {len(sources)} sources for {len(documents)} documents; pass one per document.")
    for doc, src in zip(documents, sources):
        check_document(doc, src)
    labels = _labels(sources)
    merged_from, statuses = [], []
    for doc, label in zip(documents, labels):
        summary = recount_summary(doc)["summary"]
        if summary["exitstatus"] is not None:
            statuses.append(summary["exitstatus"])
        merged_from.append({
            "source": label,
            "settings": doc.get("settings") or {},
            "environment": doc.get("environment") or {},
            "summary": summary,
        })
    shards, notes = None, []
    if any(document_shard(doc) is not None for doc in documents):
        tests, shards, notes = merge_shard_documents(documents, labels)
    else:
        tests = _concatenate(documents, labels)
    out = results_document(
        tests,
        settings=documents[0].get("settings") or {},
        environment=documents[0].get("environment") or {},
        exitstatus=max(statuses) if statuses else None,
    )
    if shards is not None:
        out["shards"] = shards
    out["merge_notes"] = notes
    out["merged_from"] = merged_from
    return out
