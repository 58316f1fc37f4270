"""Every code block of README.md and docs/*.md is marked (tests/doc_snippets.py says how), and every python block
runs, outside the checkout: plain blocks as scripts, ``<!-- snippet: pytest -->`` blocks as test files with pytest.
A page's scripts run in one interpreter, its test files in one pytest run, in a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from doc_snippets import ROOT, blocks, pages, programs

#: a skipped block is an untested block: keep them few
MAX_SKIPPED = 4

#: runs each script given on the command line in a fresh namespace, as ``python script.py`` would
RUNNER = """
import runpy, sys
for path in sys.argv[1:]:
    print(f"--- {path}", flush=True)
    runpy.run_path(path, run_name="__main__")
"""

#: warnings of the library are errors here, as in the project's own tests: an example must not trigger one
STRICT = ["-W", "error::cem_checks.errors.CEMWarning"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PYTEST_")}


def test_every_code_block_is_marked():
    errors = [e for page in pages() for e in programs(page)[1]]
    assert not errors, "\n".join(errors)
    skipped = [f"{b.where} ({b.reason})" for page in pages() for b in blocks(page)[0] if b.mark == "skip"]
    assert len(skipped) <= MAX_SKIPPED, f"{len(skipped)} skipped python blocks, at most {MAX_SKIPPED}: {skipped}"


def test_the_readme_and_every_docs_page_have_python_blocks_that_run():
    """The page list below is not empty by accident: the README's test file and the pages' examples are found."""
    kinds = {page.name: {p.kind for p in programs(page)[0]} for page in pages()}
    assert "pytest" in kinds["README.md"]
    assert sum(bool(k) for k in kinds.values()) >= 5, kinds


def _runnable_pages() -> list:
    return [pytest.param(page, id=str(page.relative_to(ROOT))) for page in pages() if programs(page)[0]]


@pytest.mark.slow
@pytest.mark.parametrize("page", _runnable_pages())
def test_python_blocks_run_outside_the_checkout(page, tmp_path):
    progs, errors = programs(page)
    assert not errors, "\n".join(errors)
    scripts = [p for p in progs if p.kind == "python"]
    tests = [p for p in progs if p.kind == "pytest"]
    for p in progs:
        (tmp_path / p.name).write_text(p.source(), encoding="utf-8")
    assert not tmp_path.resolve().is_relative_to(ROOT)
    if scripts:
        out = subprocess.run([sys.executable, *STRICT, "-c", RUNNER, *(p.name for p in scripts)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=600, env=_env())
        assert out.returncode == 0, f"a python block of {page.name} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    if tests:
        out = subprocess.run([sys.executable, "-m", "pytest", *STRICT, "-p", "no:cacheprovider", "-q",
                              "--junitxml", "junit.xml", *(p.name for p in tests)], cwd=tmp_path, capture_output=True,
                             text=True, timeout=600, env=_env())
        assert out.returncode == 0, f"a test file of {page.name} failed:\n{out.stdout[-6000:]}\n{out.stderr[-3000:]}"
        cases = ET.parse(tmp_path / "junit.xml").getroot().iter("testcase")
        files = {c.get("classname").split(".")[0] for c in cases}
        assert files == {Path(p.name).stem for p in tests}, f"every test file holds a test: {files}"
