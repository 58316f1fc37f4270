"""benchmarks/zoo_coverage.py on two small zoo architectures whose reach is known by hand: DnCNN with 5 3x3 convs
(5 px) and Compact with 6 3x3 convs at the input's resolution (6 px); both are traced for local evaluation and
the traced box holds the true dependence; and two window-attention transformers (SwinIR, GRL), captured, whose
traced box is their true dependence."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import zoo

UNAVAILABLE = zoo.unavailable()
pytestmark = pytest.mark.skipif(
    UNAVAILABLE is not None,
    reason=f"{UNAVAILABLE}; `make test-spandrel` runs the zoo in an environment with spandrel")


def _benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "zoo_coverage.py"
    spec = importlib.util.spec_from_file_location("zoo_coverage", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_coverage_rows_of_two_local_models(capsys):
    rows = {r["name"]: r for r in _benchmark().main(["--arch", "DnCNN,Compact"])}
    assert rows["DnCNN"]["reach px"] == 5 and rows["Compact"]["reach px"] == 6
    for r in rows.values():
        assert r["local in truth"] == "yes" and r["local eval"].startswith("yes, traced (box") and r["traced >= truth"] == "yes"
    out = capsys.readouterr().out
    assert "DnCNN" in out and "Compact" in out
    assert out.strip().endswith("2 built, 2 local in truth, 2 of those with local evaluation used")


def test_markdown_names_the_versions(capsys):
    _benchmark().main(["--arch", "DnCNN", "--markdown"])
    out = capsys.readouterr().out
    import spandrel
    import torch

    assert f"torch {torch.__version__}, spandrel {spandrel.__version__}" in out
    assert "| name | scale | input |" in out and "| DnCNN | 1 | 32x32 | yes | 5 |" in out


def test_window_attention_is_evaluated_locally_with_its_exact_reach():
    """SwinIR and GRL (shifted window attention, tokens, ``torch.roll``) are captured, their regions of tokens run
    as one operation, and the traced box is the true dependence: reach 7 and 11 px around the 4-px ROI footprint
    (the box y 7:25 and 3:29 of the 32-px input)."""
    rows = {r["name"]: r for r in _benchmark().main(["--arch", "SwinIR,GRL"])}
    assert rows["SwinIR"]["reach px"] == 7 and rows["GRL"]["reach px"] == 11
    assert rows["SwinIR"]["local eval"] == "yes, captured (box y 7:25, x 7:25)"
    assert rows["GRL"]["local eval"] == "yes, captured (box y 3:29, x 3:29)"
    assert all(r["local in truth"] == "yes" and r["traced >= truth"] == "yes" for r in rows.values())
