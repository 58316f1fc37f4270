"""The CI recipe (docs/ci.md): the GitHub Actions and GitLab CI jobs restore the map cache, keep the report and
the JSON results whatever the outcome, and their pytest line works here on a small suite."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML (the dev extra) parses the CI recipes")

ROOT = Path(__file__).resolve().parents[1]
GITHUB = ROOT / "docs" / "ci" / "github-actions.yml"
GITLAB = ROOT / "docs" / "ci" / "gitlab-ci.yml"

#: a passing and a failing causal property on tiny maps (radius-2 and radius-5 stacks, blocks of 4 px)
SUITE = """
import numpy as np
import pytest

import cem_checks as cc
from nets import ConvStack

IMG = (np.arange(32 * 32 * 3).reshape(32, 32, 3) * 37 % 256).astype(np.uint8)
TINY = dict(task="dn25", roi=(8, 8, 8), block_size=4, coarse=2, fine=4, device="cpu")


@pytest.mark.cem(**TINY)
def test_local(cem):
    cc.assert_receptive_field_within(cem(ConvStack((1, 1)), IMG), radius=2)


@pytest.mark.cem(**TINY)
def test_too_wide(cem):
    cc.assert_receptive_field_within(cem(ConvStack((1, 1, 1, 1, 1)), IMG), radius=1)
"""


def _pytest_line(commands: list[str]) -> list[str]:
    (line,) = [c for c in commands if " -m pytest " in c]
    return shlex.split(line)


def _option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def github_job() -> tuple[dict, list[str]]:
    doc = yaml.safe_load(GITHUB.read_text())
    (job,) = doc["jobs"].values()
    return job, _pytest_line([s["run"] for s in job["steps"] if "run" in s])


def gitlab_job() -> tuple[dict, list[str]]:
    doc = yaml.safe_load(GITLAB.read_text())
    (job,) = [v for k, v in doc.items() if isinstance(v, dict) and "script" in v]
    return job, _pytest_line(job["script"])


def test_docs_ci_md_shows_both_files_verbatim():
    text = (ROOT / "docs" / "ci.md").read_text()
    assert GITHUB.read_text() in text and GITLAB.read_text() in text


def test_github_job_restores_and_saves_the_cache_and_uploads_the_report_always():
    job, argv = github_job()
    steps = job["steps"]
    uses = [s.get("uses", "").split("@")[0] for s in steps]
    run_at = next(i for i, s in enumerate(steps) if " -m pytest " in s.get("run", ""))
    restore, save, upload = (uses.index(u) for u in ("actions/cache/restore", "actions/cache/save",
                                                    "actions/upload-artifact"))
    assert restore < run_at < save and run_at < upload
    cache_dir = _option(argv, "--cem-cache-dir")
    assert steps[restore]["with"]["path"] == steps[save]["with"]["path"] == cache_dir
    assert steps[restore]["with"]["restore-keys"].strip() in steps[save]["with"]["key"]
    assert steps[save]["if"] == steps[upload]["if"] == "always()"
    uploaded = steps[upload]["with"]["path"].split()
    assert sorted(uploaded) == sorted([_option(argv, "--cem-report"), _option(argv, "--cem-json")])
    assert argv[:3] == ["python", "-m", "pytest"] and "-rs" in argv


def test_gitlab_job_caches_always_and_keeps_the_artifacts_always():
    job, argv = gitlab_job()
    cache_dir = _option(argv, "--cem-cache-dir")
    assert [p.rstrip("/") for p in job["cache"]["paths"]] == [cache_dir]
    assert job["cache"]["when"] == "always" and job["artifacts"]["when"] == "always"
    assert sorted(job["artifacts"]["paths"]) == sorted([_option(argv, "--cem-report"), _option(argv, "--cem-json")])
    assert argv[:3] == ["python", "-m", "pytest"] and "-rs" in argv


def test_both_jobs_install_the_cpu_wheel_of_torch():
    for text in (GITHUB.read_text(), GITLAB.read_text()):
        assert "--index-url https://download.pytorch.org/whl/cpu" in text


def _install_lines(commands: list[str]) -> list[str]:
    return [line.strip() for c in commands for line in c.splitlines()
            if "pip install" in line and "pytest-cem" in line and not line.strip().startswith("#")]


def test_both_jobs_install_pytest_cem_pinned_from_git_at_the_project_version():
    """pytest-cem is not on PyPI: a bare `pip install pytest-cem` fails. The jobs install the tag of this version."""
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    github, gitlab = github_job()[0], gitlab_job()[0]
    for commands in ([s["run"] for s in github["steps"] if "run" in s], gitlab["before_script"]):
        (line,) = _install_lines(commands)
        (requirement,) = re.findall(r'"([^"]+)"', line)
        assert requirement == f"pytest-cem @ git+https://<host>/<owner>/pytest-cem@v{version}", line
    # pip needs git for a git URL: the slim image of the GitLab job has none until the job installs it
    before = gitlab["before_script"]
    assert "slim" in gitlab["image"] and any("apt-get install" in c and " git" in c for c in
                                              before[:before.index(_install_lines(before)[0])])
    assert f"pytest-cem@v{version}" in (ROOT / "README.md").read_text()


def _pytest_lines() -> list:
    """The distinct pytest lines of the recipes, each run once (its id names the recipes that use it)."""
    lines: dict[tuple, list[str]] = {}
    for name, job in (("github", github_job), ("gitlab", gitlab_job)):
        lines.setdefault(tuple(job()[1]), []).append(name)
    return [pytest.param(list(argv), id="+".join(names)) for argv, names in lines.items()]


@pytest.mark.slow
@pytest.mark.parametrize("argv", _pytest_lines())
def test_the_pytest_line_writes_report_and_results_even_when_a_property_fails(argv, tmp_path):
    tests = argv[3]  # the suite's folder
    suite = tmp_path / tests
    suite.mkdir(parents=True)
    (suite / "nets.py").write_text((Path(__file__).parent / "nets.py").read_text())
    (suite / "test_causal.py").write_text(SUITE)
    command = [sys.executable, *argv[1:]]

    def run() -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)

    first = run()
    assert first.returncode == 1, first.stdout + first.stderr  # the failing property fails the job ...
    assert "1 failed, 1 passed" in first.stdout
    report, results = tmp_path / _option(argv, "--cem-report"), tmp_path / _option(argv, "--cem-json")
    html = report.read_text(encoding="utf-8")  # ... after the report and the results are written
    assert "test_too_wide" in html and "receptive_field_within" in html
    doc = json.loads(results.read_text())
    assert sorted(t["outcome"] for t in doc["tests"]) == ["failed", "passed"]
    cache = tmp_path / _option(argv, "--cem-cache-dir")
    cached = sorted(p.relative_to(cache) for p in cache.rglob("*") if p.is_file())
    assert cached, "the cache folder holds the finished work of the maps"
    report.unlink()
    results.unlink()
    second = run()  # the next run of the job, with the restored cache
    assert second.returncode == 1 and report.is_file() and results.is_file()
    again = json.loads(results.read_text())
    passes = {t["nodeid"]: sum(m["forward_passes"] for m in t["maps"]) for t in doc["tests"]}
    passes_again = {t["nodeid"]: sum(m["forward_passes"] for m in t["maps"]) for t in again["tests"]}
    assert all(passes_again[k] < passes[k] for k in passes), (passes, passes_again)
