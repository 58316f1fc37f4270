"""The terminal: report header, section "causal properties", short failure messages."""

from __future__ import annotations

from plugin_inner import MIXED_SUITE, make_suite

pytest_plugins = ["pytester"]


def test_header_and_summary_section(pytester):
    make_suite(pytester, MIXED_SUITE)
    result = pytester.runpytest("--cem-mode", "paper", "--cem-seed", "3", "--cem-device", "cpu",
                                "--cem-report", "report.html", "--cem-json", "r.json")
    result.assert_outcomes(passed=2, failed=1, skipped=1)
    result.stdout.fnmatch_lines([
        "cem: cem_checks *, torch *, default device cpu -> cpu, mode paper, seed 3, batch size auto",
        "*= causal properties =*",
        "FAILED test_suite.py::test_too_wide receptive_field_within: measured support_radius() = 5 px; bound <= 1 px",
        "2 properties checked in 3 tests: 1 passed, 1 failed; 2 maps computed (1 of them the support stage only)",
        f"JSON results: {pytester.path / 'r.json'}",
        f"HTML report: {pytester.path / 'report.html'}",
    ])
    assert (pytester.path / "report.html").is_file()
    assert "passed test_suite.py::test_local" not in result.stdout.str()  # passes are listed with -v only


def test_verbose_lists_passing_properties_and_plain_sessions_get_no_section(pytester):
    make_suite(pytester, MIXED_SUITE)
    verbose = pytester.runpytest("-v", "-k", "local")
    verbose.stdout.fnmatch_lines(["passed test_suite.py::test_local receptive_field_within: measured support_radius() = 2 px; bound <= 2 px"])
    plain = pytester.runpytest("-k", "plain")
    assert "causal properties" not in plain.stdout.str()


def test_a_failing_property_shows_its_message_not_library_frames(pytester):
    make_suite(pytester, MIXED_SUITE)
    result = pytester.runpytest("-k", "wide")
    out = result.stdout.str()
    result.stdout.fnmatch_lines([
        ">       cc.assert_receptive_field_within(m, radius=1)",
        "E       cem_checks.checks.CausalPropertyError: causal property 'receptive_field_within' FAILED:*",
        "E         measured: support_radius() = 5 px",
        "E         bound:    <= 1 px",
        "E         run:      model=ConvStack task=dn25 roi=(8, 8, 8) block_size=4 scale=1 seed=0 device=cpu",  # the support stage: no map mode
        "test_suite.py:*: CausalPropertyError",
    ])
    assert "cem_checks/checks.py" not in out and "_finish" not in out
    full = pytester.runpytest("-k", "wide", "--full-trace")
    assert "cem_checks/checks.py" in full.stdout.str()
