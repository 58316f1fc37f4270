"""Merging the results files of the shards of one pytest run (``pytest --cem-shard K/N --cem-json shard-K.json`` on
each machine) into the results of the whole run: what :func:`cem_checks.records.merge_documents` does with
documents whose ``settings.shard`` is ``[K, N]``.

Rules (a broken one raises :class:`~cem_checks.errors.ResultsFileError` naming the field, what ``cem report merge``
reports with exit code 2):

- every document is a shard (``settings.shard`` ``[K, N]``), all of one N, each K once (the same shard twice
  would count its tests twice);
- the shards share the settings their maps and their split depend on (:data:`SHARD_SETTINGS`: ``seed``, ``mode``,
  ``patches``, ``shard_by``, ``shard_scope``);
- missing shards are allowed and listed (``shards.missing``, and a note): a lone ``0/2`` merges into the half it
  holds, saying that ``1/2`` is missing;
- a test present in several shards (a ``cem_sweep`` test runs on every shard, each computing its part) becomes one
  entry (a test with sweeps in one shard only too, its sweeps then marked incomplete): its sweeps merged (:func:`cem_checks.records.merge_sweeps`: the whole table and aggregates; shards of
  two different sweeps, e.g. another model id or split, are refused naming the field), the assertions over each
  sweep recomputed over the whole sweep from the per-item values each shard recorded (the same bootstrap, the same
  numbers as an unsharded run; the shards' own verdicts stay in the sweep record's ``shard_assertions``), its other
  maps and properties those of its first shard (every shard computed them alike), its outcome the worst of its
  shards', its duration their sum;
- a sweep of a plain callable without ``cache_key`` has no model id (``settings.model_id`` null): its shards cannot
  be shown to come from one model, and the merge says so in a note.

So the merge of all the shards of a session has the unsharded run's counts: tests, outcomes, maps and properties.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from .errors import ResultsFileError, describe_value

#: The session settings the shards of one run share (besides N): what their maps and their split depend on.
SHARD_SETTINGS = ("seed", "mode", "patches", "shard_by", "shard_scope")
#: Test outcomes from the worst to the best: a test merged from several shards has the worst of theirs.
OUTCOME_ORDER = ("error", "failed", "xpassed", "passed", "xfailed", "skipped")


def document_shard(document: dict) -> tuple[int, int] | None:
    """``(K, N)`` of a results document written by ``pytest --cem-shard K/N``, None for any other."""
    shard = (document.get("settings") or {}).get("shard")
    if isinstance(shard, list) and len(shard) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in shard):
        return int(shard[0]), int(shard[1])
    return None


def check_shards(documents: Sequence[dict], labels: Sequence[str]) -> dict[str, Any]:
    """``{"n", "merged", "missing", "complete"}`` of documents that are shards of one run; else
    :class:`ResultsFileError` naming the two files and the field."""
    shards = [document_shard(d) for d in documents]
    for label, shard in zip(labels, shards):
        if shard is None:
            first = next(lab for lab, s in zip(labels, shards) if s is not None)
            raise ResultsFileError(
                f"{first} is a shard of a pytest --cem-shard run but {label} is not (settings.shard is null); merge "
                "the shards of one run, or merge whole runs without their shards.")
    (k0, n0), label0 = shards[0], labels[0]
    settings0 = documents[0].get("settings") or {}
    seen: dict[int, str] = {}
    for label, (k, n), doc in zip(labels, shards, documents):
        if n != n0:
            raise ResultsFileError(
                f"{label0} is shard {k0}/{n0} but {label} is shard {k}/{n} (settings.shard): shards of different "
                "splits do not add up; merge the K/N files of one split.")
        if k in seen:
            raise ResultsFileError(
                f"{seen[k]} and {label} are both shard {k}/{n} (settings.shard): its tests would count twice; pass "
                "each shard's results file once.")
        seen[k] = label
        settings = doc.get("settings") or {}
        for key in SHARD_SETTINGS:
            if settings.get(key) != settings0.get(key):
                raise ResultsFileError(
                    f"{label0} and {label} differ in settings.{key} ({describe_value(settings0.get(key))} vs "
                    f"{describe_value(settings.get(key))}): the shards of one run share their settings; rerun the odd "
                    "shard with the others' settings.")
    merged = sorted(seen)
    missing = [k for k in range(n0) if k not in seen]
    return {"n": n0, "merged": merged, "missing": missing, "complete": not missing}


def _worst(outcomes: Sequence[str]) -> str:
    return min(outcomes, key=lambda o: OUTCOME_ORDER.index(o) if o in OUTCOME_ORDER else -1)


def _recomputed(merged: dict, records: list[dict]) -> list[dict] | None:
    """The assertions of the shards of one sweep recomputed over the merged sweep ``merged`` from each shard's
    per-item values (:func:`cem_checks.sweeps.assertions.outcome_of_values`), as property records; None when the
    shards did not make the same assertions or lack the values."""
    from .records import over_record
    from .sweeps.assertions import outcome_of_values

    lists = [r.get("assertions") or [] for r in records]
    if not lists[0] or any(len(a) != len(lists[0]) for a in lists):
        return None
    same = ("name", "metric", "params", "statistic", "op", "bound", "confidence", "n_boot", "seed", "decision")
    settings = {k: v for k, v in (merged.get("settings") or {}).items() if k not in ("images", "execution")}
    settings["shard"] = None
    out = []
    for group in zip(*lists):
        first = group[0]
        if any(any(a.get(k) != first.get(k) for k in same) for a in group):
            return None
        rows = []
        for record, a in zip(records, group):
            items, values = record.get("items") or [], a.get("values")
            if not isinstance(values, list) or len(values) != len(items):
                return None
            rows += [(row.get("index"), v, row) for row, v in zip(items, values)]
        rows.sort(key=lambda t: t[0])
        values = [math.nan if v is None else float(v) for _, v, _ in rows]
        labels = [(str(row.get("image")), (row.get("x"), row.get("y"), row.get("size"))) for _, _, row in rows]
        op, bound = first.get("op"), first.get("bound")
        at_most = bound[1] if op == "between" else bound if op == "<=" else None
        at_least = bound[0] if op == "between" else bound if op == ">=" else None
        outcome = outcome_of_values(
            values, labels, metric=first["metric"], unit=first.get("unit") or "", settings=settings,
            name=first["name"], statistic=first["statistic"], at_most=at_most, at_least=at_least,
            confidence=first["confidence"], n_boot=first["n_boot"], seed=first["seed"], decision=first["decision"],
            params=dict(first.get("params") or {}))
        out.append(over_record(outcome, sweep=first.get("sweep")))
    return out


def _merge_sweeps_of(nodeid: str, parts: list[tuple[str, dict]], notes: list[str]) -> tuple[list, dict]:
    """The merged sweep records of test ``nodeid`` from its entries in several shards (``parts``: (label, entry)),
    and the recomputed assertions per sweep position; refused when its shards hold different sweeps."""
    from .records import merge_sweeps, sweep_difference

    with_sweeps = [(label, t["sweeps"]) for label, t in parts if t.get("sweeps")]
    if not with_sweeps:
        return [], {}
    counts = {len(s) for _, s in with_sweeps}
    if len(counts) > 1:
        shown = ", ".join(f"{label}: {len(s)}" for label, s in with_sweeps)
        raise ResultsFileError(f"test {nodeid!r} ran a different number of sweeps on its shards ({shown}); its shards "
                               "come from different versions of the test.")
    merged_list, recomputed = [], {}
    for k in range(counts.pop()):
        labels = [label for label, _ in with_sweeps]
        records = [s[k] for _, s in with_sweeps]
        for label, r in zip(labels[1:], records[1:]):
            diff = sweep_difference(records[0], r)
            if diff is not None:
                raise ResultsFileError(
                    f"test {nodeid!r}, sweep {k + 1}: {labels[0]} and {label} differ in {diff}, so they are not shards "
                    "of one sweep; merge the shards of one run of one model.")
        if all(r.get("shard") is None for r in records):
            merged_list.append(records[0])  # the whole sweep on every shard (the call gave shard=None): one copy
            continue
        merged = merge_sweeps(records, labels)
        again = _recomputed(merged, records)
        if again is not None:
            merged["shard_assertions"] = merged["assertions"]
            merged["assertions"] = again
            recomputed[k] = again
        if (merged.get("settings") or {}).get("model_id") is None:
            notes.append(f"test {nodeid!r}, sweep {k + 1}: its model {merged.get('model')!r} is a plain callable without "
                         "cache_key, so the merge cannot check that every shard ran the same model; pass "
                         "cache_key='<name-and-version>' to cem_sweep(...) to have it checked.")
        merged_list.append(merged)
    return merged_list, recomputed


def _merge_entries(nodeid: str, parts: list[tuple[str, tuple[int, int], dict]], notes: list[str]) -> dict:
    """One test entry from its entries in several shards (see the module docstring)."""
    entries = [t for _, _, t in parts]
    sweeps, recomputed = _merge_sweeps_of(nodeid, [(label, t) for label, _, t in parts], notes)
    base = next((t for t in entries if t.get("sweeps")), entries[0])
    properties, position = [], {}
    for p in base.get("properties") or []:
        k = p.get("sweep") if p.get("kind") == "sweep" else None
        if k in recomputed:
            j = position.get(k, 0)
            position[k] = j + 1
            p = recomputed[k][j] if j < len(recomputed[k]) else p
        properties.append(p)
    messages = [(label, t.get("message")) for label, _, t in parts if t.get("message")]
    entry = dict(base)
    entry.update({
        "nodeid": nodeid,
        "outcome": _worst([str(t.get("outcome")) for t in entries]),
        "duration_s": float(sum(float(t.get("duration_s") or 0.0) for t in entries)),
        "maps": list(base.get("maps") or []),
        "properties": properties,
        "source": parts[0][0],
        "merged_shards": [list(shard) for _, shard, _ in parts],
    })
    if sweeps:
        entry["sweeps"] = sweeps
    if messages:
        entry["message"] = messages[0][1] if len({m for _, m in messages}) == 1 else \
            "\n".join(f"[{label}] {m}" for label, m in messages)
    return entry


def merge_shard_documents(documents: Sequence[dict], labels: Sequence[str]) -> tuple[list[dict], dict, list[str]]:
    """``(tests, shards, notes)``: the test entries of the shards ``documents`` (checked by :func:`check_shards`)
    merged by node id, in node id order; the shards' ``{"n", "merged", "missing", "complete"}``; and the notes
    the merge has for the reader (missing shards, sweeps whose model could not be checked)."""
    shards_info = check_shards(documents, labels)
    notes: list[str] = []
    n = shards_info["n"]
    if shards_info["missing"]:
        missing = shards_info["missing"]
        notes.append(f"the results files hold shard{'s' if len(shards_info['merged']) > 1 else ''} "
                     f"{', '.join(f'{k}/{n}' for k in shards_info['merged'])} of {n}; "
                     f"{'shards' if len(missing) > 1 else 'shard'} {', '.join(f'{k}/{n}' for k in missing)} "
                     f"{'are' if len(missing) > 1 else 'is'} missing: their tests and sweep items are not in this "
                     "report.")
    order = sorted(range(len(documents)), key=lambda i: document_shard(documents[i])[0])
    by_id: dict[str, list] = {}
    for i in order:
        for t in documents[i]["tests"]:
            by_id.setdefault(str(t["nodeid"]), []).append((labels[i], document_shard(documents[i]), t))
    tests = []
    for nodeid in sorted(by_id):
        parts = by_id[nodeid]
        if len(parts) == 1 and not parts[0][2].get("sweeps"):
            label, _, t = parts[0]
            tests.append(dict(t, source=label))
        else:
            tests.append(_merge_entries(nodeid, parts, notes))
    return tests, shards_info, notes
