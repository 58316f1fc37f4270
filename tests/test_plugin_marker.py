"""The `cem` marker: registered, keywords checked against compute_cem's, merged closest-first."""

from __future__ import annotations

from plugin_inner import make_suite

pytest_plugins = ["pytester"]


def test_marker_passes_strict_markers_and_reaches_the_settings(pytester):
    make_suite(pytester, """
        pytestmark = pytest.mark.cem(task="dn25", seed=4, mode="paper")

        @pytest.mark.cem(seed=9, roi=(8, 8, 8))
        def test_merged(cem_settings):
            assert (cem_settings.seed, cem_settings.mode) == (9, "paper")
            assert cem_settings.sources["seed"] == "marker"
            assert cem_settings.engine_extra == {"task": "dn25", "roi": (8, 8, 8)}
            assert cem_settings.engine_kwargs()["task"] == "dn25"
    """)
    pytester.runpytest("--strict-markers").assert_outcomes(passed=1)


def test_unknown_keywords_fail_naming_the_allowed_ones(pytester):
    make_suite(pytester, """
        @pytest.mark.cem(task="dn25", blocksize=4)
        def test_typo():
            raise RuntimeError("never reached: the marker is checked before the test runs")
    """)
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "SettingsError: @pytest.mark.cem got unknown keyword blocksize; allowed: batch_size, block_size," in out
    assert "never reached" not in out and "options.py" not in out  # the message only, no plugin traceback


def test_positional_arguments_and_bad_values_are_refused(pytester):
    make_suite(pytester, """
        @pytest.mark.cem("dn25")
        def test_positional():
            pass

        @pytest.mark.cem(seed=-1)
        def test_bad_seed(cem_settings):
            pass

        @pytest.mark.cem(mode="paper")
        def test_good(cem_settings):
            assert cem_settings.mode == "paper"
    """)
    result = pytester.runpytest()
    result.assert_outcomes(errors=2, passed=1)
    # one message per refused test, in whatever order the tests ran
    for line in ("*@pytest.mark.cem got positional arguments ('dn25',); it takes keywords only*",
                 "*@pytest.mark.cem(seed)=-1 must be an integer >= 0*"):
        result.stdout.fnmatch_lines([line])
