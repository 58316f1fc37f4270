"""A griffe extension for the API reference (mkdocs.yml): the docstrings of the project use reStructuredText
cross-reference roles (:func:`compute_cem`, :class:`~cem_checks.result.CEMResult`), which Markdown would show
verbatim; this writes each as inline code (`compute_cem`, `CEMResult`: a leading ``~`` keeps the last name)."""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|exc|obj|const|term):`(?P<tilde>~?)(?P<target>[^`]+)`")


def _code(m: re.Match) -> str:
    target = " ".join(m.group("target").split()).replace(". ", ".")
    if target.endswith(">") and "<" in target:  # :role:`text <target>`
        target = target[: target.index("<")].strip()
    return f"`{target.rsplit('.', 1)[-1] if m.group('tilde') else target}`"


class RstRoles(griffe.Extension):
    """Rewrites the reStructuredText roles of every docstring as inline code."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_code, obj.docstring.value)
