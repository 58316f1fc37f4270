"""Reporting: heatmaps of effect maps (:mod:`.heatmap`) and the self-contained HTML report (:mod:`.html`).

Imports no pytest; works from the JSON records alone (:mod:`cem_checks.records`).
"""

from __future__ import annotations

from .heatmap import colorbar_png, display_values, heatmap_png, seismic
from .html import render_report, template_dir, write_report

__all__ = ["colorbar_png", "display_values", "heatmap_png", "render_report", "seismic", "template_dir", "write_report"]
