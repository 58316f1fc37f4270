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

:func:`record_test` and :func:`results_document` build the same structure outside pytest (the ``cem run``
command); :func:`load_document` reads and validates a results file, :func:`write_document` writes one, and
:func:`merge_documents` joins several (shards of one run on different machines) into one document.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import metrics as M
from ._io import atomic_write_text
from .checks import PropertyOutcome, _fmt, run_settings
from .errors import CEMInputError, ResultsFileError
from .result import CEMResult, _json_safe
from .tasks import parse_task

RESULTS_FORMAT = "pytest-cem-results"
RESULTS_FORMAT_VERSION = 1

#: Decimals of the per-block effects kept in a map summary (0.1 mdB: far below the 0.01 dB zero threshold).
EFFECT_DECIMALS = 4

__all__ = [
    "RESULTS_FORMAT",
    "RESULTS_FORMAT_VERSION",
    "check_document",
    "load_document",
    "map_summary",
    "merge_documents",
    "property_line",
    "property_record",
    "record_test",
    "results_document",
    "summarize",
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


# ------------------------------------------------------------------------------------------ results documents
def record_test(nodeid: str, *, outcome: str, duration_s: float = 0.0, maps: Sequence[dict] = (),
                properties: Sequence[dict] = (), message: str | None = None) -> dict[str, Any]:
    """One entry of a document's ``tests``: ``maps`` are :func:`map_summary` dicts, ``properties``
    :func:`property_record` dicts; ``message`` (failure text or skip reason) is kept when given."""
    if outcome not in ("passed", "failed", "skipped"):
        raise CEMInputError(f"outcome={outcome!r} must be 'passed', 'failed' or 'skipped'.")
    entry: dict[str, Any] = {
        "nodeid": str(nodeid),
        "outcome": outcome,
        "duration_s": float(duration_s),
        "maps": list(maps),
        "properties": list(properties),
    }
    if message is not None:
        entry["message"] = str(message)
    return entry


def summarize(tests: Sequence[dict], exitstatus: int | None = None) -> dict[str, Any]:
    """The ``summary`` of a document holding ``tests``: counts of tests, maps, properties and failed properties."""
    return {
        "tests": len(tests),
        "maps": sum(len(t.get("maps") or []) for t in tests),
        "properties": sum(len(t.get("properties") or []) for t in tests),
        "failed_properties": sum(not p.get("passed") for t in tests for p in t.get("properties") or []),
        "exitstatus": exitstatus,
    }


def _environment() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    def ver(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    return {"pytest_cem": ver("pytest-cem"), "torch": ver("torch")}


def results_document(tests: Sequence[dict], *, settings: dict | None = None, environment: dict | None = None,
                     exitstatus: int | None = None) -> dict[str, Any]:
    """A results document (the format of the module docstring) of ``tests`` (:func:`record_test` entries);
    ``environment`` defaults to the installed pytest-cem and torch versions."""
    tests = list(tests)
    return {
        "format": RESULTS_FORMAT,
        "format_version": RESULTS_FORMAT_VERSION,
        "environment": dict(environment) if environment is not None else _environment(),
        "settings": _json_safe(dict(settings or {})),
        "summary": summarize(tests, exitstatus),
        "tests": tests,
    }


def check_document(document: Any, source: str = "the document") -> dict[str, Any]:
    """``document`` if it is a results document of this format version; else :class:`ResultsFileError` naming
    ``source``."""
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


def merge_documents(documents: Sequence[dict], sources: Sequence[str] | None = None) -> dict[str, Any]:
    """One results document holding every test of ``documents`` (e.g. the shards of a CI matrix), in order.

    Each test keeps its maps and properties and gains ``source`` (the file name of its document, or the full
    ``sources`` entry when two names coincide). A node id present in more than one document is kept from each
    and labelled with its source: ``"<nodeid> [<source>]"``. The summary is recomputed (``exitstatus``: the
    largest of the documents', None when none has one); ``settings`` and ``environment`` are the first
    document's, and ``merged_from`` lists each source with its settings, environment and summary.

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
    seen: dict[str, int] = {}
    for doc in documents:
        for nodeid in {str(t["nodeid"]) for t in doc["tests"]}:
            seen[nodeid] = seen.get(nodeid, 0) + 1
    tests, merged_from, statuses = [], [], []
    for doc, label in zip(documents, labels):
        for t in doc["tests"]:
            entry = dict(t)
            entry["source"] = label
            if seen[str(t["nodeid"])] > 1:
                entry["nodeid"] = f"{t['nodeid']} [{label}]"
            tests.append(entry)
        status = (doc.get("summary") or {}).get("exitstatus")
        if isinstance(status, int):
            statuses.append(status)
        merged_from.append({
            "source": label,
            "settings": doc.get("settings") or {},
            "environment": doc.get("environment") or {},
            "summary": doc.get("summary") or {},
        })
    out = results_document(
        tests,
        settings=documents[0].get("settings") or {},
        environment=documents[0].get("environment") or {},
        exitstatus=max(statuses) if statuses else None,
    )
    out["merged_from"] = merged_from
    return out
