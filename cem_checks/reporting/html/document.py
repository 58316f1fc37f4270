"""The report of a results document: the view model of the page (:func:`report_context`), rendered with
the Jinja2 template (:func:`render_report`, :func:`write_report`).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from ..._io import atomic_write_text
from ..counts import properties_text, property_status
from .base import _num, section_anchor
from .first_screen import failure_card, first_screen
from .maps import _map_view
from .properties import _property_view, _run_of, offending_boxes
from .sweeps import _sweep_view

TEMPLATE = "report.html.j2"


def template_dir() -> Path:
    """The folder of the report templates: ``cem_checks/templates`` in an installed wheel, else the top-level
    ``templates/`` of the source checkout (editable installs)."""
    package = Path(__file__).resolve().parents[2]  # cem_checks/
    wheel, source = package / "templates", package.parent / "templates"
    for candidate in (wheel, source):
        if (candidate / TEMPLATE).is_file():
            return candidate
    raise FileNotFoundError(f"the report template {TEMPLATE} was found neither in {wheel} nor in {source}")


def _environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    return Environment(loader=FileSystemLoader(str(template_dir())), autoescape=True, undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 or word != "error" else f"{n} errors"


def _tests_text(counts: dict[str, int], n_tests: int) -> str:
    """``"6: 2 passed, 1 failed, 1 error, 1 skipped, 1 xfailed"``: passed, failed and skipped always, the other
    outcomes when some test had them (pytest's words)."""
    from ...records import OUTCOMES  # records imports this package: imported when called

    always = ("passed", "failed", "skipped")
    parts = [_plural(counts.get(k, 0), k) for k in OUTCOMES if k in always or counts.get(k)]
    parts += [f"{v} {k}" for k, v in sorted(counts.items()) if k not in OUTCOMES and v]
    return f"{n_tests}: {', '.join(parts)}"


def _badges(n_failed: int, n_expected: int, counts: dict[str, int]) -> list[dict]:
    """The verdict badges: failed properties (red), expected failures (orange, a failed property of an xfailed
    test), failed tests and errors (red), or one green badge when nothing failed."""
    out = []
    if n_failed:
        out.append({"kind": "failed", "text": f"{n_failed} failed propert{'y' if n_failed == 1 else 'ies'}"})
    if n_expected:
        plural = "" if n_expected == 1 else "s"
        out.append({"kind": "xfailed", "text": f"{n_expected} expected failure{plural} (xfail)"})
    bad = [_plural(counts[k], k) for k in ("failed", "error") if counts.get(k)]
    if bad:
        out.append({"kind": "failed", "text": "tests: " + ", ".join(bad)})
    if not n_failed and not bad:
        out.insert(0, {"kind": "passed", "text": "all properties passed"})
    return out


def _test_view(t: dict, show_passing: bool) -> tuple[dict, list[dict]]:
    """The section of test record ``t`` and its rows of the property table."""
    outcome = str(t.get("outcome"))
    nodeid = str(t.get("nodeid"))
    anchor = section_anchor(nodeid)
    maps = [m for m in t.get("maps") or [] if isinstance(m, dict)]
    props = [p for p in t.get("properties") or [] if isinstance(p, dict)]
    sweeps = [w for w in t.get("sweeps") or [] if isinstance(w, dict)]
    merged = t.get("merged_sweeps_into") if isinstance(t.get("merged_sweeps_into"), list) else []
    boxes = offending_boxes(maps, props)
    map_views = [_map_view(m, k, boxes[k]) for k, m in enumerate(maps)]
    failures, passes, rows, cards = [], [], [], []
    for k, p in enumerate(props):
        status, run = property_status(p, outcome), _run_of(maps, p)
        view = dict(_property_view(p, show_passing, status, run), anchor=f"{anchor}-p{k + 1}")
        (passes if status == "passed" else failures).append(view)
        rows.append({"nodeid": nodeid, **view, "anchor": anchor})
        if status != "passed":
            cards.append(failure_card(p, view, {"nodeid": nodeid, "anchor": anchor}, maps, map_views, run))
    message = str(t.get("message") or "")
    teardown = t.get("teardown_error")
    if teardown is not None:
        message = (message + "\n\n" if message else "") + f"error at teardown:\n{teardown}"
    view = {
        "nodeid": nodeid,
        "anchor": anchor,
        "outcome": outcome,
        "duration": _num(t.get("duration_s"), "{:.2f}", " s"),
        "message": message,
        "message_open": outcome in ("failed", "error") and not failures or teardown is not None,
        "maps": map_views,
        "sweeps": [_sweep_view(w, k, anchor) for k, w in enumerate(sweeps)],
        "merged_note": (f"the sweep shards of this test are merged into the sweep of {', '.join(map(str, merged))}"
                        if merged else ""),
        "failures": failures,
        "properties": passes,
        "cards": cards,
        "n_failed": sum(f["status"] == "failed" for f in failures),
        "n_expected": sum(f["status"] == "xfailed" for f in failures),
        "sort_key": (0 if any(f["status"] == "failed" for f in failures) or outcome in ("failed", "error") else
                     1 if failures else 2, nodeid),
        "section": (bool(maps or sweeps or failures or passes) or outcome in ("failed", "error")
                    or teardown is not None),
    }
    return view, rows


def report_context(document: dict, show_passing: bool = False) -> dict:
    """The view model of the report: everything the template shows, already computed and formatted."""
    from ...records import outcome_counts  # records imports this package: imported when called

    tests_in = [t for t in document.get("tests") or [] if isinstance(t, dict)]
    tests, rows = [], []
    models, devices = set(), set()
    passes, wall, duration = 0, 0.0, 0.0
    for t in tests_in:
        try:
            duration += float(t.get("duration_s") or 0.0)
        except (TypeError, ValueError):
            pass
        for m in t.get("maps") or []:
            models.add(str(m.get("model") or ""))
            devices.add(str((m.get("settings") or {}).get("device") or ""))
            passes += int(m.get("forward_passes") or 0)
            wall += float(m.get("wall_s") or 0.0)
        view, prop_rows = _test_view(t, show_passing)
        tests.append(view)
        rows += prop_rows
    tests.sort(key=lambda t: t["sort_key"])
    sweeps = [w for t in tests for w in t["sweeps"]]
    order = {"failed": 0, "xfailed": 1, "passed": 2}
    rows.sort(key=lambda r: (order[r["status"]], r["nodeid"], r["name"]))
    n_failed = sum(r["status"] == "failed" for r in rows)
    n_expected = sum(r["status"] == "xfailed" for r in rows)
    counts = outcome_counts(tests_in)
    settings = document.get("settings") or {}
    env = document.get("environment") or {}
    summary = [
        ("tests", _tests_text(counts, len(tests_in))),
        ("properties", f"{len(rows)}: {properties_text(r['status'] for r in rows)}"),
        ("maps", str(sum(len(t["maps"]) for t in tests))),
        *([("sweeps", f"{len(sweeps)}: {sum(len(w['rows']) for w in sweeps)} items, "
                      f"{sum(len(w['maps']) for w in sweeps)} maps of worst items")] if sweeps else []),
        ("models", ", ".join(sorted(m for m in models if m)) or "none"),
        ("devices", ", ".join(sorted(d for d in devices if d)) or "none"),
        ("forward passes", str(passes)),
        ("map time", f"{wall:.2f} s"),
        ("total test time", f"{duration:.2f} s"),
        ("session seed / mode", f"{settings.get('seed')} / {settings.get('mode')}"),
        ("versions", ", ".join(f"{k} {v}" for k, v in sorted(env.items()) if v) or "n/a"),
    ]
    others = [{"nodeid": t["nodeid"], "outcome": t["outcome"], "duration": t["duration"],
               "reason": t["message"].strip().splitlines()[-1] if t["message"].strip() else ""}
              for t in tests if not t["section"]]
    sections = [t for t in tests if t["section"]]
    return {
        "title": "pytest-cem report",
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "badges": _badges(n_failed, n_expected, counts),
        "first": first_screen(sections),
        "summary": summary,
        "rows": rows,
        "tests": sections,
        "other_tests": others,
        "show_passing": bool(show_passing),
    }


def render_report(document: dict, show_passing: bool = False) -> str:
    """The HTML report of ``document`` (a results document); passing properties are collapsed unless
    ``show_passing``."""
    if not isinstance(document, dict):
        raise TypeError(f"expected a results document (dict), got {type(document).__name__}")
    return _environment().get_template(TEMPLATE).render(**report_context(document, show_passing))


def write_report(document: dict, path: str | os.PathLike, show_passing: bool = False) -> str:
    """Render ``document`` and write it to ``path`` atomically (temporary file, then rename); returns the path."""
    return str(atomic_write_text(path, render_report(document, show_passing)))
