"""Reporting: heatmaps of effect maps (:mod:`.heatmap`), the model input and output images of a map
(:mod:`.images`) and the self-contained HTML report (:mod:`.html`).

Imports no pytest; works from the JSON records alone (:mod:`cem_checks.records`).
"""

from __future__ import annotations

from .heatmap import colorbar_png, display_values, heatmap_png, seismic
from .html import render_report, template_dir, write_report
from .images import DEFAULT_MAX_IMAGE_PX, boxed_image, embed_image, overlay_image

__all__ = ["DEFAULT_MAX_IMAGE_PX", "boxed_image", "colorbar_png", "display_values", "embed_image", "heatmap_png",
           "overlay_image", "render_report", "seismic", "template_dir", "write_report"]
