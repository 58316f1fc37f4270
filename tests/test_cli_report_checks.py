"""``cem report`` reads only what it can show: the summary is recounted from the tests (one file or several), and
a map with malformed fields is refused (exit 2, ``cem: error:`` naming the file, test, field, value and what is
expected) instead of a traceback."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import cem_checks as cc
from cem_checks import cli
from cem_checks.errors import ResultsFileError
from cem_checks.records import load_document, map_summary, property_record, record_test, results_document


def a_map(value: float = 0.5) -> dict:
    """A 4x4-block map summary (ROI in the lower right 2x2 blocks) whose block (0, 0) has ``value`` dB."""
    eff = np.zeros((4, 4))
    eff[0, 0] = value
    res = cc.CEMResult.from_effects(eff, roi=(4, 4, 4), block_size=2, task="dn25")
    return json.loads(json.dumps(map_summary(res), allow_nan=False))


def a_document() -> dict:
    """Two tests, three maps, two properties (one failed)."""
    res = cc.CEMResult.from_effects(np.eye(4) * 0.5, roi=(4, 4, 4), block_size=2, task="dn25")
    ok = property_record(cc.check_receptive_field_within(res, radius=4))
    bad = property_record(cc.check_receptive_field_within(res, radius=1))
    return results_document([
        record_test("t.py::test_a", outcome="passed", maps=[a_map(0.5), a_map(-0.25)], properties=[ok]),
        record_test("t.py::test_b", outcome="failed", maps=[a_map(1.0)], properties=[bad]),
    ], exitstatus=1)


def summary_rows(html: str) -> dict:
    return dict(re.findall(r"<tr><th>([^<]+)</th><td>([^<]*)</td></tr>", html.split("<h2>Properties</h2>")[0]))


def test_a_summary_that_lies_is_recounted_for_one_file(tmp_path, capsys):
    doc = a_document()
    assert (ok := doc["summary"]) == {"tests": 2, "maps": 3, "properties": 2, "failed_properties": 1, "exitstatus": 1}
    doc["summary"] = {"tests": 2, "maps": 50, "properties": 2, "failed_properties": 0, "exitstatus": 1}
    src = tmp_path / "lies.json"
    src.write_text(json.dumps(doc))
    assert cli.main(["report", str(src), "-o", str(tmp_path / "r.html")]) == 0
    out, err = capsys.readouterr()
    assert f"1 results file: 2 tests, 3 maps, 2 properties (1 failed) -> {tmp_path / 'r.html'}" in out
    assert (f"cem: note: the stored summary of {src} says 50 maps (its tests hold 3), 0 failed properties (its tests "
            "hold 1); the report shows the counts of its tests.") in err
    rows = summary_rows((tmp_path / "r.html").read_text(encoding="utf-8"))
    assert rows["maps"] == "3" and rows["properties"] == "2: 1 passed, 1 failed"
    assert rows["tests"] == "2: 1 passed, 1 failed, 0 skipped"
    # written back as JSON: the recounted summary, the stored exit status kept
    assert cli.main(["report", str(src), "-o", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["summary"] == ok


def test_merged_files_list_recounted_summaries(tmp_path, capsys):
    doc = a_document()
    doc["summary"]["maps"] = 50
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text(json.dumps(doc))
    assert cli.main(["report", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "-o", str(tmp_path / "m.json")]) == 0
    merged = json.loads((tmp_path / "m.json").read_text())
    assert merged["summary"]["maps"] == 6
    assert [m["summary"]["maps"] for m in merged["merged_from"]] == [3, 3]
    assert capsys.readouterr().err.count("says 50 maps (its tests hold 3)") == 2


def _set(path: tuple, value):
    def apply(doc):
        target = doc["tests"][0]["maps"][0]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return apply


def _ragged(doc):
    doc["tests"][0]["maps"][0]["effect_db"][2] = [0.0, 0.0, 0.0]


BAD_MAPS = [
    (_set(("effect_db", 1, 2), "abc"), "map 1: effect_db[1][2] is 'abc'; expected a number (dB) or null (NaN)."),
    (_set(("effect_db", 0, 0), True), "map 1: effect_db[0][0] is True; expected a number (dB) or null (NaN)."),
    (_ragged, "map 1: effect_db[2] is a row of 3 values; expected a row of 4 values like effect_db[0]"),
    (_set(("effect_db",), "0.5"), "map 1: effect_db is '0.5'; expected a non-empty list of rows"),
    (_set(("stderr_db",), [[0.0] * 3] * 4), "map 1: stderr_db is 4x3 blocks; expected 4x4 like grid."),
    (_set(("roi_mask", 3, 3), 1), "map 1: roi_mask[3][3] is 1; expected true or false."),
    (_set(("distance_px", 0, 1), 2.5), "map 1: distance_px[0][1] is 2.5; expected an integer (input px)."),
    (_set(("grid",), [4, "4"]), "map 1: grid is [4, '4']; expected [rows, cols], two integers >= 1."),
    (_set(("display_bound_db",), -1.0), "map 1: display_bound_db is -1.0; expected a positive number of dB"),
    (_set(("forward_passes",), "many"), "map 1: forward_passes is 'many'; expected an integer or null."),
    (_set(("uncertainty", "stderr_max_db"), "x"),
     "map 1: uncertainty.stderr_max_db is 'x'; expected a number or null."),
    (_set(("settings", "roi"), 5), "map 1: settings.roi is 5; expected a list [top, left, size] or null."),
]


@pytest.mark.parametrize("corrupt, words", BAD_MAPS, ids=[w.split(" is ")[0][7:] for _, w in BAD_MAPS])
def test_a_malformed_map_is_refused_naming_file_test_field_value_and_expectation(tmp_path, capsys, corrupt, words):
    doc = a_document()
    corrupt(doc)
    src = tmp_path / "bad.json"
    src.write_text(json.dumps(doc))
    out = tmp_path / "r.html"
    assert cli.main(["report", str(src), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cem: error: the results file {str(src)!r}: test 't.py::test_a', {words}"), err
    assert "Re-create the file with pytest --cem-json or cem run -o FILE.json, or correct that value." in err
    assert "Traceback" not in err and not out.exists()
    with pytest.raises(ResultsFileError, match=re.escape(words)):
        load_document(src)


def test_maps_that_are_not_a_list_and_properties_that_are_not_objects(tmp_path):
    for key, value, words in (("maps", {}, "test 't.py::test_a': maps is {}; expected a list."),
                              ("properties", ["ok"], "test 't.py::test_a': property 1 is 'ok'; expected a property "
                                                     "record")):
        doc = a_document()
        doc["tests"][0][key] = value
        with pytest.raises(ResultsFileError, match=re.escape(words)):
            cc.records.check_document(doc, "doc.json")


def test_null_effects_are_nan_and_render(tmp_path, capsys):
    doc = a_document()
    doc["tests"][0]["maps"][0]["effect_db"][0][1] = None  # NaN: drawn grey, left out of the chart
    src = tmp_path / "nan.json"
    src.write_text(json.dumps(doc))
    assert cli.main(["report", str(src), "-o", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    # 12 blocks outside the ROI in the first map, one of them NaN; 12 in each of the two others
    assert html.count('class="pt ') == 11 + 12 + 12


@pytest.mark.parametrize("passed", ["no", "yes", 0, 1, None])
def test_a_property_verdict_that_is_not_a_boolean_is_refused(passed, tmp_path, capsys):
    # "passed": "no" used to count as a passed property (any non-empty string is truthy)
    doc = a_document()
    doc["tests"][1]["properties"][0]["passed"] = passed
    with pytest.raises(ResultsFileError, match=re.escape(
            f"test 't.py::test_b': property 1 (receptive_field_within): passed is {passed!r}; expected true or "
            "false")):
        cc.records.check_document(doc, "doc")
    src = tmp_path / "odd.json"
    src.write_text(json.dumps(doc))
    assert cli.main(["report", str(src), "-o", str(tmp_path / "r.html")]) == 2
    assert capsys.readouterr().err.startswith(f"cem: error: the results file {str(src)!r}: test 't.py::test_b'")
    del doc["tests"][1]["properties"][0]["passed"]
    with pytest.raises(ResultsFileError, match="passed is absent; expected true or false"):
        cc.records.check_document(doc, "doc")
