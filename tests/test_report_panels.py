"""The per-map panels of the HTML report: input and output images with the ROI box, the effect map over the input,
the effect-vs-distance chart (inline SVG), the uncertainty summary, the page summary, and records without them."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

import cem_checks as cc
from cem_checks.records import map_summary, record_test, results_document, uncertainty_summary
from cem_checks.reporting import heatmap as H
from cem_checks.reporting import images as I
from cem_checks.reporting.html import nice_ticks, render_report
from nets import ConvStack
from test_report_html import XSS, a_map, a_test, decode, document

ROI = (24, 16, 8)  # output px = input px (denoising): footprint x 24..32, y 16..24


class PanelParser(HTMLParser):
    """Images (class -> list of src), the chart's circles and polyline, and the text of the page."""

    def __init__(self):
        super().__init__()
        self.images, self.points, self.means, self.polylines, self.svgs, self.text = {}, [], [], [], 0, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.setdefault(a.get("class"), []).append(a.get("src"))
        elif tag == "svg":
            self.svgs += 1
        elif tag == "circle" and (a.get("class") or "").startswith("pt "):
            self.points.append(a)
        elif tag == "circle" and a.get("class") == "mean-pt":
            self.means.append(a)
        elif tag == "polyline":
            self.polylines.append(a)

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> PanelParser:
    p = PanelParser()
    p.feed(html)
    p.close()
    return p


@pytest.fixture(scope="module")
def image48x64():
    """A 48x64 (height x width) RGB uint8 crop of a bundled natural image."""
    img = cc.load_image(cc.bundled_images()["astronaut"])
    return (img[:, 150:198, 180:244].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def result(image48x64):
    return cc.compute_cem(ConvStack((1, 1, 1)), image48x64, task="dn25", roi=ROI, block_size=4, coarse=2, fine=4,
                          device="cpu", progress=False)


@pytest.fixture(scope="module")
def summary(result):
    return json.loads(json.dumps(map_summary(result), allow_nan=False))


@pytest.fixture(scope="module")
def page(summary):
    return parse(render_report(document([a_test("t.py::test_panels", [summary])])))


def b64_image(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))


# ------------------------------------------------------------------------------------------ records
def test_images_are_embedded_downscaled_with_the_roi_box(result):
    images = map_summary(result, max_image_px=20)["images"]
    assert images["max_px"] == 20
    for key, source, box in (("input", result.input_image, result.roi.footprint(1)),
                             ("output", result.output_image, (24, 16, 32, 24))):
        rec = images[key]
        png = b64_image(rec["png"])
        assert png.shape == (rec["height"], rec["width"], 3) == (15, 20, 3)  # 64x48 -> 20x15: aspect kept
        assert (rec["source_height"], rec["source_width"]) == source.shape[:2] == (48, 64)
        f = 20 / 64
        x0, y0, x1, y1 = rec["roi_box"]
        # rounded outwards: encloses the scaled ROI, by less than a pixel on each side
        assert x0 <= box[0] * f < x0 + 1 and y0 <= box[1] * f < y0 + 1
        assert x1 - 1 < box[2] * f <= x1 and y1 - 1 < box[3] * f <= y1
        # an antialiased downscale of the image, not another picture
        expected = np.asarray(Image.fromarray(source).resize((20, 15), Image.Resampling.LANCZOS), dtype=float)
        assert np.abs(png.astype(float) - expected).max() <= 1


def test_images_smaller_than_the_cap_are_kept_pixel_for_pixel(result, summary):
    rec = summary["images"]["input"]
    assert (rec["width"], rec["height"]) == (64, 48) and rec["roi_box"] == [24, 16, 32, 24]
    np.testing.assert_array_equal(b64_image(rec["png"]), result.input_image)
    np.testing.assert_array_equal(b64_image(summary["images"]["output"]["png"]), result.output_image)


def test_cap_zero_embeds_nothing_and_bad_caps_are_refused(result):
    images = map_summary(result, max_image_px=0)["images"]
    assert images == {"max_px": 0, "input": None, "output": None}
    for bad in (-1, 2.5, "384", True):
        with pytest.raises(cc.CEMInputError, match=r"max_image_px=.* is not a size in pixels; expected an integer >= 0"):
            map_summary(result, max_image_px=bad)


def test_distances_stderr_and_draws_per_block(result, summary):
    np.testing.assert_array_equal(np.array(summary["distance_px"]), result.distance)
    np.testing.assert_array_equal(np.array(summary["n_samples"]), result.n_samples)
    se = np.array([[np.nan if v is None else v for v in row] for row in summary["stderr_db"]])
    np.testing.assert_allclose(se, result.stderr, atol=5e-5, equal_nan=True)


def test_uncertainty_numbers_come_from_the_result_arrays(result, summary):
    u = summary["uncertainty"]
    n, se, lo, hi, eff = result.n_samples, result.stderr, result.ci_low, result.ci_high, result.effect
    sampled = n > 0
    assert 0 < sampled.sum() < n.size  # fast mode: group testing leaves proven zeros unsampled
    with_se = sampled & np.isfinite(se)
    assert u["sampled_blocks"] == int(sampled.sum())
    assert u["stderr_median_db"] == pytest.approx(float(np.median(se[with_se])))
    assert u["stderr_max_db"] == pytest.approx(float(np.max(se[with_se])))
    assert u["ci_halfwidth_max_db"] == pytest.approx(float(np.max((hi - lo)[with_se]) / 2))
    nonzero = eff != 0
    assert u["nonzero_blocks"] == int(nonzero.sum())
    assert u["nonzero_ci_contains_zero"] == int((nonzero & (lo <= 0) & (hi >= 0)).sum())
    assert u["draws_total"] == int(n.sum()) and u["draws_max"] == int(n.max())
    assert u["draws_mean"] == pytest.approx(n.sum() / sampled.sum())
    assert u == json.loads(json.dumps(uncertainty_summary(result)))


def test_uncertainty_of_a_hand_made_map():
    eff = np.array([[0.5, 0.0, -0.2], [0.0, 1.0, 0.0]])
    se = np.array([[0.1, 0.0, 0.2], [np.nan, 0.05, 0.0]])
    n = np.array([[4, 0, 6], [1, 10, 0]])
    res = cc.CEMResult.from_effects(eff, roi=(4, 2, 2), block_size=2, stderr=se, n_samples=n)
    u = uncertainty_summary(res)
    # sampled with a stderr: 0.1, 0.2, 0.05 (the n=1 block has none); CI = effect +- 1.96 stderr
    assert u["sampled_blocks"] == 4 and u["stderr_median_db"] == pytest.approx(0.1)
    assert u["stderr_max_db"] == pytest.approx(0.2) and u["ci_halfwidth_max_db"] == pytest.approx(0.392)
    assert u["nonzero_blocks"] == 3 and u["nonzero_ci_contains_zero"] == 1  # -0.2 +- 0.392
    assert (u["draws_total"], u["draws_mean"], u["draws_max"]) == (21, 5.25, 10)


# ------------------------------------------------------------------------------------------ the page
def test_input_and_output_images_show_the_roi_box(result, summary, page):
    for cls, source, rec in (("picture input", result.input_image, summary["images"]["input"]),
                             ("picture output", result.output_image, summary["images"]["output"])):
        (src,) = page.images[cls]
        img = np.asarray(decode(src))
        k = I.zoom_factor(64, 48)
        assert k == 4 and img.shape == (48 * k, 64 * k, 3)
        x0, y0, x1, y1 = (v * k for v in rec["roi_box"])
        green = np.array(I.ROI_BOX_RGB)
        for y, x in ((y0, x0), (y0, (x0 + x1) // 2), (y1 - 1, (x0 + x1) // 2), ((y0 + y1) // 2, x0),
                     ((y0 + y1) // 2, x1 - 1), (y1 - 1, x1 - 1)):
            assert (img[y, x] == green).all(), (cls, y, x)
        # inside and outside the box: the image itself, enlarged by whole pixels
        for y, x in (((y0 + y1) // 2, (x0 + x1) // 2), (2, 2), (img.shape[0] - 1, img.shape[1] - 1)):
            assert (img[y, x] == source[y // k, x // k]).all()


def test_the_overlay_blends_the_effect_colours_over_the_grey_input(result, summary, page):
    (src,) = page.images["picture overlay"]
    img = np.asarray(decode(src)).astype(int)
    k = 4
    effect = np.array(summary["effect_db"])
    outside = np.where(result.roi_mask, 0, np.abs(effect))
    r, c = np.unravel_index(np.argmax(outside), effect.shape)
    assert effect[r, c] != 0
    y, x = (r * 4 + 1) * k + 1, (c * 4 + 1) * k + 1  # inside block (r, c) of 4 input px
    colour = H.seismic(H.display_values(np.array([effect[r, c]]), summary["display_bound_db"]))[0]
    grey = result.input_image[y // k, x // k] @ np.array([0.299, 0.587, 0.114])
    expected = I.OVERLAY_ALPHA * colour + (1 - I.OVERLAY_ALPHA) * grey
    assert np.abs(img[y, x] - expected).max() <= 1
    x0, y0, x1, y1 = (v * k for v in summary["images"]["input"]["roi_box"])
    assert (img[y0, x0] == I.ROI_BOX_RGB).all() and (img[y1 - 1, x1 - 1] == I.ROI_BOX_RGB).all()
    # a colour bar under each effect panel: the overlay and the heatmap
    assert len(page.images["colorbar"]) == 2 and len(page.images["heatmap"]) == 1


def test_the_chart_has_one_point_per_block_outside_the_roi_in_order_of_distance(result, summary, page):
    assert page.svgs == 1
    pts = page.points
    effect, dist = np.array(summary["effect_db"]), result.distance
    outside = {(int(r), int(c)) for r, c in zip(*np.nonzero(~result.roi_mask))}
    seen = set()
    for p in pts:
        r, c = (int(v) for v in p["data-block"].split(","))
        seen.add((r, c))
        assert int(p["data-distance"]) == dist[r, c]
        e = effect[r, c]
        assert p["class"] == "pt " + ("pos" if e > 0 else "neg" if e < 0 else "zero")
        assert p["fill"] == {"pos": "#e00000", "neg": "#0030e0", "zero": "#9a9a9a"}[p["class"][3:]]
    assert len(pts) == len(outside) and seen == outside
    # x grows with the distance: monotone along the points, one x per distance, strictly increasing
    xs = [float(p["cx"]) for p in pts]
    ds = [int(p["data-distance"]) for p in pts]
    assert ds == sorted(ds) and xs == sorted(xs)
    x_of = {}
    for d, x in zip(ds, xs):
        assert x_of.setdefault(d, x) == x
    assert list(x_of.values()) == sorted(set(x_of.values()))
    # y: a larger effect is higher up (smaller y)
    by_effect = sorted(pts, key=lambda p: float(p["data-effect"]))
    ys = [float(p["cy"]) for p in by_effect]
    assert ys == sorted(ys, reverse=True)
    # the mean line: one vertex per distance, at the mean effect of that distance's blocks
    (line,) = page.polylines
    assert len(line["points"].split()) == len(x_of) == len(page.means)
    for m in page.means:
        d = int(m["data-distance"])
        sel = (~result.roi_mask) & (dist == d)
        assert float(m["data-effect"]) == pytest.approx(effect[sel].mean(), rel=1e-3, abs=1e-6)
        assert float(m["cx"]) == x_of[d]
    text = " ".join(page.text)
    assert "distance to the ROI (input px, Chebyshev)" in text and "effect (dB)" in text
    assert f"the {int(result.roi_mask.sum())} ROI blocks are left out" in text


def test_uncertainty_and_stderr_map_are_shown(result, summary, page):
    u = summary["uncertainty"]
    text = " ".join(page.text)
    assert f"{u['stderr_median_db']:.3g} dB" in text and f"{u['stderr_max_db']:.3g} dB" in text
    assert f"{u['ci_halfwidth_max_db']:.3g} dB" in text
    assert f"{u['nonzero_ci_contains_zero']} of {u['nonzero_blocks']}" in text
    assert f"{u['draws_total']} in all, {u['draws_mean']:.1f} per sampled block, at most {u['draws_max']}" in text
    (src,) = page.images["stderr"]
    img = np.asarray(decode(src))
    rows, cols = result.effect.shape
    cell = img.shape[0] // rows
    assert img.shape[:2] == (rows * cell, cols * cell)
    unsampled = np.argwhere(result.n_samples == 0)[0]
    worst = np.unravel_index(np.nanargmax(np.where(result.n_samples > 0, result.stderr, np.nan)), result.effect.shape)
    centre = lambda rc: img[rc[0] * cell + cell // 2, rc[1] * cell + cell // 2]  # noqa: E731
    assert tuple(centre(unsampled)) == H.NAN_RGB
    if not result.roi_mask[worst]:
        assert tuple(centre(worst)) == H.SEQUENTIAL_TOP_RGB


def test_the_summary_counts_tests_passes_and_time(summary):
    other = dict(summary, model="Other", settings=dict(summary["settings"], device="cuda:0"), forward_passes=5)
    doc = document([
        dict(a_test("t.py::test_a", [summary]), duration_s=1.25),
        dict(a_test("t.py::test_b", [other], outcome="failed"), duration_s=2.5),
        dict(a_test("t.py::test_c", outcome="skipped"), duration_s=0.0),
    ])
    html = render_report(doc)
    rows = dict(re.findall(r"<tr><th>([^<]+)</th><td>([^<]*)</td></tr>", html.split("<h2>Properties</h2>")[0]))
    assert rows["tests"] == "3: 1 passed, 1 failed, 1 skipped"
    assert rows["models"] == "ConvStack, Other" and rows["devices"] == "cpu, cuda:0"
    assert rows["forward passes"] == str(summary["forward_passes"] + 5)
    assert rows["total test time"] == "3.75 s"
    assert rows["map time"] == f"{2 * summary['wall_s']:.2f} s"


def test_user_text_stays_escaped_in_the_new_panels(summary):
    html = render_report(document([a_test(f"t.py::test[{XSS}]", [dict(summary, model=XSS)])]))
    assert XSS not in html and "&lt;script&gt;" in html
    assert html.count("<script>") == 1 and "http://" not in html and "https://" not in html


# ------------------------------------------------------------------------------------------ older records
def test_records_without_the_new_keys_still_render():
    e = np.zeros((4, 4))
    e[0, 1] = 0.3
    roi = np.zeros((4, 4), bool)
    roi[1:3, 1:3] = True
    old = a_map(e, roi)  # the keys of a map summary before images, distances and stderr were recorded
    p = parse(render_report(document([a_test("t.py::test_old", [old])])))
    text = " ".join(p.text)
    assert "no image data in the records" in text
    assert "no distance data in the records for the effect-vs-distance chart" in text
    assert "no uncertainty data in the records" in text
    assert len(p.images["heatmap"]) == len(p.images["colorbar"]) == 1
    assert not any(cls and cls.startswith("picture") for cls in p.images) and p.svgs == 0


def test_maps_without_images_say_why():
    hand = cc.CEMResult.from_effects(np.eye(4) * 0.5, roi=(4, 4, 4), block_size=2)
    for cap, words in ((384, "no input image in the records (the result carries none"),
                       (0, "images not embedded: the maximum image size was 0 px")):
        m = json.loads(json.dumps(map_summary(hand, max_image_px=cap), allow_nan=False))
        p = parse(render_report(document([a_test("t.py::test_hand", [m])])))
        assert words in " ".join(p.text)
        assert not any(cls and cls.startswith("picture") for cls in p.images)
        assert p.svgs == 1 and len(p.points) == int((~hand.roi_mask).sum())
    doc = results_document([record_test("t.py::x", outcome="passed", maps=[m])])
    assert render_report(doc).count('class="pt ') == int((~hand.roi_mask).sum())


def test_unreadable_image_data_is_reported_not_raised(summary):
    broken = json.loads(json.dumps(summary))
    broken["images"]["input"]["png"] = "not base64!"
    text = " ".join(parse(render_report(document([a_test("t.py::test_broken", [broken])]))).text)
    assert "unreadable input image data in the records" in text


def test_nice_ticks_cover_the_range_with_round_steps():
    lo, hi, ticks = nice_ticks(-0.037, 0.52)
    assert lo <= -0.037 and hi >= 0.52 and ticks[0] == lo and ticks[-1] == hi
    step = ticks[1] - ticks[0]
    assert any(math.isclose(step, m * 10 ** e) for m in (1, 2, 5) for e in range(-3, 3))
    assert nice_ticks(0, 7, 6, integer=True)[2] == [0, 2, 4, 6, 8]
    assert nice_ticks(0, 0)[:2] == (-1.0, 1.0)
