"""--cem-report and --cem-json paths: checked when the session starts (usage error, exit code 4, naming the option,
the path, what is wrong and the fix); a write that still fails at the end fails the session."""

from __future__ import annotations

import os

import pytest

from plugin_inner import make_suite

pytest_plugins = ["pytester"]

ONE_PASSING_TEST = """
    def test_plain(cem_settings):
        pass
"""


def test_a_report_under_a_file_is_a_usage_error_before_any_test_runs(pytester):
    make_suite(pytester, ONE_PASSING_TEST)
    blocker = pytester.makefile(".txt", blocker="not a folder")
    result = pytester.runpytest("--cem-report", "blocker.txt/out/report.html")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (f"--cem-report={blocker}/out/report.html: cannot write the HTML report there: {blocker} is a file, not "
            "a folder. Pass a file path in a writable folder, e.g. --cem-report=cem-report.html."
            ) in result.stderr.str()
    assert "collected" not in result.stdout.str()  # no test ran


def test_json_results_onto_a_folder_are_a_usage_error_naming_the_ini_key(pytester):
    make_suite(pytester, ONE_PASSING_TEST)
    pytester.mkdir("results")
    pytester.makeini("[pytest]\ncem_json = results\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (f"ini cem_json={pytester.path / 'results'}: cannot write the JSON results there: it is a folder. Pass a "
            "file path in a writable folder, e.g. --cem-json=cem-results.json.") in result.stderr.str()


def test_report_and_json_on_one_file_are_a_usage_error(pytester):
    make_suite(pytester, ONE_PASSING_TEST)
    result = pytester.runpytest("--cem-report", "out.json", "--cem-json", "out.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (f"--cem-report and --cem-json both name {pytester.path / 'out.json'}; one would overwrite the other."
            in result.stderr.str())


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_a_usage_error(pytester):
    make_suite(pytester, ONE_PASSING_TEST)
    folder = pytester.mkdir("locked")
    folder.chmod(0o555)
    try:
        result = pytester.runpytest("--cem-report", "locked/r.html")
    finally:
        folder.chmod(0o755)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"cannot write the HTML report there: the folder {folder} is not writable." in result.stderr.str()


def test_missing_folders_are_fine_they_are_created(pytester):
    make_suite(pytester, ONE_PASSING_TEST)
    result = pytester.runpytest("--cem-report", "a/b/r.html", "--cem-json", "a/c/r.json")
    assert result.ret == pytest.ExitCode.OK
    assert (pytester.path / "a" / "b" / "r.html").is_file() and (pytester.path / "a" / "c" / "r.json").is_file()


def test_a_report_that_cannot_be_written_at_the_end_fails_the_session(pytester):
    # the path was fine at the start; a test puts a folder there
    make_suite(pytester, """
    import os

    def test_takes_the_path(cem_settings):
        os.mkdir(cem_settings.report)
    """)
    result = pytester.runpytest("--cem-report", "r.html")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines([
        f"HTML report: ERROR: cannot write the HTML report to {pytester.path / 'r.html'}: *Is a directory*; pass a "
        "path in a writable folder. The session fails for it: exit code 4 (usage error) unless tests failed.",
    ])


def test_failed_tests_keep_their_exit_code_when_the_report_cannot_be_written(pytester):
    make_suite(pytester, """
    import os

    def test_takes_the_path_and_fails(cem_settings):
        os.mkdir(cem_settings.json)
        assert False
    """)
    result = pytester.runpytest("--cem-json", "r.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["JSON results: ERROR: cannot write the JSON results to *r.json: *"])
