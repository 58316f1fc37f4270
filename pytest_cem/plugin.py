"""The pytest plugin, registered through the ``pytest11`` entry point ``cem``.

Hooks: options and ini keys (from :data:`pytest_cem.options.OPTIONS`), the ``cem`` marker and its validation,
collection of the property outcomes of each test (and of the assertions over sweeps,
``cem_checks.sweeps.collect_over_outcomes``), their transport to the controller (a report attribute) and into
junit-xml (``user_properties``, scalar summaries unless ``--cem-junit-maps``), the map panels of each test as
pytest-html extras when pytest-html writes a report (:mod:`pytest_cem.html_extras`), short
failure reports of causal properties (frames inside cem_checks are hidden by its ``__tracebackhide__``), the report header and the session object (:mod:`pytest_cem.session`).
torch and cem_checks are imported lazily: a session that uses none of this does not pay for them.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from dataclasses import replace

import pytest

from .fixtures import (cem, cem_baseline, cem_device, cem_images, cem_load_model, cem_patches,  # noqa: F401
                       cem_settings, cem_sweep)
from .options import OPTIONS, Sources, resolve_settings
from .sharding import SCOPE_KEY, effective_scope, restore_held
from .session import (BASE_SETTINGS_KEY, REPORT_ATTRIBUTE, SOURCES_KEY, CEMSession, check_output_paths, full_records,
                      html_report_path, records_for, settings_for)

#: the test selection of --cem-shard (a module of its own: its collection hook runs trylast, see there)
pytest_plugins = ["pytest_cem.sharding"]

_SESSION_PLUGIN = "cem_session"
_ISOLATION_KEY = pytest.StashKey[ExitStack]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cem", "causal effect maps (pytest-cem)")
    for o in OPTIONS:
        if o.flag:
            group.addoption(o.cli, action="store_true", default=None, dest=o.dest, help=o.help_text())
        else:
            group.addoption(o.cli, action="store", default=None, dest=o.dest, metavar=o.metavar, help=o.help_text())
        parser.addini(o.ini, help=o.help_text(), type="string", default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cem(**settings): causal-effect-map settings of this test: any keyword argument of cem_checks.compute_cem "
        "(task, roi, block_size, seed, mode, device, batch_size, patches, coarse, fine, tol_db, ...)",
    )
    sources = Sources.from_config(config)
    controller = not hasattr(config, "workerinput")  # the controller (or the only process) gathers and writes
    try:
        settings = resolve_settings(sources)
        if controller:
            check_output_paths(settings)
    except ValueError as exc:  # cem_checks.errors.SettingsError
        raise pytest.UsageError(str(exc)) from None
    scope = effective_scope(config, settings.shard_scope, settings.shard)
    config.stash[SCOPE_KEY] = scope
    settings = replace(settings, shard_scope=scope)  # the results file records what was split
    config.stash[SOURCES_KEY] = sources
    config.stash[BASE_SETTINGS_KEY] = settings
    if controller:
        config.pluginmanager.register(CEMSession(config, settings), _SESSION_PLUGIN)


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.pluginmanager.get_plugin(_SESSION_PLUGIN)
    if session is not None:
        config.pluginmanager.unregister(session, _SESSION_PLUGIN)


def pytest_report_header(config: pytest.Config) -> list[str]:
    import torch

    import cem_checks

    s = config.stash[BASE_SETTINGS_KEY]
    try:
        device = str(cem_checks.resolve_device(s.device))
        if device.startswith("cuda"):
            device += f" ({torch.cuda.get_device_name(torch.device(device))})"
    except cem_checks.DeviceError:
        device = "not available here: tests that use it are skipped"
    return [
        f"cem: cem_checks {cem_checks.__version__}, torch {torch.__version__}, default device {s.device} -> {device}, "
        f"mode {s.mode}, seed {s.seed}, batch size {s.batch_size}"
    ]


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list):
    # --cem-shard beside pytest-split: the cem_sweep tests held out of its split are put back after it
    order = {id(item): k for k, item in enumerate(items)}
    result = yield
    restore_held(config, items, order)
    return result


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    # a session run inside another one (pytester) must not hand its outcomes to the enclosing session's tests
    checks = sys.modules.get("cem_checks.checks")
    if checks is not None:
        stack = ExitStack()
        stack.enter_context(checks.collect_outcomes(isolated=True))
        session.config.stash[_ISOLATION_KEY] = stack


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    stack = session.config.stash.get(_ISOLATION_KEY, None)
    if stack is not None:
        stack.close()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # check the marker before any fixture runs: a misspelt keyword errors at once, naming the allowed ones
    if item.get_closest_marker("cem") is not None:
        try:
            settings_for(item)
        except ValueError as exc:  # cem_checks.errors.SettingsError: the message says it all
            message = f"{type(exc).__name__}: {exc}"
        else:
            return
        pytest.fail(message, pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    marked = item.get_closest_marker("cem") is not None
    uses_fixture = any(n == "cem" or n.startswith("cem_") for n in getattr(item, "fixturenames", ()))
    # only tests that use the plugin (marker or fixture) are recorded: they import cem_checks anyway (its checks
    # module may be imported lazily, on the test's first assertion, so it is imported here, before the test)
    if not (marked or uses_fixture):
        return (yield)
    from cem_checks import checks
    settings = settings_for(item) if marked else item.config.stash[BASE_SETTINGS_KEY]
    also = None
    written = [f"the HTML report {settings.report}"] if settings.report is not None else []
    written += [str(settings.json)] if settings.json is not None else []
    if written:
        also = f"this test's maps and properties are written to {' and '.join(written)}"
    from cem_checks.sweeps import collect_over_outcomes

    with checks.collect_outcomes(also=also) as outcomes, collect_over_outcomes() as over:
        try:
            return (yield)
        finally:
            records_for(item).add_outcomes(outcomes)
            records_for(item).add_outcomes(over)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    rec, problems = None, []
    if call.when == "call":
        try:
            rec = records_for(item)
            rec.flush()
            if rec.empty:
                rec = None
            elif not rec.attached:
                # junit-xml writes the user properties of the test: scalar summaries unless --cem-junit-maps
                settings = item.config.stash[BASE_SETTINGS_KEY]
                item.user_properties.extend(rec.user_properties(full_maps=bool(settings.junit_maps)))
                rec.attached = True
        except Exception as exc:  # e.g. a map that cannot be summarised: this test fails, the session goes on
            problems.append(exc)
            rec = _partial(rec)
    report = yield
    if rec is not None:
        try:
            # the controller's records: an attribute of the report, which pytest serialises for xdist
            setattr(report, REPORT_ATTRIBUTE, rec.to_json(full=full_records(item.config.stash[BASE_SETTINGS_KEY])))
            if html_report_path(item.config) is not None:
                from .html_extras import add_extras

                add_extras(item, report, rec)
        except Exception as exc:
            problems.append(exc)
    if problems:
        _fail_recording(item, report, problems[0])
    return report


def _partial(rec):
    """What can still be recorded of a test whose records failed to build: the records built so far (its property
    outcomes, the maps summarised before the failure), nothing left pending; None when there is nothing."""
    if rec is None:
        return None
    rec.pending.clear()
    rec.pending_sweeps.clear()
    return None if rec.empty else rec


def _fail_recording(item: pytest.Item, report: pytest.TestReport, exc: Exception) -> None:
    """Make ``report`` (the call phase's) fail with why the test's records could not be built: a test that
    passed fails with that message; a test that failed keeps its own failure and gains a section saying it."""
    text = f"pytest-cem could not record this test's maps and properties: {type(exc).__name__}: {exc}"
    if report.failed:
        if hasattr(report.longrepr, "addsection"):
            report.longrepr.addsection("pytest-cem", text)
        else:
            report.longrepr = f"{report.longrepr}\n{text}"
        return
    try:
        raise pytest.fail.Exception(text, pytrace=False) from exc
    except pytest.fail.Exception:
        excinfo = pytest.ExceptionInfo.from_current()
    report.outcome = "failed"
    report.longrepr = item.repr_failure(excinfo)
    if hasattr(report, "wasxfail"):
        del report.wasxfail
