"""Options: one table gives the CLI flags and ini keys; marker > CLI > ini > default, decided by `is not None`."""

from __future__ import annotations

import pytest

from plugin_inner import PREAMBLE  # noqa: F401  (imports what in-process runs would re-import)
from pytest_cem.options import OPTIONS, CEMSettings, engine_keywords

pytest_plugins = ["pytester"]

# option, marker value, CLI value, ini value, expected value, expected source
TABLE = [
    ("seed", None, None, None, 0, "default"),
    ("seed", None, None, "7", 7, "ini"),
    ("seed", None, "5", "7", 5, "cli"),
    ("seed", 3, "5", "7", 3, "marker"),
    ("seed", 0, "5", "7", 0, "marker"),  # 0 is a value, not "unset"
    ("seed", None, "0", "7", 0, "cli"),
    ("mode", None, None, "paper", "paper", "ini"),
    ("mode", "fast", "paper", "paper", "fast", "marker"),
    ("device", None, "cpu", "mps", "cpu", "cli"),
    ("device", "cpu", "cuda:1", None, "cpu", "marker"),
    ("batch_size", None, None, None, "auto", "default"),
    ("batch_size", None, "4", "auto", 4, "cli"),
    ("batch_size", 2, None, "6", 2, "marker"),
    ("report_all", None, None, "false", False, "ini"),
    ("report_all", None, True, "false", True, "cli"),
    ("regen_all", None, None, None, False, "default"),
]


@pytest.mark.parametrize("name, marker, cli, ini, expected, source", TABLE)
def test_precedence_table(pytester, name, marker, cli, ini, expected, source):
    option = {o.name: o for o in OPTIONS}[name]
    if ini is not None:
        pytester.makeini(f"[pytest]\n{option.ini} = {ini}\n")
    mark = f"@pytest.mark.cem({name}={marker!r})" if marker is not None else ""
    pytester.makepyfile(
        f"""
        import pytest

        {mark}
        def test_settings(cem_settings):
            assert cem_settings.{name} == {expected!r}
            assert cem_settings.sources[{name!r}] == {source!r}
        """
    )
    args = [] if cli is None else [option.cli] if cli is True else [option.cli, cli]
    pytester.runpytest(*args).assert_outcomes(passed=1)


def test_the_table_makes_every_flag_and_ini_key(pytester):
    out = " ".join(pytester.runpytest("--help").stdout.str().split())  # help text wraps lines
    for o in OPTIONS:
        assert o.cli in out and f"ini: {o.ini}" in out, o.name
    assert [o.name for o in OPTIONS] == [f for f in CEMSettings.__dataclass_fields__ if f not in ("engine_extra", "sources")]
    assert {o.name for o in OPTIONS if o.engine} <= set(engine_keywords())


@pytest.mark.parametrize(
    "args, ini, message",
    [
        (["--cem-mode", "turbo"], None, "--cem-mode='turbo' is not available; expected one of 'fast', 'paper'"),
        (["--cem-device", "tpu"], None, "--cem-device='tpu' is not a device; expected auto, cpu, cuda, cuda:N or mps"),
        ([], "cem_seed = -1", "ini cem_seed='-1' must be an integer >= 0"),
        ([], "cem_batch_size = many", "ini cem_batch_size='many' must be 'auto' or an integer >= 1"),
    ],
)
def test_bad_values_stop_the_run_naming_the_source(pytester, args, ini, message):
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_relative_paths_follow_their_source(pytester):
    sub = pytester.mkdir("sub")
    pytester.makeini("[pytest]\ncem_json = out/ini.json\ncem_cache_dir = cache\n")
    pytester.makepyfile(
        f"""
        def test_paths(cem_settings):
            assert cem_settings.json == {str(pytester.path / "out" / "ini.json")!r}
            assert cem_settings.report == {str(sub / "r.html")!r}  # CLI: relative to the invocation folder
            assert cem_settings.cache_dir == {str(pytester.path / "cache")!r}
            assert cem_settings.baseline_dir == {str(pytester.path / "cem_baselines")!r}
        """
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(sub)
        result = pytester.runpytest(str(pytester.path), "--rootdir", str(pytester.path), "-c",
                                    str(pytester.path / "tox.ini"), "--cem-report", "r.html")
    result.assert_outcomes(passed=1)
