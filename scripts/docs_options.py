"""The table of the plugin's options in docs/options.md, made from pytest_cem.options.OPTIONS (the table the
flags, ini keys and resolver come from), so that the documentation cannot drift from the code.

    python scripts/docs_options.py           # print the table
    python scripts/docs_options.py --write   # rewrite it in docs/options.md (between the two marker comments)

tests/test_docs.py fails when docs/options.md holds another table than this script makes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "options.md"
START, END = "<!-- options-table: start (scripts/docs_options.py --write) -->", "<!-- options-table: end -->"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|")


def options_table() -> str:
    """The markdown table: one row per option, in the order of ``OPTIONS``."""
    sys.path.insert(0, str(ROOT))
    from pytest_cem.options import OPTIONS

    rows = ["| command line | ini key | default | `@pytest.mark.cem` | what it sets |", "|---|---|---|---|---|"]
    for o in OPTIONS:
        flag = f"`{o.cli}`" if o.flag else f"`{o.cli} {_cell(o.metavar or 'VALUE')}`"
        default = "off" if o.flag and not o.default else "none" if o.default is None else f"`{_cell(o.default)}`"
        marker = f"`{o.name}=`" if o.engine else ""
        rows.append(f"| {flag} | `{o.ini}` | {default} | {marker} | {_cell(o.help)} |")
    return "\n".join(rows) + "\n"


def page_table(text: str) -> str:
    """The table between the markers of ``text`` (the page's current one)."""
    if START not in text or END not in text:
        raise SystemExit(f"{PAGE} lacks the markers {START!r} and {END!r}")
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite the table in {PAGE.relative_to(ROOT)}")
    args = parser.parse_args()
    table = options_table()
    if not args.write:
        print(table, end="")
        return 0
    text = PAGE.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    PAGE.write_text(f"{head}{START}\n{table}{END}{rest.split(END, 1)[1]}", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
