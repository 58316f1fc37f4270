"""``cem gate --within PX``: a receptive-field bound checked by the support stage alone (as the pytest fixture's
receptive-field assertion does), with ``cem run``'s exit codes; ``cem run --assert-receptive-field R`` takes the
same path unless ``--map`` asks for the full map."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from cem_checks.cli import main
from nets import ConvStack

JOB = ["--task", "dn25", "--roi", "8,8,8", "--block-size", "4", "--device", "cpu"]


@pytest.fixture
def model_args(tmp_path, natural32_png) -> list[str]:
    torch.save(ConvStack().state_dict(), tmp_path / "sd.pt")  # what nets:ConvStack builds: support radius 3 px
    return ["--model", str(tmp_path / "sd.pt"), "--arch", "nets:ConvStack", "--image", str(natural32_png), *JOB]


def cem(capsys, *args) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def only_map(path: Path) -> tuple[dict, dict]:
    doc = json.loads(path.read_text())
    (test,) = doc["tests"]
    (m,) = test["maps"]
    return test, m


def test_gate_needs_tens_of_forwards_where_the_map_needs_hundreds(model_args, tmp_path, capsys):
    code, out, _ = cem(capsys, "gate", *model_args, "--within", "3", "-o", tmp_path / "gate.json")
    assert code == 0
    test, gate = only_map(tmp_path / "gate.json")
    assert gate["stage"] == "support" and gate["support_radius_px"] == 3 and test["outcome"] == "passed"
    assert [(p["name"], p["passed"], p["measured"]) for p in test["properties"]] == [
        ("receptive_field_within", True, 3)]
    assert (f"support radius 3 px, {gate['group_tests']} group tests, {gate['forward_passes']} forward passes"
            in out)
    # cem run --assert-receptive-field alone takes the same path: the same forwards
    assert cem(capsys, "run", *model_args, "--assert-receptive-field", "3", "-o", tmp_path / "run.json")[0] == 0
    _, run = only_map(tmp_path / "run.json")
    assert run["stage"] == "support" and run["forward_passes"] == gate["forward_passes"]
    # the full-map path, as cem run computed it before: the same verdict for far more forwards
    assert cem(capsys, "run", *model_args, "--assert-receptive-field", "3", "--map", "-o", tmp_path / "map.json")[0] == 0
    test, full = only_map(tmp_path / "map.json")
    assert full["stage"] == "map" and full["support_radius_px"] == 3 and test["properties"][0]["passed"] is True
    assert gate["forward_passes"] * 10 <= full["forward_passes"], (gate["forward_passes"], full["forward_passes"])


def test_gate_exit_codes(model_args, tmp_path, capsys):
    # 1: something beyond the bound changes the ROI output; the results are still written, naming the blocks
    code, out, _ = cem(capsys, "gate", *model_args, "--within", "0", "-o", tmp_path / "g.html")
    assert code == 1
    assert "receptive_field_within FAILED: support_radius() = 3 px; bound <= 0 px" in out
    assert "changes the ROI output without other blocks" in out and (tmp_path / "g.html").is_file()
    # without -o nothing is written; the verdict is printed
    code, out, _ = cem(capsys, "gate", *model_args, "--within", "3")
    assert code == 0 and "receptive_field_within passed" in out and "HTML report" not in out
    # 2: usage and input errors, before any forward
    code, _, err = cem(capsys, "gate", *model_args)
    assert code == 2 and "the following arguments are required: --within" in err
    for bad in ("-1", "nan", "inf", "far"):
        code, _, err = cem(capsys, "gate", *model_args, "--within", bad)
        assert code == 2 and f"--within {bad!r} is not a distance; expected a finite number >= 0" in err
    code, _, err = cem(capsys, "gate", *model_args, "--within", "3", "-o", tmp_path / "g.pdf")
    assert code == 2 and err.startswith("cem: error: -o ") and "'.pdf', which cem gate does not write" in err
    assert not (tmp_path / "g.pdf").exists()
    code, _, err = cem(capsys, "gate", *model_args[:1], tmp_path / "absent.pt", *model_args[2:], "--within", "3")
    assert code == 2 and err.startswith("cem: error: ") and "absent.pt" in err


def test_gate_help_documents_the_bound_and_the_exit_codes(capsys):
    code, out, _ = cem(capsys, "gate", "--help")
    assert code == 0
    assert "--within PX" in out and "required" in out and "Exit code 0 when nothing beyond PX" in out
    assert not re.search(r"--mode\b", out)  # the support stage reads no estimation mode
    code, out, _ = cem(capsys, "--help")
    assert "gate" in out and "cem gate" in out
