"""How properties are counted, in the same words in the HTML report and in the terminal's "causal properties"
section: a failed property of a test that pytest counted as an expected failure (xfail) is an expected failure,
apart from the failures."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["PROPERTY_STATUS", "properties_text", "property_status"]

#: The status of a property: passed, failed, or failed inside a test pytest counted as an expected failure (xfail),
#: with the label the report shows.
PROPERTY_STATUS = {"passed": "passed", "failed": "failed", "xfailed": "expected failure (xfail)"}


def property_status(record: dict[str, Any], test_outcome: Any) -> str:
    """The status (a key of :data:`PROPERTY_STATUS`) of property ``record`` of a test whose outcome is
    ``test_outcome``."""
    if record.get("passed"):
        return "passed"
    return "xfailed" if test_outcome == "xfailed" else "failed"


def properties_text(statuses: Iterable[str]) -> str:
    """``"36 passed, 0 failed, 2 expected failures (in xfailed tests)"``: the properties of ``statuses``
    (:func:`property_status` values) by status; the expected failures only when there are some."""
    statuses = list(statuses)
    n_expected = statuses.count("xfailed")
    text = f"{statuses.count('passed')} passed, {statuses.count('failed')} failed"
    if n_expected:
        text += f", {n_expected} expected failure{'' if n_expected == 1 else 's'} (in xfailed tests)"
    return text
