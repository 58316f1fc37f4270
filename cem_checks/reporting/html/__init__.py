"""The self-contained HTML report of a results document (:mod:`cem_checks.records`, as ``--cem-json`` writes it).

:func:`render_report` turns the document into one HTML page. Its first screen says what failed, where and why
(:mod:`.first_screen`): per failed property a card with the measured value against the bound, the property's note,
a one-line hint on how to act (:mod:`cem_checks.reporting.hints`) and a thumbnail of the map of its run (support
or effect panel) with the offending blocks outlined, linking to the failure; then the properties that passed with
a note. Then the summary, a sortable and filterable table of the properties (failures first), and per test its
maps and properties (measured vs bound). Per map (:mod:`.maps`): the degraded model input and the model output
with the ROI box, the effect map over the input and per block with a colour bar (base64 PNG data URIs), the
effect-vs-distance chart (:mod:`.charts`, inline SVG; per distance min/mean/max when a map has more than
:data:`MAX_CHART_POINTS` blocks outside the ROI, so the page grows with the distances, not the blocks), the
uncertainty summary with a stderr map, block counts and settings. Per sweep (:mod:`.sweeps`; ``sweeps`` of a test,
:func:`cem_checks.records.sweep_record`): the distribution of each metric its assertions used (an SVG histogram,
:func:`histogram_chart`, with the bounds and the statistics), the assertions (statistic, interval, bound, worst
items), a sortable per-item table (image, ROI box, texture energy, the metric columns; worst items marked) and the
map views of the worst items. No external resources and no script library: the page opens offline. Maps recorded
by older versions, without images, distances or stderr, render with a note in place of what they lack.

Each test's section starts with its failed properties, expanded (:mod:`.properties`): the measured value, the
bound, the note, the hint, the offending blocks as input-px boxes ``(x, y, w, h)`` with their distance and, when
the result estimated them, their effect and CI (the table has the columns the result has), how to list every
block of the result, and the full message. The offending blocks are outlined on the panels of the test's maps of
the same run (model, task, ROI, block size, scale and seed): elements with ``data-cem-offending="x,y,w,h"`` (input
px) positioned over the support panel, the heatmap and the overlay. A property's note (a string, e.g. why a result
is vacuous) is shown next to its verdict in a warning style; records without one (older files) or with null are
fine. Every test of the results appears in the summary's counts (as pytest's summary line counts them,
:func:`cem_checks.records.outcome_counts`); tests without maps, properties or a failure are listed in one table. A
failed property of a test that pytest counted as an expected failure (xfail) is labelled "xfailed", apart from the
failures, and counted so (:mod:`cem_checks.reporting.counts`, as the terminal does).

The Jinja2 templates live in the top-level ``templates/`` folder of the source tree, installed inside the wheel as
``cem_checks/templates/`` (see :func:`template_dir`). Autoescape is on and undefined names raise; all the logic is
in this package (:mod:`.document` builds the view model), the template only lays out the view model.
"""

from __future__ import annotations

from ..counts import PROPERTY_STATUS
from .base import RUN_KEYS, section_anchor
from .charts import AXIS_LIMIT, CHART, CHART_COLOURS, MAX_CHART_POINTS, nice_ticks, profile_chart
from .document import TEMPLATE, render_report, report_context, template_dir, write_report
from .first_screen import FIRST_SCREEN_CARDS, THUMBNAIL_PX
from .maps import panel_pngs
from .properties import BLOCK_COLUMNS, failure_hint, offending_boxes, property_note
from .sweeps import HISTOGRAM, MAX_BINS, SWEEP_COLUMN_LABELS, SWEEP_DEFAULT_METRIC, histogram_chart

__all__ = ["AXIS_LIMIT", "BLOCK_COLUMNS", "CHART", "CHART_COLOURS", "FIRST_SCREEN_CARDS", "HISTOGRAM", "MAX_BINS",
           "MAX_CHART_POINTS", "PROPERTY_STATUS", "RUN_KEYS", "SWEEP_COLUMN_LABELS", "SWEEP_DEFAULT_METRIC", "TEMPLATE",
           "THUMBNAIL_PX", "failure_hint", "histogram_chart", "nice_ticks", "offending_boxes", "panel_pngs",
           "profile_chart", "property_note", "render_report", "report_context", "section_anchor", "template_dir",
           "write_report"]
