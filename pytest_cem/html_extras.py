"""The map panels of a test as pytest-html extras (optional: only when pytest-html is installed and ``--html`` is
given; pytest-cem does not depend on it).

For a test with maps, :func:`add_extras` appends to ``report.extras`` (pytest-html's documented API,
``pytest_html.extras``): per map the panels of :func:`cem_checks.reporting.html.panel_pngs` (the effect over the
input, the effect per block, the support) with the offending blocks of the failed properties outlined, each padded
to the aspect ratio of pytest-html's media viewer (:data:`MEDIA_ASPECT`) so that the viewer shows it whole; a short
HTML note per failed property (measured, bound, the property's note, the hint); and, with ``--cem-report``, a link
to the test's section of the cem report (relative to the pytest-html report's folder).
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

import pytest

from .session import BASE_SETTINGS_KEY, ItemRecords, html_report_path

__all__ = ["MEDIA_ASPECT", "add_extras", "report_link"]

#: The least width / height of the panels given to pytest-html. Its media viewer draws an image 100% wide in a frame
#: 200 px tall (270 px wide: 320 px less its two 25 px arrows) and crops what does not fit (``object-fit: cover``):
#: a square panel lost its top and bottom rows. Panels at least 270/200 = 1.35 times as wide as tall are shown
#: whole; 320/200 (the viewer's outer frame) keeps a margin.
MEDIA_ASPECT = 320 / 200


def report_link(config: pytest.Config, nodeid: str) -> str | None:
    """The URL of ``nodeid``'s section in the cem report (``--cem-report``), relative to the folder of the
    pytest-html report; None without a cem report."""
    from cem_checks.reporting.html import section_anchor

    cem_report = config.stash[BASE_SETTINGS_KEY].report
    html_path = html_report_path(config)
    if cem_report is None or html_path is None:
        return None
    folder = Path(os.path.abspath(os.path.expanduser(os.path.expandvars(html_path)))).parent
    rel = Path(os.path.relpath(cem_report, folder)).as_posix()
    return f"{rel}#{section_anchor(nodeid)}"


def add_extras(item: pytest.Item, report: Any, rec: ItemRecords) -> None:
    """Append the map panels, failure notes and report link of ``rec`` (the test's records) to ``report.extras``;
    nothing when pytest-html is not installed."""
    try:
        from pytest_html import extras
    except ImportError:
        return
    from cem_checks.reporting.html import failure_hint, offending_boxes, panel_pngs, property_note

    out = list(getattr(report, "extras", None) or [])
    for p in rec.properties:
        if p.get("passed"):
            continue
        note = property_note(p)
        text = (f"<p><b>{html.escape(str(p.get('name')))}</b> failed: measured "
                f"{html.escape(str(p.get('measured_text')))}; bound {html.escape(str(p.get('bound_text')))}. "
                + (f"<i>note: {html.escape(note)}</i> " if note else "")
                + f"{html.escape(failure_hint(rec.maps, p))}</p>")
        out.append(extras.html(text))
    boxes = offending_boxes(rec.maps, rec.properties)
    for k, (m, mine) in enumerate(zip(rec.maps, boxes)):
        prefix = f"map {k + 1}" if len(rec.maps) > 1 else "cem"
        for name, png in panel_pngs(m, mine, MEDIA_ASPECT):
            out.append(extras.png(base64.b64encode(png).decode("ascii"), name=f"{prefix}: {name}"))
    link = report_link(item.config, item.nodeid)
    if link is not None:
        out.append(extras.url(link, name="cem report"))
    report.extras = out
