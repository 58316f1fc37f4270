"""``import cem_checks`` is lazy (PEP 562) and the plugin's start-up is torch-free: loading the plugin, or a session
stopped by a bad ``--cem-device``, never imports torch. The shared constants agree with the modules that use them."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import cem_checks
from cem_checks import constants


def _python(code: str, cwd: Path | None = None) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_importing_the_plugin_the_package_errors_and_constants_imports_no_torch():
    code = ("import sys, pytest_cem.plugin, cem_checks, cem_checks.constants, cem_checks.errors; "
            "from cem_checks import SettingsError, __version__; "
            "print('torch' in sys.modules, 'numpy' in sys.modules)")
    assert _python(code) == "False False"


def test_a_bad_cem_device_stops_pytest_without_importing_torch(tmp_path):
    (tmp_path / "test_x.py").write_text("def test_x():\n    pass\n")
    code = ("import sys, pytest; "
            "code = pytest.main(['--cem-device=bogus', '-p', 'no:cacheprovider', '-p', 'no:randomly', 'test_x.py']); "
            "print(int(code), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "4 False", out.stdout + out.stderr
    assert "--cem-device='bogus' is not a device; expected auto, cpu, cuda, cuda:N or mps" in out.stderr


def test_public_names_resolve_on_access():
    code = ("import sys, cem_checks as cc; assert 'torch' not in sys.modules; "
            "f = cc.compute_cem; from cem_checks import gini, CEMResult; "
            "print('torch' in sys.modules, f.__module__, gini.__module__, cc.metrics.__name__)")
    assert _python(code) == "True cem_checks.engine.job cem_checks.metrics cem_checks.metrics"
    for name in cem_checks.__all__:
        assert getattr(cem_checks, name) is not None
    assert set(cem_checks.__all__) <= set(dir(cem_checks))
    with pytest.raises(AttributeError, match="module 'cem_checks' has no attribute 'no_such_name'"):
        cem_checks.no_such_name  # noqa: B018


def test_the_names_for_static_analysers_are_the_lazy_ones():
    tree = ast.parse(Path(cem_checks.__file__).read_text())
    guarded = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    static = {n.module: tuple(sorted(a.name for a in n.names)) for n in guarded.body if isinstance(n, ast.ImportFrom)}
    assert static == {module: tuple(sorted(names)) for module, names in cem_checks._EXPORTS.items()}


def test_shared_constants_agree_with_their_users():
    from cem_checks.engine import options as engine_options
    from cem_checks.reporting import images
    from pytest_cem.options import OPTIONS_BY_NAME

    assert constants.MODES == engine_options.MODES and constants.PRECISIONS == engine_options.PRECISIONS
    assert constants.DEFAULT_MAX_IMAGE_PX == images.DEFAULT_MAX_IMAGE_PX == 384
    defaults = {k: p.default for k, p in inspect.signature(cem_checks.compute_cem).parameters.items()}
    assert (defaults["mode"], defaults["seed"], defaults["device"], defaults["batch_size"]) == (
        constants.DEFAULT_MODE, constants.DEFAULT_SEED, constants.DEFAULT_DEVICE, constants.DEFAULT_BATCH_SIZE)
    plugin = {name: OPTIONS_BY_NAME[name].default for name in
              ("mode", "seed", "device", "batch_size", "report_max_image_px", "baseline_dir")}
    assert plugin == {"mode": constants.DEFAULT_MODE, "seed": constants.DEFAULT_SEED,
                      "device": constants.DEFAULT_DEVICE, "batch_size": constants.DEFAULT_BATCH_SIZE,
                      "report_max_image_px": constants.DEFAULT_MAX_IMAGE_PX,
                      "baseline_dir": constants.DEFAULT_BASELINE_DIR}


@pytest.mark.parametrize("name, ok", [("auto", True), ("cpu", True), ("cuda", True), ("cuda:12", True),
                                      ("mps", True), ("gpu", False), ("cuda:", False), ("cuda:x", False)])
def test_one_device_pattern_for_the_plugin_the_command_and_the_library(name, ok):
    from cem_checks import DeviceError, resolve_device

    assert bool(constants.DEVICE_RE.match(name)) is ok
    if not ok:
        with pytest.raises(DeviceError, match="is unknown; expected auto, cpu, cuda, cuda:N or mps"):
            resolve_device(name)
    elif name in ("auto", "cpu"):
        assert resolve_device(name).type in ("cpu", "cuda")
