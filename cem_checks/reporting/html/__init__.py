"""The self-contained HTML report of a results document (:mod:`cem_checks.records`, as ``--cem-json`` writes it).

:func:`render_report` turns the document into one HTML page: summary, a sortable and filterable table of the
properties (failures first), and per test its maps and properties (measured vs bound). Per map: the degraded model
input and the model output with the ROI box, the effect map over the input and per block with a colour bar (base64
PNG data URIs), the effect-vs-distance chart (inline SVG; per distance min/mean/max when a map has more than
:data:`MAX_CHART_POINTS` blocks outside the ROI, so the page grows with the distances, not the blocks), the
uncertainty summary with a stderr map, block counts
and settings. Per sweep (``sweeps`` of a test, :func:`cem_checks.records.sweep_record`): the distribution of each
metric its assertions used (an SVG histogram, :func:`histogram_chart`, with the bounds and the statistics), the
assertions (statistic, interval, bound, worst items), a sortable per-item table (image, ROI box, texture energy,
the metric columns; worst items marked) and the map views of the worst items. No external resources and no script library: the page opens offline. Maps recorded by older
versions, without images, distances or stderr, render with a note in place of what they lack.

Each test's section starts with its failed properties, expanded: the measured value, the bound, a one-line hint on
how to act (:mod:`cem_checks.reporting.hints`), the offending blocks as input-px boxes ``(x, y, w, h)`` with their
effect, CI and distance, and the full message. The offending blocks are outlined on the panels of the test's maps
of the same run (model, task, ROI, block size, scale and seed): elements with ``data-cem-offending="x,y,w,h"``
(input px) positioned over the support panel, the heatmap and the overlay. Every test of the results appears in
the summary's counts (as pytest's summary line counts them, :func:`cem_checks.records.outcome_counts`); tests
without maps, properties or a failure are listed in one table. A failed property of a test that pytest counted as
an expected failure (xfail) is labelled "xfailed", apart from the failures.

The Jinja2 templates live in the top-level ``templates/`` folder of the source tree, installed inside the wheel as
``cem_checks/templates/`` (see :func:`template_dir`). Autoescape is on and undefined names raise; all the logic is
here, the template only lays out the view model.
"""

from __future__ import annotations

from .base import RUN_KEYS, section_anchor
from .charts import AXIS_LIMIT, CHART, CHART_COLOURS, MAX_CHART_POINTS, nice_ticks, profile_chart
from .document import TEMPLATE, render_report, report_context, template_dir, write_report
from .maps import panel_pngs
from .properties import PROPERTY_STATUS, offending_boxes
from .sweeps import HISTOGRAM, MAX_BINS, SWEEP_COLUMN_LABELS, SWEEP_DEFAULT_METRIC, histogram_chart

__all__ = ["AXIS_LIMIT", "CHART", "CHART_COLOURS", "HISTOGRAM", "MAX_BINS", "MAX_CHART_POINTS", "PROPERTY_STATUS", "RUN_KEYS",
           "SWEEP_COLUMN_LABELS", "SWEEP_DEFAULT_METRIC", "TEMPLATE", "histogram_chart", "nice_ticks",
           "offending_boxes", "panel_pngs", "profile_chart", "render_report", "report_context", "section_anchor",
           "template_dir", "write_report"]
