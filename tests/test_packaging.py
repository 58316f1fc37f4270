"""The distribution: pytest11 entry point, plugin loading, console script."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

import cem_checks as cc
from nets import ConvStack

pytest_plugins = ["pytester"]


def test_pytest11_entry_point_names_the_plugin():
    eps = [ep for ep in entry_points(group="pytest11") if ep.name == "cem"]
    assert len(eps) == 1 and eps[0].value == "pytest_cem.plugin"
    assert eps[0].load().__name__ == "pytest_cem.plugin"


def test_cem_checks_imports_no_pytest():
    code = "import sys, cem_checks, cem_checks.engine; print('pytest' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_plugin_loads_and_registers_the_marker(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.cem(task="dn50")
        def test_marked():
            pass
        """
    )
    result = pytester.runpytest("--strict-markers")  # loaded through the pytest11 entry point
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["cem: cem_checks *, torch *, default device *"])


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_console_script_maps_a_torchscript_model(tmp_path, natural32):
    model = torch.jit.script(ConvStack((1, 1)))
    model.save(str(tmp_path / "m.pt"))
    from PIL import Image

    Image.fromarray(natural32).save(tmp_path / "img.png")
    exe = Path(sys.executable).with_name("cem")
    out = subprocess.run(
        [str(exe), "map", "--model", str(tmp_path / "m.pt"), "--image", str(tmp_path / "img.png"), "--task", "dn25",
         "--roi", "8,8,8", "--block-size", "4", "--device", "cpu", "-o", str(tmp_path / "map.npz")],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "map 8x8 blocks" in out.stdout
    res = cc.CEMResult.load(tmp_path / "map.npz")
    assert res.support.sum() == int((res.distance <= 2).sum())
    bad = subprocess.run([str(exe), "map", "--model", str(tmp_path / "m.pt"), "--image", str(tmp_path / "img.png"),
                          "--task", "dn25", "--roi", "30,30,8", "-o", str(tmp_path / "x.npz")], capture_output=True, text=True)
    assert bad.returncode == 2 and "outside the 32x32" in bad.stderr
