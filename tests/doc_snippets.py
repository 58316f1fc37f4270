"""The code blocks of README.md and docs/*.md, and how each one runs (the convention, for writers, is in
docs/development.md, "Code blocks in the documentation").

A fenced block's language says what it is: a ``python`` block runs; a block of any other language (``sh``,
``yaml``, ``text``, ``toml``, ``ini``) is shown, never run; a fence without a language is refused. An HTML
comment on the line before a ``python`` block changes how it runs:

- ``<!-- snippet: pytest -->``: a test file, run with pytest (the plugin's fixtures and pytest's own);
- ``<!-- snippet: continue -->``: appended to the page's previous python block, the two run as one file;
- ``<!-- snippet: skip (reason) -->``: not run, for the reason given.

The others run as a plain Python script. Every page's blocks run in a temporary folder outside the checkout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: the languages of blocks that are shown only
SHOWN = ("sh", "yaml", "text", "toml", "ini")
MARKS = ("pytest", "continue", "skip")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_MARK = re.compile(r"^\s*<!--\s*snippet:\s*(?P<mark>[\w-]+)\s*(?:\((?P<reason>.*)\))?\s*-->\s*$")


def pages() -> list[Path]:
    """README.md and every page of docs/, in a fixed order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@dataclass(frozen=True)
class Block:
    """One fenced code block: ``line`` is the 1-based line of its first code line."""

    page: Path
    line: int
    language: str
    code: str
    mark: str | None = None
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


@dataclass
class Program:
    """What runs: a python block and the blocks that continue it. ``kind``: ``"python"`` or ``"pytest"``."""

    kind: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def where(self) -> str:
        return self.blocks[0].where

    @property
    def name(self) -> str:
        """A file name for it: ``test_<page>_<line>.py`` (pytest) or ``snippet_<page>_<line>.py``."""
        first = self.blocks[0]
        stem = re.sub(r"\W", "_", str(first.page.relative_to(ROOT).with_suffix(""))).lower()
        return f"{'test' if self.kind == 'pytest' else 'snippet'}_{stem}_{first.line}.py"

    def source(self) -> str:
        return "\n".join(f"# {b.where}\n{b.code}" for b in self.blocks)


def blocks(page: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of ``page`` and the errors of its markup (a fence without language, an unknown mark,
    a mark before a block that is not python, a skip without its reason, an unclosed fence)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    errors: list[str] = []
    rel = page.relative_to(ROOT)
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, language = len(m.group("indent")), m.group("fence"), m.group("info").strip()
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and not re.fullmatch(rf"[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*", lines[i]):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        if i == len(lines):
            errors.append(f"{rel}:{start + 1}: the fence opened here is never closed")
            break
        i += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        mark, reason = None, ""
        if "snippet:" in prev:
            mm = _MARK.match(prev)
            if not mm or mm.group("mark") not in MARKS:
                errors.append(f"{rel}:{start}: {prev.strip()!r} is not a snippet mark; expected one of "
                              + ", ".join(f"<!-- snippet: {k} -->" for k in MARKS))
                continue
            mark, reason = mm.group("mark"), (mm.group("reason") or "").strip()
        where = f"{rel}:{start + 2}"
        if not language:
            errors.append(f"{where}: a code block without a language; write ```python (runs) or one of "
                          f"{', '.join(SHOWN)} (shown only)")
        elif language != "python" and language not in SHOWN:
            errors.append(f"{where}: unknown code block language {language!r}; expected python or one of "
                          f"{', '.join(SHOWN)}")
        elif mark is not None and language != "python":
            errors.append(f"{where}: the snippet mark {mark!r} stands before a {language} block; only python "
                          "blocks run")
        elif mark == "skip" and not reason:
            errors.append(f"{where}: <!-- snippet: skip --> needs its reason: <!-- snippet: skip (why) -->")
        found.append(Block(page, start + 2, language, "\n".join(body) + "\n", mark, reason))
    return found, errors


def programs(page: Path) -> tuple[list[Program], list[str]]:
    """The programs of ``page`` in page order (skipped blocks left out) and the errors of its markup."""
    found, errors = blocks(page)
    progs: list[Program] = []
    for b in found:
        if b.language != "python" or b.mark == "skip":
            continue
        if b.mark == "continue":
            if not progs:
                errors.append(f"{b.where}: <!-- snippet: continue --> but no python block runs before it on the page")
                continue
            progs[-1].blocks.append(b)
        else:
            progs.append(Program("pytest" if b.mark == "pytest" else "python", [b]))
    return progs, errors
