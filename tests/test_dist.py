"""The distribution as users install it (``make dist``): ``python -m build`` makes an sdist and a wheel that twine
accepts and that carry the report template and the bundled data; the wheel, installed into a fresh virtual
environment outside the checkout, runs the README's test file with ``--cem-report``."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from doc_snippets import ROOT, programs

pytest.importorskip("build", reason="the build frontend (the dev extra) makes the sdist and the wheel")

#: files that are not Python modules and must ship: source path -> path inside the wheel
SHIPPED = {
    **{p: Path("cem_checks/templates") / p.name for p in sorted((ROOT / "templates").glob("*.j2"))},
    **{p: p.relative_to(ROOT) for p in sorted((ROOT / "cem_checks" / "data").rglob("*"))
       if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts},
}


def _clean_env() -> dict[str, str]:
    """The environment of the child processes: no PYTHONPATH, no pytest variables of this run (xdist worker ids)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PYTEST_")}


def _run(argv: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    out = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         env=_clean_env())
    assert out.returncode == 0, f"{argv}\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="session")
def dist(tmp_path_factory) -> dict[str, Path]:
    """``python -m build`` of the checkout (the sdist, then the wheel built from it): {"sdist": ..., "wheel": ...}."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", out, ROOT], cwd=out, timeout=600)
    (sdist,), (wheel,) = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    return {"sdist": sdist, "wheel": wheel}


def test_sdist_and_wheel_pass_twine_check(dist):
    pytest.importorskip("twine", reason="twine (the dev extra) checks the distributions")
    out = _run([sys.executable, "-m", "twine", "check", "--strict", dist["sdist"], dist["wheel"]], cwd=dist["wheel"].parent)
    assert out.stdout.count("PASSED") == 2, out.stdout


def test_wheel_carries_the_templates_the_bundled_data_and_the_entry_points(dist):
    names = set(zipfile.ZipFile(dist["wheel"]).namelist())
    assert SHIPPED and any(str(p).endswith(".j2") for p in SHIPPED.values())
    missing = sorted(str(p) for p in SHIPPED.values() if str(p) not in names)
    assert not missing, f"the wheel lacks {missing}"
    assert {"cem_checks/__init__.py", "cem_checks/engine/__init__.py", "pytest_cem/plugin.py"} <= names
    (info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
    ep = configparser.ConfigParser()
    ep.read_string(zipfile.ZipFile(dist["wheel"]).read(f"{info}/entry_points.txt").decode())
    assert dict(ep["pytest11"]) == {"cem": "pytest_cem.plugin"}
    assert dict(ep["console_scripts"]) == {"cem": "cem_checks.cli:main"}
    with tarfile.open(dist["sdist"]) as tar:  # the wheel is built from the sdist: it must hold the sources too
        top = tar.getnames()[0].split("/")[0]
        in_sdist = {n.removeprefix(top + "/") for n in tar.getnames()}
    assert not sorted(str(p.relative_to(ROOT)) for p in SHIPPED if str(p.relative_to(ROOT)) not in in_sdist)


def test_every_package_of_the_checkout_is_listed_and_ships_in_the_wheel(dist):
    """A subpackage left out of ``[tool.setuptools] packages`` ships only as package data of its parent, with
    setuptools' warning "Package would be ignored": every folder with an ``__init__.py`` is listed, every module
    ships."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in ("cem_checks", "pytest_cem")
             for p in (ROOT / top).rglob("__init__.py") if "__pycache__" not in p.parts}
    assert "cem_checks.local_eval" in found
    assert not sorted(found - listed), f"pyproject.toml's packages lack {sorted(found - listed)}"
    names = set(zipfile.ZipFile(dist["wheel"]).namelist())
    modules = sorted(str(p.relative_to(ROOT)) for top in ("cem_checks", "pytest_cem")
                     for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts)
    assert not [m for m in modules if m not in names], f"the wheel lacks {[m for m in modules if m not in names]}"

def _dependencies_view(folder: Path) -> Path:
    """A folder of links to everything this environment has installed except pytest-cem itself (its editable
    install: the dist-info, the import finder and its .pth): the dependencies (torch, numpy, pytest, ...) without
    the checkout."""
    site = Path(sysconfig.get_paths()["purelib"])
    folder.mkdir()
    for entry in site.iterdir():
        name = entry.name.lower()
        if name.startswith(("__editable__", "pytest_cem", "cem_checks")) or name.endswith(".pth"):
            continue
        (folder / entry.name).symlink_to(entry)
    return folder


@pytest.mark.slow
def test_the_wheel_in_a_fresh_environment_runs_the_readme_test_file(dist, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=tmp_path).stdout.strip())
    # a plain path line: the folder joins sys.path, and no .pth file of it is processed
    (purelib / "dependencies.pth").write_text(f"{_dependencies_view(tmp_path / 'deps')}\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--quiet",
          dist["wheel"]], cwd=tmp_path)

    where = json.loads(_run([python, "-c", (
        "import json, importlib.metadata as md, cem_checks, pytest_cem.plugin, torch\n"
        "dists = [d for d in md.distributions() if d.metadata['Name'] == 'pytest-cem']\n"
        "(ep,) = [e for e in md.entry_points(group='pytest11') if e.name == 'cem']\n"
        "print(json.dumps({'cem_checks': cem_checks.__file__, 'plugin': pytest_cem.plugin.__file__,\n"
        "    'torch': torch.__file__, 'dists': [str(d.locate_file('')) for d in dists],\n"
        "    'entry_point': [ep.value, str(ep.dist.locate_file(''))]}))"
    )], cwd=tmp_path).stdout)
    assert Path(where["cem_checks"]).is_relative_to(purelib), where  # the wheel's code, not the checkout's
    assert Path(where["plugin"]).is_relative_to(purelib), where
    assert where["dists"] == [str(purelib)], where  # one pytest-cem: the wheel's (no editable install in sight)
    assert where["entry_point"] == ["pytest_cem.plugin", str(purelib)], where
    assert Path(where["torch"]).is_relative_to(tmp_path / "deps"), where  # the dependencies through the view

    cem = venv / "bin" / "cem"  # the console script the wheel installed
    assert cem.read_text().splitlines()[0] == f"#!{python}"
    assert _run([cem, "--version"], cwd=tmp_path).stdout.strip() == f"cem {dist['wheel'].name.split('-')[1]}"

    readme_tests = [p for p in programs(ROOT / "README.md")[0] if p.kind == "pytest"]
    assert readme_tests, "README.md has a test file (a python block marked <!-- snippet: pytest -->)"
    work = tmp_path / "project"
    work.mkdir()
    (work / "test_my_model.py").write_text(readme_tests[0].source())
    out = subprocess.run([python, "-m", "pytest", "test_my_model.py", "--cem-report", "cem-report.html",
                          "-p", "no:cacheprovider", "-rs"], cwd=work, capture_output=True, text=True, timeout=300,
                         env=_clean_env())
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1].strip("= ").startswith("1 passed in"), out.stdout
    # the plugin's terminal summary: the properties it checked and the report it wrote
    assert "2 properties checked in 1 test: 2 passed, 0 failed" in out.stdout, out.stdout
    assert f"HTML report: {work / 'cem-report.html'}" in out.stdout, out.stdout
    html = (work / "cem-report.html").read_text(encoding="utf-8")
    assert "receptive_field_within" in html and "test_my_model.py" in html
