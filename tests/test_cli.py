"""The ``cem`` console command: ``cem report`` (render and merge JSON results) and ``cem run`` (a checkpoint's
map as a report), run as the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cem_checks as cc
from cem_checks.records import (
    RESULTS_FORMAT_VERSION,
    map_summary,
    merge_documents,
    property_record,
    record_test,
    results_document,
    write_document,
)
from nets import ConvStack
from plugin_inner import MIXED_SUITE, make_suite
from test_report_html import parse

pytest_plugins = ["pytester"]

EXE = Path(sys.executable).with_name("cem")
TINY = dict(task="dn25", roi=(8, 8, 8), block_size=4, coarse=2, fine=4, device="cpu")
IMG = (np.arange(32 * 32 * 3).reshape(32, 32, 3) * 37 % 256).astype(np.uint8)


def cem(*args, cwd=None):
    return subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, cwd=cwd)


def _entry(nodeid: str, dilations: tuple, radius: int) -> dict:
    """A test record of a real tiny map with a receptive-field check (support radius: dilations' sum - 1 px)."""
    result = cc.compute_cem(ConvStack(dilations), IMG, **TINY)
    outcome = cc.check_receptive_field_within(result, radius)
    return record_test(nodeid, outcome="passed" if outcome.passed else "failed", duration_s=result.wall_s,
                       maps=[map_summary(result)], properties=[property_record(outcome)])


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two results files of one split run; ``test_shared`` is in both (a passing check in a, failing in b)."""
    d = tmp_path_factory.mktemp("shards")
    a = results_document([_entry("t.py::test_local", (1, 1), 2), _entry("t.py::test_shared", (1, 1), 2)],
                         settings={"seed": 0, "mode": "fast"}, exitstatus=0)
    b = results_document([_entry("t.py::test_too_wide", (1, 1, 1, 1, 1), 1),
                          _entry("t.py::test_shared", (1, 1, 1, 1, 1), 1)],
                         settings={"seed": 0, "mode": "fast"}, exitstatus=1)
    return write_document(a, d / "shard-a.json"), write_document(b, d / "shard-b.json")


def test_merge_documents_keeps_every_test_in_file_order(shards):
    docs = [json.loads(Path(p).read_text()) for p in shards]
    merged = merge_documents(docs, shards)
    assert [t["nodeid"] for t in merged["tests"]] == [
        "t.py::test_local",
        "t.py::test_shared [shard-a.json]",
        "t.py::test_too_wide",
        "t.py::test_shared [shard-b.json]",
    ]
    assert [t["source"] for t in merged["tests"]] == ["shard-a.json"] * 2 + ["shard-b.json"] * 2
    assert merged["summary"] == {"tests": 4, "maps": 4, "properties": 4, "failed_properties": 2, "exitstatus": 1}
    assert [m["source"] for m in merged["merged_from"]] == ["shard-a.json", "shard-b.json"]
    assert [t["maps"][0]["support_radius_px"] for t in merged["tests"]] == [2, 2, 5, 5]


def test_cem_report_merges_shards_into_one_html(shards, tmp_path):
    out = cem("report", *shards, "-o", tmp_path / "report.html")
    assert out.returncode == 0, out.stderr
    assert "2 results files: 4 tests, 4 maps, 4 properties (2 failed)" in out.stdout
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    rows = parse(html).rows
    assert sorted((r[0], r[1]) for r in rows) == [
        ("failed", "t.py::test_shared [shard-b.json]"),
        ("failed", "t.py::test_too_wide"),
        ("passed", "t.py::test_local"),
        ("passed", "t.py::test_shared [shard-a.json]"),
    ]
    assert "4: 2 passed, 2 failed" in html
    assert '<details class="prop passed">' in html  # passing properties collapsed without --all


def test_cem_report_merge_alias_all_and_json_output(shards, tmp_path):
    out = cem("report", "merge", *shards, "-o", tmp_path / "merged.json")
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "merged.json").read_text())
    assert doc["format_version"] == RESULTS_FORMAT_VERSION and doc["summary"]["tests"] == 4
    again = cem("report", "merge", tmp_path / "merged.json", "-o", tmp_path / "r.html", "--all")
    assert again.returncode == 0, again.stderr
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert '<details class="prop passed" open>' in html and "t.py::test_shared [shard-a.json]" in html


def test_cem_report_merges_plugin_results(pytester, shards, tmp_path):
    make_suite(pytester, MIXED_SUITE)
    pytester.runpytest("--cem-json", "plugin.json").assert_outcomes(passed=2, failed=1, skipped=1)
    out = cem("report", pytester.path / "plugin.json", shards[0], "-o", tmp_path / "mixed.json")
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "mixed.json").read_text())
    assert [t["nodeid"] for t in doc["tests"]] == [
        "test_suite.py::test_absent_device", "test_suite.py::test_local", "test_suite.py::test_plain",
        "test_suite.py::test_too_wide", "t.py::test_local", "t.py::test_shared",
    ]
    assert doc["summary"] == {"tests": 6, "maps": 4, "properties": 4, "failed_properties": 1, "exitstatus": 1}


def test_cem_report_bad_inputs_name_the_file(shards, tmp_path):
    missing = tmp_path / "missing.json"
    notjson = tmp_path / "broken.json"
    notjson.write_text("{not json")
    other = tmp_path / "future.json"
    doc = json.loads(Path(shards[0]).read_text())
    doc["format_version"] = RESULTS_FORMAT_VERSION + 1
    other.write_text(json.dumps(doc))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"format": "something-else"}))
    for bad, words in [(missing, "cannot read"), (notjson, "not valid JSON"), (other, "format version"),
                       (wrong, "not a pytest-cem results file")]:
        out = cem("report", shards[0], bad, "-o", tmp_path / "x.html")
        assert out.returncode == 2, out.stderr
        assert str(bad) in out.stderr and words in out.stderr
        assert not (tmp_path / "x.html").exists()


@pytest.fixture
def image(tmp_path, natural32):
    Image.fromarray(natural32).save(tmp_path / "img.png")
    return tmp_path / "img.png"


RUN = ["--task", "dn25", "--roi", "8,8,8", "--block-size", "4", "--device", "cpu"]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_cem_run_torchscript_writes_a_report(tmp_path, image):
    torch.jit.script(ConvStack((1, 1))).save(str(tmp_path / "m.pt"))
    out = cem("run", "--model", tmp_path / "m.pt", "--image", image, *RUN, "--assert-receptive-field", "2", "--map",
              "-o", tmp_path / "report.html")
    assert out.returncode == 0, out.stderr
    assert "receptive_field_within passed" in out.stdout and "support radius 2 px" in out.stdout
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    p = parse(html)
    assert [(r[0], r[2]) for r in p.rows] == [("passed", "receptive_field_within")]
    assert "cem run m.pt on img.png (dn25, ROI 8,8,8)" in html and "ConvStack" in html
    assert len([1 for cls, _ in p.images if cls == "heatmap"]) == 1
    # the default cap (384 px) keeps the 32x32 input and output whole: drawn with the map over the input
    assert sorted(cls for cls, _ in p.images if cls and cls.startswith("picture")) == [
        "picture input", "picture output", "picture overlay"]
    assert '<svg class="profile"' in html and "uncertainty" in html


def test_cem_run_max_image_px_0_embeds_no_images(tmp_path, image, capsys):
    from cem_checks.cli import main  # in process: the console script itself is run by the tests above

    torch.save(ConvStack().state_dict(), tmp_path / "m.pt")  # what nets:ConvStack builds
    assert main(["run", "--model", str(tmp_path / "m.pt"), "--arch", "nets:ConvStack", "--image", str(image), *RUN,
                 "--max-image-px", "0", "-o", str(tmp_path / "r.json")]) == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    (m,) = doc["tests"][0]["maps"]
    assert m["images"] == {"max_px": 0, "input": None, "output": None} and doc["settings"]["max_image_px"] == 0
    assert len(m["distance_px"]) == 8 and m["uncertainty"]["draws_total"] > 0  # the rest is still recorded
    assert main(["report", str(tmp_path / "r.json"), "-o", str(tmp_path / "r.html")]) == 0
    p = parse((tmp_path / "r.html").read_text(encoding="utf-8"))
    assert not [cls for cls, _ in p.images if cls and cls.startswith("picture")]
    assert any("images not embedded: the maximum image size was 0 px" in t for t in p.text)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--model", str(tmp_path / "m.pt"), "--arch", "nets:ConvStack", "--image", str(image), *RUN, "--max-image-px", "-3",
              "-o", str(tmp_path / "x.html")])
    assert exit_.value.code == 2 and not (tmp_path / "x.html").exists()
    assert "--max-image-px '-3' is not a size in pixels; expected an integer >= 0" in capsys.readouterr().err


def test_cem_run_safetensors_with_arch_factory(tmp_path, image):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    save_file(ConvStack((1, 1, 1, 1, 1)).state_dict(), str(tmp_path / "m.safetensors"))
    (tmp_path / "nets.py").write_text((Path(__file__).parent / "nets.py").read_text())
    (tmp_path / "factories.py").write_text("from nets import ConvStack\n\ndef wide():\n    return ConvStack((1, 1, 1, 1, 1), seed=7)\n")
    out = cem("run", "--model", "m.safetensors", "--arch", "factories:wide", "--image", image, *RUN,
              "--assert-receptive-field", "1", "-o", "out/results.json", cwd=tmp_path)
    assert out.returncode == 1, out.stderr  # the check fails: exit 1, results still written
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    (t,) = doc["tests"]
    assert t["outcome"] == "failed" and t["maps"][0]["support_radius_px"] == 5
    assert doc["summary"] == {"tests": 1, "maps": 1, "properties": 1, "failed_properties": 1, "exitstatus": 1}
    html = cem("run", "--model", "m.safetensors", "--arch", "factories.py:wide", "--image", image, *RUN,
               "-o", "r.html", cwd=tmp_path)
    assert html.returncode == 0, html.stderr
    assert "ConvStack" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_cem_run_bad_inputs_exit_2_naming_the_file(tmp_path, image):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    out = cem("run", "--model", junk, "--image", image, *RUN, "-o", tmp_path / "r.html")
    assert out.returncode == 2 and str(junk) in out.stderr
    torch.save(ConvStack().state_dict(), tmp_path / "sd.pt")  # what nets:ConvStack builds
    out = cem("run", "--model", tmp_path / "sd.pt", "--arch", "no_such_module_xyz:build", "--image", image, *RUN,
              "-o", tmp_path / "r.html")
    assert out.returncode == 2 and "no_such_module_xyz" in out.stderr
    out = cem("run", "--model", tmp_path / "sd.pt", "--arch", "nets:ConvStack", "--image", tmp_path / "nope.png",
              *RUN, "-o", tmp_path / "r.html", cwd=Path(__file__).parent)
    assert out.returncode == 2 and "nope.png" in out.stderr
    assert not (tmp_path / "r.html").exists()
