"""--junitxml stays small: by default a test case carries the scalar summary of its maps (stage, counts, support
radius, effect range, base PSNR, forward passes, settings) and its property verdicts, never the per-block grids or
images, also when --cem-report / --cem-json need them; --cem-junit-maps (ini cem_junit_maps) opts into the full
map records."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from plugin_inner import make_suite

pytest_plugins = ["pytester"]

#: One full map of 32x32 blocks (128x128 input, blocks of 4 px) and one property.
MAP_32 = """
    BIG = (np.arange(128 * 128 * 3).reshape(128, 128, 3) * 37 % 256).astype(np.uint8)

    @pytest.mark.cem(task="dn25", roi=(56, 56, 16), block_size=4, coarse=2, fine=4, device="cpu")
    def test_map_32x32(cem):
        m = cem(ConvStack((1, 1)), BIG)
        assert m.effect.shape == (32, 32)
        cc.assert_receptive_field_within(m, radius=2)
"""

#: The most bytes a junit-xml file of one test with one 32x32 map may take by default.
MAX_JUNIT_BYTES = 4096


def junit(pytester, *args: str) -> tuple[int, dict[str, str]]:
    """Run the suite with ``args`` and --junitxml; the file's size (bytes) and its test case's properties."""
    pytester.runpytest("--junitxml", "junit.xml", *args).assert_outcomes(passed=1)
    path = pytester.path / "junit.xml"
    (case,) = ET.parse(path).iter("testcase")
    return path.stat().st_size, {p.get("name"): p.get("value") for p in case.iter("property")}


@pytest.fixture
def suite(pytester):
    make_suite(pytester, MAP_32)
    return pytester


@pytest.mark.parametrize("args", [(), ("--cem-report", "r.html", "--cem-json", "r.json")],
                         ids=["plain", "with-report-and-json"])
def test_default_junit_holds_scalar_summaries_under_4kb(suite, args):
    size, props = junit(suite, *args)
    assert size < MAX_JUNIT_BYTES, f"junit.xml of one 32x32 map is {size} bytes"
    data = json.loads(props["cem"])
    (m,) = data["maps"]
    assert m["stage"] == "map" and m["grid"] == [32, 32] and m["support_radius_px"] == 2
    assert m["positive_blocks"] + m["negative_blocks"] + m["zero_blocks"] == 32 * 32
    assert m["effect_max_db"] > 0 and m["base_psnr_db"] > 0 and m["forward_passes"] > 0
    assert not {"effect_db", "support", "distance_px", "stderr_db", "images"} & set(m)
    (p,) = data["properties"]
    assert (p["name"], p["passed"], p["measured"], p["bound"]) == ("receptive_field_within", True, 2, 2)
    assert props["cem:receptive_field_within"] == "passed: support_radius() = 2 px; bound <= 2 px"
    if args:  # the report and the JSON still get the full map
        doc = json.loads((suite.path / "r.json").read_text())
        (full,) = doc["tests"][0]["maps"]
        assert len(full["effect_db"]) == 32 and len(full["effect_db"][0]) == 32 and full["images"]["input"]
        assert "<img class=\"heatmap\"" in (suite.path / "r.html").read_text(encoding="utf-8")


def test_junit_maps_option_and_ini_write_the_full_map(suite):
    size, props = junit(suite, "--cem-junit-maps")
    (m,) = json.loads(props["cem"])["maps"]
    assert len(m["effect_db"]) == 32 and len(m["support"][0]) == 32 and size > 3 * MAX_JUNIT_BYTES
    suite.makeini("[pytest]\ncem_junit_maps = true\n")
    _, props = junit(suite)
    assert len(json.loads(props["cem"])["maps"][0]["distance_px"]) == 32
