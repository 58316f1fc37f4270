"""pytest-html integration (optional): with pytest-html installed and --html given, each test with maps gets its map
panels (offending blocks of failed properties outlined), a note per failed property and a link to its section of
the cem report as pytest-html extras. Skipped when pytest-html is not installed."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re

import numpy as np
import pytest
from PIL import Image

from cem_checks.reporting.html import offending_boxes, panel_pngs, section_anchor
from cem_checks.reporting.images import OFFENDING_RGB
from plugin_inner import MIXED_SUITE, make_suite
from pytest_cem.html_extras import MEDIA_ASPECT

pytest.importorskip("pytest_html", reason="pytest-html is not installed (pip install pytest-html)")

pytest_plugins = ["pytester"]


def html_extras(path) -> dict[str, list[dict]]:
    """Test name -> the extras pytest-html recorded for it (from the JSON data blob of its report)."""
    text = path.read_text(encoding="utf-8")
    blob = re.search(r'data-jsonblob="([^"]*)"', text).group(1)
    data = json.loads(html.unescape(blob))
    out: dict[str, list[dict]] = {}
    for nodeid, runs in data["tests"].items():
        out[nodeid.split("::")[-1]] = [e for run in runs for e in run.get("extras", [])]
    return out


def test_map_panels_and_report_link_are_pytest_html_extras(pytester):
    make_suite(pytester, MIXED_SUITE)
    result = pytester.runpytest("--html", "out/pytest.html", "--self-contained-html", "--cem-report", "cem.html",
                                "--cem-json", "r.json")
    result.assert_outcomes(passed=2, failed=1, skipped=1)
    extras = html_extras(pytester.path / "out" / "pytest.html")
    assert extras["test_plain"] == [] and extras["test_absent_device"] == []  # no map, no extras
    names = {name: [e["name"] for e in extras[name] if e["format_type"] == "image"] for name in
             ("test_local", "test_too_wide")}
    # the support stage alone has a support panel; the full map its three (its images are embedded, so the effect
    # over the input too)
    assert names["test_local"] == ["cem: support"]
    assert names["test_too_wide"] == ["cem: CEM over the input", "cem: CEM per block", "cem: support"]
    for name in ("test_local", "test_too_wide"):
        (link,) = [e for e in extras[name] if e["format_type"] == "url"]
        assert link["name"] == "cem report"
        assert link["content"] == f"../cem.html#{section_anchor('test_suite.py::' + name)}"
        assert f'id="{section_anchor("test_suite.py::" + name)}"' in (pytester.path / "cem.html").read_text()
    # the failed property's offending blocks are outlined on the support panel of test_too_wide
    (support,) = [e for e in extras["test_too_wide"] if e.get("name") == "cem: support"]
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(support["content"].split(",", 1)[1]))).convert("RGB"))
    assert ((img == OFFENDING_RGB).all(axis=-1)).sum() > 100
    # each panel is embedded whole, padded with white on both sides to the media viewer's aspect ratio (which crops
    # narrower images to its frame): the square support panel of 8x8 blocks in the middle, its row 0 (where
    # offending blocks are) included
    test = next(t for t in json.loads((pytester.path / "r.json").read_text())["tests"] if t["nodeid"].endswith("wide"))
    (m,) = test["maps"]
    (boxes,) = offending_boxes(test["maps"], test["properties"])
    panel = dict(panel_pngs(m, boxes))["support"]
    panel = np.asarray(Image.open(io.BytesIO(panel)).convert("RGB"))
    h, w = panel.shape[:2]
    assert h == w == img.shape[0] and img.shape[1] == math.ceil(h * MEDIA_ASPECT) > w
    left = (img.shape[1] - w) // 2
    assert (img[:, left:left + w] == panel).all() and (np.delete(img, np.s_[left:left + w], axis=1) == 255).all()
    block = h // m["grid"][0]
    assert ((panel[:block] == OFFENDING_RGB).all(axis=-1)).sum() > 20  # outlines of row-0 blocks
    for e in extras["test_too_wide"] + extras["test_local"]:
        if e["format_type"] == "image":
            shown = Image.open(io.BytesIO(base64.b64decode(e["content"].split(",", 1)[1])))
            assert shown.width / shown.height >= MEDIA_ASPECT - 1e-9, (e["name"], shown.size)
    (note,) = [e for e in extras["test_too_wide"] if e["format_type"] == "html"]
    assert "receptive_field_within" in note["content"]
    assert "the support reaches up to 5 px; the bound is 1 px" in note["content"]
