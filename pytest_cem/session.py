"""Per-test records and the session object that gathers them (on the controller only) and writes the results.

Per-test data travels inside the test report: at the end of the call phase the maps and property outcomes of
a test are appended to ``item.user_properties`` as JSON-safe entries, so pytest-xdist carries them to the
controller and junit-xml lists them as properties:

- ``("cem", "<JSON>")``: ``{"maps": [map summary, ...], "properties": [property record, ...]}`` (see
  :mod:`cem_checks.records`);
- ``("cem:<property name>", "passed: <measured>; bound <bound>")``, one per property outcome, readable.

:class:`CEMSession` is registered as a plugin on the controller (or the only process without xdist); it reads
those entries from the reports, writes ``--cem-json`` and the HTML report ``--cem-report`` (from the same
document, :mod:`cem_checks.reporting.html`) at the end and prints the terminal section "causal properties".
Both paths are checked when the session starts (:func:`check_output_paths`, a usage error); a write that still
fails at the end is printed in that section and fails the session (exit code 4, unless tests failed).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .options import CEMSettings, Sources

USER_PROPERTY = "cem"
PROPERTY_PREFIX = "cem:"


@dataclass
class ItemRecords:
    """What one test produced: map summaries and property records (both JSON-safe dicts)."""

    maps: list = field(default_factory=list)
    properties: list = field(default_factory=list)
    baseline_names: set = field(default_factory=set)
    pending: list = field(default_factory=list)  # (LazyMap, image cap): summarised at the end of the test
    attached: bool = False

    @property
    def empty(self) -> bool:
        return not self.maps and not self.properties and not self.pending

    def flush(self) -> None:
        """Summarise the lazy maps of the test as far as they ran (a map, or its support stage alone); a map no
        assertion consulted ran nothing and is not recorded."""
        from cem_checks.records import result_summary

        for handle, cap in self.pending:
            if handle.result is not None:
                self.maps.append(result_summary(handle.result, max_image_px=cap))
        self.pending.clear()

    def user_properties(self) -> list[tuple[str, str]]:
        out = [(USER_PROPERTY, json.dumps({"maps": self.maps, "properties": self.properties}, sort_keys=True))]
        for p in self.properties:
            verdict = "passed" if p.get("passed") else "failed"
            out.append((PROPERTY_PREFIX + str(p.get("name")), f"{verdict}: {p.get('measured_text')}; bound {p.get('bound_text')}"))
        return out


SETTINGS_KEY = pytest.StashKey[CEMSettings]()
RECORDS_KEY = pytest.StashKey[ItemRecords]()
SOURCES_KEY = pytest.StashKey[Sources]()
BASE_SETTINGS_KEY = pytest.StashKey[CEMSettings]()
PATCH_CACHE_KEY = pytest.StashKey[dict]()
#: Baseline files used in this session: casefolded path of the stem -> (the test id using it, the stem).
BASELINE_OWNERS_KEY = pytest.StashKey[dict]()


def summary_image_px(settings: CEMSettings) -> int:
    """The longest side (px) of the images a map summary embeds under ``settings``: ``--cem-report-max-image-px``
    when the session writes an HTML report or JSON results, else 0 (nothing reads them; the records that travel
    in ``user_properties`` stay small)."""
    if settings.report is None and settings.json is None:
        return 0
    return int(settings.report_max_image_px)


#: The files the session writes at its end: setting name, what it is, an example file name.
OUTPUT_FILES = (("report", "HTML report", "cem-report.html"), ("json", "JSON results", "cem-results.json"))


def output_path_problem(path: str | os.PathLike) -> str | None:
    """Why a file cannot be written at ``path`` (None when it can): ``path`` is a folder, or the nearest of its
    folders that exists is a file or is not writable. Missing folders are no problem: they are created when the
    file is written."""
    p = Path(path)
    if p.is_dir():
        return "it is a folder"
    folder = p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the folder {folder} is not writable"
    return None


def check_output_paths(settings: CEMSettings) -> None:
    """Raise :class:`cem_checks.errors.SettingsError` when ``--cem-report`` or ``--cem-json`` (or their ini keys)
    name a path where the file cannot be written (see :func:`output_path_problem`), or both name one file: the
    session would run every test and then fail to write its results."""
    from cem_checks.errors import SettingsError

    from .options import OPTIONS_BY_NAME, _where

    paths = {}
    for name, what, example in OUTPUT_FILES:
        path = getattr(settings, name)
        if path is None:
            continue
        where = _where(OPTIONS_BY_NAME[name], settings.sources.get(name, "default"))
        problem = output_path_problem(path)
        if problem is not None:
            raise SettingsError(
                f"{where}={path}: cannot write the {what} there: {problem}. Pass a file path in a writable folder, "
                f"e.g. {OPTIONS_BY_NAME[name].cli}={example}."
            )
        paths[name] = (where, path)
    if len(paths) == 2 and paths["report"][1] == paths["json"][1]:
        raise SettingsError(
            f"{paths['report'][0]} and {paths['json'][0]} both name {paths['report'][1]}; one would overwrite the "
            "other. Give each its own file, e.g. --cem-report=cem-report.html --cem-json=cem-results.json."
        )


def records_for(item: pytest.Item) -> ItemRecords:
    rec = item.stash.get(RECORDS_KEY, None)
    if rec is None:
        rec = item.stash[RECORDS_KEY] = ItemRecords()
    return rec


def settings_for(item: pytest.Item) -> CEMSettings:
    """The resolved settings of ``item`` (its ``cem`` markers over the session's CLI and ini), cached."""
    cached = item.stash.get(SETTINGS_KEY, None)
    if cached is not None:
        return cached
    from .options import marker_kwargs, resolve_settings

    markers = list(item.iter_markers("cem"))
    kwargs = marker_kwargs(markers) if markers else {}
    settings = resolve_settings(item.config.stash[SOURCES_KEY], kwargs)
    item.stash[SETTINGS_KEY] = settings
    return settings


def _cem_data(report: pytest.TestReport) -> dict | None:
    for name, value in getattr(report, "user_properties", ()) or ():
        if name == USER_PROPERTY:
            try:
                data = json.loads(value)
            except (TypeError, ValueError):
                return None
            return data if isinstance(data, dict) else None
    return None


def _outcome(report: pytest.TestReport) -> str:
    """passed / failed / skipped, or xfailed / xpassed for a test marked xfail."""
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    return report.outcome


class CEMSession:
    """Gathers the per-test records from the test reports; writes the JSON results; prints the summary."""

    def __init__(self, config: pytest.Config, settings: CEMSettings):
        self.config = config
        self.settings = settings
        self.tests: dict[str, dict[str, Any]] = {}
        self.json_written: str | None = None
        self.json_error: str | None = None
        self.report_written: str | None = None
        self.report_error: str | None = None

    # ------------------------------------------------------------------------------------------ hooks
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not (report.when == "call" or (report.when == "setup" and not report.passed)):
            return
        data = _cem_data(report)
        if data is None and "cem" not in report.keywords:
            return
        entry: dict[str, Any] = {
            "nodeid": report.nodeid,
            "outcome": _outcome(report),
            "duration_s": float(report.duration),
            "maps": list((data or {}).get("maps", [])),
            "properties": list((data or {}).get("properties", [])),
        }
        if hasattr(report, "wasxfail") and report.skipped:
            entry["message"] = f"expected failure ({report.wasxfail or 'xfail'}):\n{report.longreprtext[-4000:]}"
        elif report.skipped and isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
            entry["message"] = str(report.longrepr[2])
        elif report.failed:
            entry["message"] = report.longreprtext[-4000:]
        self.tests[report.nodeid] = entry

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.settings.json is not None:
            try:
                self.json_written = self.write_json(self.settings.json, int(exitstatus))
            except OSError as exc:
                self.json_error = f"cannot write the JSON results to {self.settings.json}: {exc}"
        if self.settings.report is not None:
            try:
                self.report_written = self.write_report(self.settings.report, int(exitstatus))
            except OSError as exc:
                self.report_error = f"cannot write the HTML report to {self.settings.report}: {exc}"
        # a session whose results were asked for but not written does not pass; test failures keep their status
        if (self.json_error or self.report_error) and session.exitstatus in (
                pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.USAGE_ERROR

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        lines = self.summary_lines(verbose=self.config.get_verbosity() > 0)
        if not lines:
            return
        terminalreporter.write_sep("=", "causal properties")
        for line in lines:
            terminalreporter.write_line(line)

    # ------------------------------------------------------------------------------------------ output
    def failed_properties(self) -> list[tuple[str, dict]]:
        return [(nodeid, p) for nodeid, t in sorted(self.tests.items()) for p in t["properties"] if not p.get("passed")]

    def summary_lines(self, verbose: bool = False) -> list[str]:
        s = self.settings
        if not self.tests and s.json is None and s.report is None:
            return []
        lines = []
        for nodeid, p in self.failed_properties():
            # a failure that an xfail marker expected is labelled so, as pytest's own summary does
            label = "XFAIL" if self.tests[nodeid].get("outcome") == "xfailed" else "FAILED"
            lines.append(f"{label} {nodeid} {p.get('name')}: measured {p.get('measured_text')}; bound {p.get('bound_text')}")
        if verbose:
            for nodeid, t in sorted(self.tests.items()):
                for p in t["properties"]:
                    if p.get("passed"):
                        lines.append(f"passed {nodeid} {p.get('name')}: measured {p.get('measured_text')}; bound {p.get('bound_text')}")
        n_props = sum(len(t["properties"]) for t in self.tests.values())
        n_failed = len(self.failed_properties())
        n_maps = sum(len(t["maps"]) for t in self.tests.values())
        n_support = sum(m.get("stage") == "support" for t in self.tests.values() for m in t["maps"])
        lines.append(
            f"{n_props} propert{'y' if n_props == 1 else 'ies'} checked in {len(self.tests)} test"
            f"{'' if len(self.tests) == 1 else 's'}: {n_props - n_failed} passed, {n_failed} failed; "
            f"{n_maps} map{'' if n_maps == 1 else 's'} computed"
            + (f" ({n_support} of them the support stage only)" if n_support else "")
        )
        fix = ("; pass a path in a writable folder. The session fails for it: exit code 4 (usage error) unless "
               "tests failed.")
        if self.json_written is not None:
            lines.append(f"JSON results: {self.json_written}")
        elif self.json_error is not None:
            lines.append(f"JSON results: ERROR: {self.json_error}{fix}")
        if self.report_written is not None:
            lines.append(f"HTML report: {self.report_written}")
        elif self.report_error is not None:
            lines.append(f"HTML report: ERROR: {self.report_error}{fix}")
        return lines

    def document(self, exitstatus: int | None = None) -> dict[str, Any]:
        """The results file's content (see :mod:`cem_checks.records` for the format)."""
        from importlib.metadata import PackageNotFoundError, version

        from cem_checks.records import RESULTS_FORMAT, RESULTS_FORMAT_VERSION

        def ver(dist: str) -> str | None:
            try:
                return version(dist)
            except PackageNotFoundError:
                return None

        tests = [self.tests[k] for k in sorted(self.tests)]
        return {
            "format": RESULTS_FORMAT,
            "format_version": RESULTS_FORMAT_VERSION,
            "environment": {"pytest_cem": ver("pytest-cem"), "torch": ver("torch"), "pytest": pytest.__version__},
            "settings": self.settings.to_record(),
            "summary": {
                "tests": len(tests),
                "maps": sum(len(t["maps"]) for t in tests),
                "properties": sum(len(t["properties"]) for t in tests),
                "failed_properties": len(self.failed_properties()),
                "exitstatus": exitstatus,
            },
            "tests": tests,
        }

    def write_json(self, path: str, exitstatus: int | None = None) -> str:
        """Write :meth:`document` to ``path`` atomically; returns the path."""
        from cem_checks.records import write_document

        return write_document(self.document(exitstatus), path)

    def write_report(self, path: str, exitstatus: int | None = None) -> str:
        """Write the HTML report of :meth:`document` to ``path`` atomically; returns the path."""
        from cem_checks.reporting.html import write_report

        return write_report(self.document(exitstatus), path, show_passing=bool(self.settings.report_all))
