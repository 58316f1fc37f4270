"""The HTML report (cem_checks.reporting): heatmap colours, embedded PNGs, table order, escaping, templates."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

import cem_checks as cc
from cem_checks.records import map_summary
from cem_checks.reporting import heatmap as H
from cem_checks.reporting.html import render_report, template_dir, write_report
from nets import ConvStack

XSS = "<script>alert(1)</script>"


class ReportParser(HTMLParser):
    """Collects the property table's rows, the images (class, src), the script count and the text."""

    def __init__(self):
        super().__init__()
        self.rows, self.images, self.scripts, self.text = [], [], 0, []
        self._in_props = self._in_body = False
        self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id") == "properties":
            self._in_props = True
        elif tag == "tbody" and self._in_props:
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "img":
            self.images.append((a.get("class"), a.get("src")))
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        elif tag == "table" and self._in_props:
            self._in_props = self._in_body = False

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse(html: str) -> ReportParser:
    p = ReportParser()
    p.feed(html)
    p.close()
    return p


def decode(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(src[len(prefix):]))).convert("RGB")


def prop(name, passed, measured="m() = 1 px", bound="<= 2 px", model="net"):
    return {"name": name, "passed": passed, "measured_text": measured, "bound_text": bound, "description": "d",
            "message": f"causal property {name!r}", "settings": {"model": model}}


def a_map(effect, roi=None, bound=1.0, model="net"):
    e = np.asarray(effect, dtype=float)
    roi = np.zeros(e.shape, bool) if roi is None else roi
    return {"model": model, "grid": list(e.shape), "effect_db": e.tolist(), "roi_mask": roi.tolist(),
            "display_bound_db": bound, "effect_min_db": float(e.min()), "effect_max_db": float(e.max()),
            "positive_blocks": int((e > 0).sum()), "negative_blocks": int((e < 0).sum()),
            "zero_blocks": int((e == 0).sum()), "forward_passes": 10, "wall_s": 0.5, "base_psnr_db": 30.0,
            "support_radius_px": 1, "patch_bank": {"source": "bundled"},
            "settings": {"seed": 7, "mode": "fast", "device": "cpu", "coarse": 2, "fine": 4, "task": "dn25"}}


def document(tests):
    return {"format": "pytest-cem-results", "format_version": 1, "environment": {"torch": "x"},
            "settings": {"seed": 7, "mode": "fast"}, "summary": {}, "tests": tests}


def a_test(nodeid, maps=(), props=(), outcome="passed"):
    return {"nodeid": nodeid, "outcome": outcome, "duration_s": 0.1, "maps": list(maps), "properties": list(props)}


# ------------------------------------------------------------------------------------------ colours
def test_colormap_is_white_at_zero_red_positive_blue_negative():
    c = H.seismic(np.array([0.0, 1.0, 0.5, -1.0, -0.5, np.nan]))
    assert tuple(c[0]) == (255, 255, 255)
    assert c[1][0] > 100 and c[1][1] == 0 and c[1][2] == 0  # dark red
    assert tuple(c[2]) == (255, 0, 0)
    assert c[3][2] > 50 and c[3][0] == 0 and c[3][1] == 0  # dark blue
    assert tuple(c[4]) == (0, 0, 255)
    assert tuple(c[5]) == H.NAN_RGB


def test_display_clips_at_the_bound_with_signed_power():
    v = H.display_values([[-5.0, -0.5, 0.0, 0.5, 2.5, 9.0]], 2.5)
    assert v[0, 0] == -1 and v[0, -1] == 1 and v[0, -2] == 1 and v[0, 2] == 0
    assert v[0, 3] == pytest.approx((0.2) ** (1 / 1.2)) and v[0, 1] == pytest.approx(-(0.2) ** (1 / 1.2))
    with pytest.raises(ValueError):
        H.display_values([[1.0]], 0)


def test_heatmap_has_one_cell_per_block_and_outlines_the_roi():
    e = np.zeros((4, 5))
    e[0, 0], e[3, 4] = 1.0, -1.0
    roi = np.zeros((4, 5), bool)
    roi[1:3, 1:3] = True
    img = np.asarray(Image.open(io.BytesIO(H.heatmap_png(e, 1.0, roi, cell=10))).convert("RGB"))
    assert img.shape == (40, 50, 3)
    assert img[5, 5, 0] > 100 and img[5, 5, 2] == 0  # red cell
    assert img[35, 45, 2] > 50 and img[35, 45, 0] == 0  # blue cell
    assert tuple(img[10, 15]) == H.OUTLINE_RGB and tuple(img[20, 20]) == (255, 255, 255)  # outline, inside white
    assert tuple(img[5, 25]) == (255, 255, 255)


# ------------------------------------------------------------------------------------------ the page
def test_report_table_failures_first_images_and_escaping(tmp_path):
    e = np.zeros((6, 6))
    e[2, 3], e[4, 1] = 0.8, -0.4
    roi = np.zeros((6, 6), bool)
    roi[2:4, 2:4] = True
    doc = document([
        a_test("t.py::test_a_passes", [a_map(e, roi)], [prop("p_ok", True)]),
        a_test(f"t.py::test_zero[{XSS}]", [a_map(np.zeros((6, 6)), model=f"m{XSS}")], [prop("p_zero", True)]),
        a_test("t.py::test_z_fails", [a_map(e)], [prop("p_bad", False, "support_radius() = 5 px", "<= 1 px")],
             outcome="failed"),
    ])
    path = write_report(doc, tmp_path / "sub" / "r.html")
    html = (tmp_path / "sub" / "r.html").read_text(encoding="utf-8")
    assert path.endswith("r.html") and not list(tmp_path.rglob("*.tmp"))
    p = parse(html)
    assert [(r[0], r[2]) for r in p.rows] == [("failed", "p_bad"), ("passed", "p_ok"), ("passed", "p_zero")]
    assert p.rows[0][4:] == ["support_radius() = 5 px", "<= 1 px"]
    # the test id and model name with a script tag are text, never markup
    assert p.scripts == 1 and XSS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert f"t.py::test_zero[{XSS}]" in p.rows[2][1] and any(XSS in t for t in p.text)
    # no external resource: every image is an embedded PNG
    assert "http://" not in html and "https://" not in html
    heat = [decode(src) for cls, src in p.images if cls == "heatmap"]
    bars = [decode(src) for cls, src in p.images if cls == "colorbar"]
    assert len(heat) == len(bars) == 3
    order = [t for t in p.text if t.startswith("map 1:")]  # failing test's section comes first
    assert len(order) == 3
    arrays = [np.asarray(h) for h in heat]
    # sections: failing test (non-zero map), then test_a (non-zero, ROI outlined), then the all-zero map
    assert (arrays[0] != 255).any() and (arrays[1] != 255).any()
    assert (arrays[2] == 255).all()
    assert (np.asarray(bars[0]) != 255).any()


def test_passing_properties_collapsed_unless_show_passing():
    doc = document([a_test("t.py::test_x", [], [prop("p_ok", True), prop("p_bad", False)], outcome="failed")])
    collapsed = render_report(doc)
    shown = render_report(doc, show_passing=True)
    # a failed property is expanded at the top of its test's section; passing ones are collapsed
    assert '<details class="prop failure failed" open>' in collapsed and '<details class="prop passed">' in collapsed
    assert '<details class="prop passed" open>' in shown


def test_report_of_a_real_map_summary_is_json_safe(natural32):
    res = cc.compute_cem(ConvStack((1, 1)), natural32, task="dn25", roi=(8, 8, 8), block_size=4, coarse=2, fine=4,
                         device="cpu")
    m = json.loads(json.dumps(map_summary(res), allow_nan=False))
    assert m["display_bound_db"] == 1.0 and len(m["effect_db"]) == 8 and len(m["effect_db"][0]) == 8
    assert sum(map(sum, m["roi_mask"])) == int(res.roi_mask.sum())
    assert np.allclose(np.array(m["effect_db"], dtype=float), res.effect, atol=1e-4, equal_nan=True)
    p = parse(render_report(document([a_test("t.py::test_real", [m])])))
    (src,) = [s for c, s in p.images if c == "heatmap"]
    img = np.asarray(decode(src))
    assert img.shape[0] == img.shape[1] and (img != 255).any()


def test_templates_are_found_in_the_source_tree_and_shipped():
    d = template_dir()
    assert (d / "report.html.j2").is_file()
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    conf = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert conf["package-dir"]["cem_checks.templates"] == "templates"
    assert "cem_checks.templates" in conf["packages"] and conf["package-data"]["cem_checks.templates"] == ["*.j2"]
