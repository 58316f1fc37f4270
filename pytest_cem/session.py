"""Per-test records and the session object that gathers them (on the controller only) and writes the results.

Per-test data travels inside the test report, so pytest-xdist carries it to the controller:

- the report attribute ``cem_records`` of the call phase's report (:data:`REPORT_ATTRIBUTE`; pytest serialises
  every attribute of a report for xdist): ``"<JSON>"`` of ``{"maps": [map summary, ...], "properties": [property
  record, ...], "sweeps": [sweep record, ...]}`` (see :mod:`cem_checks.records`): the full records, per-block grids,
  per-item tables and images included, when ``--cem-report`` or ``--cem-json`` asks for them, else the scalar map
  summaries and sweep summaries (:func:`cem_checks.records.sweep_scalars`);
- ``item.user_properties``, which junit-xml writes as properties of the test case:
  ``("cem", "<JSON>")`` with the scalar map summaries (:func:`cem_checks.records.scalar_summary`: stage, counts,
  support radius, effect range, base PSNR, forward passes, settings) and the verdicts and numbers of the
  properties (:func:`cem_checks.records.property_scalars`), about 1 KB per map whatever its grid; with
  ``--cem-junit-maps`` the full records instead; and ``("cem:<property name>", "passed: <measured>; bound
  <bound>")``, one per property outcome, readable.

Paths under the rootdir are written relative to it in the records (:func:`cem_checks.records.relative_paths`:
e.g. a baseline's path in a failure message), so that results files compare across machines.

:class:`CEMSession` is registered as a plugin on the controller (or the only process without xdist); it records
every test of the session (with or without maps: pytest's outcome of each, a setup failure as ``"error"``, xfail
verdicts, tests skipped before they ran, collection errors), reads the maps and properties from the reports,
writes ``--cem-json`` and the HTML report ``--cem-report`` (from one document built by
:func:`cem_checks.records.results_document`, :mod:`cem_checks.reporting.html`) at the end and prints the
terminal section "causal properties".
Both paths are checked when the session starts (:func:`check_output_paths`, a usage error); a write that still
fails at the end is printed in that section and fails the session (exit code 4, unless tests failed).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from .options import CEMSettings, Sources

#: The outcomes of the results file (:data:`cem_checks.records.OUTCOMES`; not imported here: cem_checks loads
#: lazily), the categories of pytest's summary line.
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")

USER_PROPERTY = "cem"
PROPERTY_PREFIX = "cem:"
#: The attribute of a call report that carries a test's full records to the controller.
REPORT_ATTRIBUTE = "cem_records"
#: Characters of a failure's text kept per test in the records (the end of it, where pytest puts the error).
MESSAGE_CHARS = 4000


@dataclass
class ItemRecords:
    """What one test produced: map summaries and property records (both JSON-safe dicts, paths under ``root``
    written relative to it)."""

    root: str | None = None
    maps: list = field(default_factory=list)
    properties: list = field(default_factory=list)
    baseline_names: set = field(default_factory=set)
    pending: list = field(default_factory=list)  # (LazyMap, image cap): summarised at the end of the test
    sweeps: list = field(default_factory=list)  # sweep records (cem_checks.records.sweep_record)
    pending_sweeps: list = field(default_factory=list)  # (Sweep, image cap): recorded at the end of the test
    sweep_assertions: dict = field(default_factory=dict)  # position in pending_sweeps -> [over record]
    attached: bool = False

    @property
    def empty(self) -> bool:
        return not self.maps and not self.properties and not self.pending and not self.sweeps and not self.pending_sweeps

    def flush(self) -> None:
        """Summarise the lazy maps of the test as far as they ran (a map, or its support stage alone); a map no
        assertion consulted ran nothing and is not recorded."""
        from cem_checks.records import result_summary, sweep_record

        for handle, cap in self.pending:
            if handle.result is not None:
                self.maps.append(self._relative(result_summary(handle.result, max_image_px=cap)))
        self.pending.clear()
        for k, (sweep, cap) in enumerate(self.pending_sweeps):
            record = sweep_record(sweep, self.sweep_assertions.get(k, ()), max_image_px=cap)
            self.sweeps.append(self._relative(record))
        self.pending_sweeps.clear()
        self.sweep_assertions.clear()

    def add_outcomes(self, outcomes: list) -> None:
        """Record the outcomes of the test: each :class:`cem_checks.PropertyOutcome` as a property record, each
        assertion over a sweep (``cem_checks.sweeps.OverOutcome``) as a property record too
        (:func:`cem_checks.records.over_record`), also kept for the record of its sweep (:meth:`_sweep_of`)."""
        from cem_checks.checks import PropertyOutcome
        from cem_checks.records import over_record, property_record

        for o in outcomes:
            if isinstance(o, PropertyOutcome) or not hasattr(o, "statistic"):
                self.properties.append(self._relative(property_record(o)))
                continue
            k = self._sweep_of(o)
            record = self._relative(over_record(o, sweep=k))
            self.properties.append(record)
            if k is not None:
                self.sweep_assertions.setdefault(k, []).append(record)

    def _sweep_of(self, outcome: Any) -> int | None:
        """The position among this test's sweeps of the sweep an assertion ``outcome`` was made over: the latest
        sweep whose settings (model and its weights' hash, task, map settings, items, shard) are the outcome's and
        which holds every worst item the outcome lists (image, ROI) and as many items; None when none does (e.g.
        an assertion over a sweep the test made without ``cem_sweep``)."""
        from cem_checks.result import _json_safe

        settings = getattr(outcome, "settings", None) or {}
        worst = set()
        for w in getattr(outcome, "worst", ()) or ():
            try:
                image, roi, _ = w
                worst.add((str(image), tuple(int(v) for v in roi)))
            except (TypeError, ValueError):
                continue
        n_items = getattr(outcome, "n_items", None)
        for k in reversed(range(len(self.pending_sweeps))):
            sweep = self.pending_sweeps[k][0]
            own = {key: v for key, v in sweep.settings.items() if key not in ("images", "execution")}
            own["shard"] = sweep.shard
            if settings and _json_safe(own) != _json_safe(dict(settings)):
                continue
            items = {(str(it.image), tuple(int(v) for v in it.roi)) for it in sweep.items}
            if worst <= items and (not isinstance(n_items, int) or n_items == len(items)):
                return k
        return None

    def _relative(self, record: dict) -> dict:
        from cem_checks.records import relative_paths

        return relative_paths(record, self.root) if self.root else record

    def to_json(self, full: bool = True) -> str:
        """``{"maps": [...], "properties": [...], "sweeps": [...]}`` as JSON: the full records, or (``full=False``)
        the scalar map summaries, property numbers and sweep summaries without their tables and maps
        (:func:`cem_checks.records.scalar_summary`, :func:`property_scalars`, :func:`sweep_scalars`)."""
        from cem_checks.records import property_scalars, scalar_summary, sweep_scalars

        if full:
            data = {"maps": self.maps, "properties": self.properties, "sweeps": self.sweeps}
        else:
            data = {"maps": [scalar_summary(m) for m in self.maps],
                    "properties": [property_scalars(p) for p in self.properties],
                    "sweeps": [sweep_scalars(s) for s in self.sweeps]}
        return json.dumps(data, sort_keys=True)

    def user_properties(self, full_maps: bool = False) -> list[tuple[str, str]]:
        """The junit-xml properties of the test: ``("cem", JSON)`` (scalar summaries, or the full records with
        ``full_maps``) and one readable ``("cem:<property>", verdict)`` per property outcome."""
        out = [(USER_PROPERTY, self.to_json(full=full_maps))]
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


def summary_image_px(settings: CEMSettings, config: pytest.Config | None = None) -> int:
    """The longest side (px) of the images a map summary embeds under ``settings``: ``--cem-report-max-image-px``
    when the session writes an HTML report or JSON results, or a pytest-html report (``--html``, read from
    ``config``) that shows the map panels; else 0 (nothing reads them; the records stay small)."""
    if settings.report is None and settings.json is None and not html_report_path(config):
        return 0
    return int(settings.report_max_image_px)


def html_report_path(config: pytest.Config | None) -> str | None:
    """The path of the pytest-html report of the session (``--html``), None without pytest-html or the option."""
    if config is None:
        return None
    try:
        path = config.getoption("htmlpath", None)
    except ValueError:
        return None
    return str(path) if path else None


def full_records(settings: CEMSettings) -> bool:
    """Whether the controller needs a test's full records (per-block grids, images): for ``--cem-report`` or
    ``--cem-json`` (the terminal summary needs the scalar ones only)."""
    return settings.report is not None or settings.json is not None


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
        rec = item.stash[RECORDS_KEY] = ItemRecords(root=str(item.config.rootpath))
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
    # the session's scope of --cem-shard, as resolved when the plugin was configured (auto -> session or sweeps)
    settings = replace(settings, shard_scope=item.config.stash[BASE_SETTINGS_KEY].shard_scope)
    item.stash[SETTINGS_KEY] = settings
    return settings


def _cem_data(report: Any) -> dict | None:
    """The records a call report carries (:data:`REPORT_ATTRIBUTE`), None when it carries none."""
    value = getattr(report, REPORT_ATTRIBUTE, None)
    if not isinstance(value, str):
        return None
    try:
        data = json.loads(value)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _outcome(report: pytest.TestReport) -> str:
    """The test's outcome as pytest's summary line counts it: passed / failed / skipped, ``"error"`` for a failed
    setup, or xfailed / xpassed for a test marked xfail (a strict xpass is ``"failed"``, as pytest reports it)."""
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    if report.when == "setup" and report.failed:
        return "error"
    return report.outcome


def _message(report: Any) -> str | None:
    """The text a test's entry keeps of ``report``: the skip reason, the expected failure, or the failure text (its
    last :data:`MESSAGE_CHARS` characters); None for a plain pass."""
    if hasattr(report, "wasxfail") and report.skipped:
        return f"expected failure ({report.wasxfail or 'xfail'}):\n{report.longreprtext[-MESSAGE_CHARS:]}"
    if report.skipped and isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        return str(report.longrepr[2])
    if report.failed:
        return report.longreprtext[-MESSAGE_CHARS:]
    return None


class CEMSession:
    """Records every test of the session from its reports; writes the JSON results and the HTML report; prints the
    summary."""

    def __init__(self, config: pytest.Config, settings: CEMSettings):
        self.config = config
        self.settings = settings
        #: node id -> the keyword arguments of :func:`cem_checks.records.record_test` for that test
        self.tests: dict[str, dict[str, Any]] = {}
        #: node ids of the tests that use the plugin (cem marker, or maps or properties recorded)
        self.cem_tests: set[str] = set()
        self.json_written: str | None = None
        self.json_error: str | None = None
        self.report_written: str | None = None
        self.report_error: str | None = None

    def _relative(self, text: str | None) -> str | None:
        from cem_checks.records import relative_paths

        return None if text is None else relative_paths(text, self.config.rootpath)

    # ------------------------------------------------------------------------------------------ hooks
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        entry = self.tests.get(report.nodeid)
        if report.when == "teardown":
            if report.failed:
                if entry is None:  # a teardown report without setup/call (not produced by pytest itself)
                    entry = self.tests[report.nodeid] = {"nodeid": report.nodeid, "outcome": "error"}
                entry["teardown_error"] = self._relative(report.longreprtext[-MESSAGE_CHARS:])
            return
        if report.when == "setup" and report.passed:
            return  # the call phase's report gives the outcome
        outcome = _outcome(report)
        if outcome not in OUTCOMES:
            return  # another plugin's verdict (e.g. "rerun"): the test's final report follows
        data = _cem_data(report) or {}
        entry = {
            "nodeid": report.nodeid,
            "outcome": outcome,
            "duration_s": float(report.duration),
            "maps": list(data.get("maps") or []),
            "properties": list(data.get("properties") or []),
            "sweeps": list(data.get("sweeps") or []),
            "message": self._relative(_message(report)),
        }
        self.tests[report.nodeid] = entry
        if data.get("maps") or data.get("properties") or data.get("sweeps") or "cem" in report.keywords:
            self.cem_tests.add(report.nodeid)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        # a file that fails to collect is an error of pytest's summary line: recorded as a test entry of its own
        if report.failed:
            self.tests[report.nodeid or "<collection>"] = {
                "nodeid": report.nodeid or "<collection>",
                "outcome": "error",
                "message": self._relative(f"error during collection:\n{report.longreprtext[-MESSAGE_CHARS:]}"),
            }

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
        return [(nodeid, p) for nodeid, t in sorted(self.tests.items()) for p in t.get("properties") or ()
                if not p.get("passed")]

    def summary_lines(self, verbose: bool = False) -> list[str]:
        s = self.settings
        if not self.cem_tests and s.json is None and s.report is None:
            return []
        lines = []
        for nodeid, p in self.failed_properties():
            # a failure that an xfail marker expected is labelled so, as pytest's own summary does
            label = "XFAIL" if self.tests[nodeid].get("outcome") == "xfailed" else "FAILED"
            lines.append(f"{label} {nodeid} {p.get('name')}: measured {p.get('measured_text')}; bound {p.get('bound_text')}")
        if verbose:
            for nodeid, t in sorted(self.tests.items()):
                for p in t.get("properties") or ():
                    if p.get("passed"):
                        lines.append(f"passed {nodeid} {p.get('name')}: measured {p.get('measured_text')}; bound {p.get('bound_text')}")
        tests = [t for t in self.tests.values() if t["nodeid"] in self.cem_tests]
        # counted as the report counts them: a failed property of an xfailed test is an expected failure
        from cem_checks.reporting.counts import properties_text, property_status

        statuses = [property_status(p, t.get("outcome")) for t in tests for p in t["properties"]]
        n_props = len(statuses)
        n_maps = sum(len(t["maps"]) for t in tests)
        n_support = sum(m.get("stage") == "support" for t in tests for m in t["maps"])
        sweeps = [w for t in tests for w in t.get("sweeps") or ()]
        n_items = sum(int(w.get("n_items") or 0) for w in sweeps)
        lines.append(
            f"{n_props} propert{'y' if n_props == 1 else 'ies'} checked in {len(tests)} test"
            f"{'' if len(tests) == 1 else 's'}: {properties_text(statuses)}; "
            f"{n_maps} map{'' if n_maps == 1 else 's'} computed"
            + (f" ({n_support} of them the support stage only)" if n_support else "")
            + (f"; {len(sweeps)} sweep{'' if len(sweeps) == 1 else 's'} of {n_items} item"
               f"{'' if n_items == 1 else 's'}" if sweeps else "")
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
        """The results file's content, built by :func:`cem_checks.records.results_document` from one
        :func:`~cem_checks.records.record_test` entry per test of the session (in node id order)."""
        from cem_checks.records import default_environment, record_test, results_document

        tests = [record_test(**self.tests[nodeid]) for nodeid in sorted(self.tests)]
        return results_document(tests, settings=self.settings.to_record(), environment=default_environment("pytest"),
                                exitstatus=exitstatus)

    def write_json(self, path: str, exitstatus: int | None = None) -> str:
        """Write :meth:`document` to ``path`` atomically; returns the path."""
        from cem_checks.records import write_document

        return write_document(self.document(exitstatus), path)

    def write_report(self, path: str, exitstatus: int | None = None) -> str:
        """Write the HTML report of :meth:`document` to ``path`` atomically; returns the path."""
        from cem_checks.reporting.html import write_report

        return write_report(self.document(exitstatus), path, show_passing=bool(self.settings.report_all))
