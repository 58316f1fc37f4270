"""The self-contained HTML report of a results document (:mod:`cem_checks.records`, as ``--cem-json`` writes it).

:func:`render_report` turns the document into one HTML page: summary, a sortable and filterable table of the
properties (failures first), and per test its maps (heatmap and colour bar as base64 PNG data URIs, block counts,
settings) and properties (measured vs bound). No external resources: the page opens offline.

The Jinja2 templates live in the top-level ``templates/`` folder of the source tree, installed inside the wheel as
``cem_checks/templates/`` (see :func:`template_dir`). Autoescape is on and undefined names raise; all the logic is
here, the template only lays out the view model.
"""

from __future__ import annotations

import base64
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._io import atomic_write_text
from .heatmap import cell_size, colorbar_png, heatmap_png

TEMPLATE = "report.html.j2"

__all__ = ["TEMPLATE", "render_report", "report_context", "template_dir", "write_report"]


def template_dir() -> Path:
    """The folder of the report templates: ``cem_checks/templates`` in an installed wheel, else the top-level
    ``templates/`` of the source checkout (editable installs)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "templates", here.parents[1] / "templates"):
        if (candidate / TEMPLATE).is_file():
            return candidate
    raise FileNotFoundError(f"the report template {TEMPLATE} was found neither in {here.parent / 'templates'} "
                            f"nor in {here.parents[1] / 'templates'}")


def _environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    return Environment(loader=FileSystemLoader(str(template_dir())), autoescape=True, undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _num(v: Any, fmt: str = "{:.3g}", unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        return fmt.format(v) + unit
    return f"{v}{unit}"


def _anchor(index: int, nodeid: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", nodeid).strip("-")[:80]
    return f"t{index}-{slug}" if slug else f"t{index}"


def _map_view(m: dict, index: int) -> dict:
    s = m.get("settings") or {}
    effect = m.get("effect_db")
    bound = m.get("display_bound_db")
    heatmap = colorbar = None
    if effect and bound:
        heatmap = _data_uri(heatmap_png(effect, bound, m.get("roi_mask")))
        width = max(200, cell_size(len(effect), len(effect[0])) * len(effect[0]))
        colorbar = _data_uri(colorbar_png(bound, m.get("effect_min_db"), m.get("effect_max_db"), width))
    grid = m.get("grid") or ["?", "?"]
    settings = [
        ("task", s.get("task")),
        ("seed", s.get("seed")),
        ("mode", s.get("mode")),
        ("samples", f"coarse {s.get('coarse')}, fine {s.get('fine')}"),
        ("device", s.get("device")),
        ("block size", _num(s.get("block_size"), unit=" px")),
        ("ROI (top, left, size)", ", ".join(str(v) for v in s.get("roi") or []) or "n/a"),
        ("zero threshold", _num(s.get("tol_db"), unit=" dB")),
        ("forward passes", _num(m.get("forward_passes"))),
        ("time", _num(m.get("wall_s"), "{:.2f}", " s")),
        ("patch bank", ", ".join(f"{k} {v}" for k, v in sorted((m.get("patch_bank") or {}).items())) or "n/a"),
    ]
    return {
        "title": f"map {index + 1}: {m.get('model') or 'model'} ({grid[0]}x{grid[1]} blocks)",
        "model": str(m.get("model") or ""),
        "heatmap": heatmap,
        "colorbar": colorbar,
        "bound": _num(bound, "{:g}", " dB"),
        "counts": [
            ("positive", _num(m.get("positive_blocks"))),
            ("negative", _num(m.get("negative_blocks"))),
            ("zero", _num(m.get("zero_blocks"))),
        ],
        "numbers": [
            ("base ROI PSNR", _num(m.get("base_psnr_db"), "{:.2f}", " dB")),
            ("effect min", _num(m.get("effect_min_db"), "{:+.3g}", " dB")),
            ("effect max", _num(m.get("effect_max_db"), "{:+.3g}", " dB")),
            ("support radius", _num(m.get("support_radius_px"), unit=" px")),
        ],
        "settings": [(k, "n/a" if v is None else str(v)) for k, v in settings],
    }


def _property_view(p: dict, show_passing: bool) -> dict:
    passed = bool(p.get("passed"))
    return {
        "name": str(p.get("name")),
        "status": "passed" if passed else "failed",
        "open": (not passed) or show_passing,
        "measured": str(p.get("measured_text")),
        "bound": str(p.get("bound_text")),
        "description": str(p.get("description") or ""),
        "message": str(p.get("message") or ""),
        "model": str((p.get("settings") or {}).get("model") or ""),
    }


def report_context(document: dict, show_passing: bool = False) -> dict:
    """The view model of the report: everything the template shows, already computed and formatted."""
    tests_in = list(document.get("tests") or [])
    tests, rows = [], []
    models, devices = set(), set()
    passes, wall = 0, 0.0
    for i, t in enumerate(tests_in):
        nodeid = str(t.get("nodeid"))
        anchor = _anchor(i, nodeid)
        maps = list(t.get("maps") or [])
        for m in maps:
            models.add(str(m.get("model") or ""))
            devices.add(str((m.get("settings") or {}).get("device") or ""))
            passes += int(m.get("forward_passes") or 0)
            wall += float(m.get("wall_s") or 0.0)
        props = [_property_view(p, show_passing) for p in t.get("properties") or []]
        for p in props:
            rows.append({"nodeid": nodeid, "anchor": anchor, **p})
        n_failed = sum(p["status"] == "failed" for p in props)
        tests.append({
            "nodeid": nodeid,
            "anchor": anchor,
            "outcome": str(t.get("outcome")),
            "duration": _num(t.get("duration_s"), "{:.2f}", " s"),
            "message": str(t.get("message") or ""),
            "maps": [_map_view(m, k) for k, m in enumerate(maps)],
            "properties": [p for p in props if p["status"] == "failed"] + [p for p in props if p["status"] == "passed"],
            "n_failed": n_failed,
            "sort_key": (0 if n_failed or t.get("outcome") == "failed" else 1, nodeid),
        })
    tests.sort(key=lambda t: t["sort_key"])
    rows.sort(key=lambda r: (r["status"] != "failed", r["nodeid"], r["name"]))
    n_failed = sum(r["status"] == "failed" for r in rows)
    settings = document.get("settings") or {}
    env = document.get("environment") or {}
    summary = [
        ("tests", str(len(tests))),
        ("properties", f"{len(rows)}: {len(rows) - n_failed} passed, {n_failed} failed"),
        ("maps", str(sum(len(t["maps"]) for t in tests))),
        ("models", ", ".join(sorted(m for m in models if m)) or "none"),
        ("devices", ", ".join(sorted(d for d in devices if d)) or "none"),
        ("forward passes", str(passes)),
        ("map time", f"{wall:.2f} s"),
        ("session seed / mode", f"{settings.get('seed')} / {settings.get('mode')}"),
        ("versions", ", ".join(f"{k} {v}" for k, v in sorted(env.items()) if v) or "n/a"),
    ]
    return {
        "title": "pytest-cem report",
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "verdict": "failed" if n_failed else "passed",
        "verdict_text": f"{n_failed} failed propert{'y' if n_failed == 1 else 'ies'}" if n_failed else "all properties passed",
        "summary": summary,
        "rows": rows,
        "tests": tests,
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
