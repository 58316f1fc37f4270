"""The documentation: the site builds with ``mkdocs build --strict`` (broken links, anchors and API references
fail), the options table is the one pytest_cem/options.py makes, every ``cem`` subcommand has its section, and the
README stays short with relative links that point at files."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from doc_snippets import ROOT


def _docs_options():
    spec = importlib.util.spec_from_file_location("docs_options", ROOT / "scripts" / "docs_options.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_options_table_is_made_from_the_option_table():
    from pytest_cem.options import OPTIONS

    docs_options = _docs_options()
    table = docs_options.options_table()
    assert [line.split("|")[1].strip().strip("`").split()[0] for line in table.splitlines()[2:]] == [
        o.cli for o in OPTIONS]
    documented = docs_options.page_table(docs_options.PAGE.read_text(encoding="utf-8"))
    assert documented == table, "docs/options.md is out of date: run python scripts/docs_options.py --write"


def test_every_cem_subcommand_has_its_section():
    from cem_checks.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    headings = re.findall(r"^## `cem (\w+)`$", (ROOT / "docs" / "cli.md").read_text(), re.M)
    assert set(sub.choices) and sorted(headings) == sorted(sub.choices)


def _slug(heading: str) -> str:
    """The anchor GitHub and mkdocs give a heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_readme_relative_links_point_at_existing_files_and_headings():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert len(local) >= 10, local  # the pictures and the docs pages
    broken = []
    for link in local:
        path, _, anchor = link.partition("#")
        target = ROOT / path if path else ROOT / "README.md"
        if not target.is_file():
            broken.append(f"{link}: no file {target.relative_to(ROOT)}")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link}: no heading #{anchor} in {target.relative_to(ROOT)}")
    assert not broken, broken


def test_readme_is_a_short_introduction():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move details to a page of docs/"


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs (the docs extra) builds the documentation")
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] (the docs extra) makes the API pages")
    site = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", ROOT / "mkdocs.yml",
                          "--site-dir", site], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    pages = {p.parent.relative_to(site).as_posix().replace(".", "index"): p for p in site.rglob("index.html")}
    expected = {p.stem for p in (ROOT / "docs").glob("*.md")}
    assert expected <= set(pages), sorted(expected - set(pages))
    api = pages["api"].read_text(encoding="utf-8")
    for ident in ("cem_checks.compute_cem", "cem_checks.checks.assert_receptive_field_within", "cem_checks.CEMResult",
                  "cem_checks.sweeps.Sweep", "pytest_cem.fixtures.cem_load_model"):
        assert f'id="{ident}"' in api, ident
    assert ":func:`" not in api and ":class:`" not in api  # the roles of the docstrings became code
    assert "--cem-report-max-image-px" in pages["options"].read_text(encoding="utf-8")
