"""Progress of a map: a bar on a terminal, log lines elsewhere (after 10 s: one per stage, at most one every 10 s
within a stage), through the terminal reporter in pytest, nothing under -q."""

from __future__ import annotations

import pytest

from cem_checks import progress as P
from plugin_inner import make_suite

pytest_plugins = ["pytester"]


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_log_lines_wait_ten_seconds_then_come_per_stage_and_at_most_every_ten_seconds(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(P.time, "monotonic", clock)
    lines = []
    p = P.Progress("log", "m", write=lines.append)
    p.stage("support")
    clock.t += 4
    p.update(3)
    assert lines == []  # a short map stays silent
    clock.t += 7  # 11 s
    p.stage("coarse", 300)
    assert lines == ["cem: m: coarse 0/300 draws, 11 s"]
    clock.t += 5
    p.update(100)
    assert len(lines) == 1  # 5 s since the last line
    clock.t += 6
    p.update(100)
    assert lines[-1] == "cem: m: coarse 200/300 draws, 22 s"
    clock.t += 1
    p.stage("fine", 50)  # a new stage always says so (once the map is past 10 s)
    p.update(60)  # sequential sampling may not reach the cap; more than the cap raises the total
    assert lines[-1] == "cem: m: fine 0/50 draws, 23 s" and p.total == 60
    p.close()


@pytest.mark.parametrize("given, mode", [(True, "bar"), (False, "off"), (print, "log")])
def test_the_progress_argument(given, mode):
    assert P.Progress.auto(given).mode == mode


def test_none_is_a_bar_on_a_terminal_and_log_lines_elsewhere(monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert P.Progress.auto(None).mode == "log"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert P.Progress.auto(None).mode == "bar"


SUITE = """
    @pytest.mark.cem(**TINY)
    def test_map(cem):
        cem(ConvStack((1, 1)), IMG).map()
"""


def test_pytest_prints_the_stages_and_is_quiet_under_q(pytester):
    make_suite(pytester, SUITE)
    pytester.makeconftest(
        "import pytest\nimport cem_checks.progress as p\n\n\n@pytest.fixture(autouse=True)\n"
        "def every_line(monkeypatch):\n    monkeypatch.setattr(p, 'LOG_EVERY_S', 0.0)\n")
    # in a subprocess, as in a real run: pytest captures the test's output at the file-descriptor level, and the
    # progress lines must get past that capture to reach the terminal (or the CI log)
    out = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly").stdout.str()
    for stage in ("support", "coarse", "fine"):
        assert f"cem: ConvStack dn25 ROI (8, 8, 8): {stage} " in out, out
    quiet = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "-p", "no:randomly").stdout.str()
    assert "cem: ConvStack" not in quiet


def test_compute_cem_refuses_a_bad_progress_argument():
    import numpy as np

    import cem_checks as cc

    with pytest.raises(cc.CEMInputError, match="progress='yes' must be True"):
        cc.compute_cem(lambda x: x, np.zeros((8, 8, 3), np.uint8), task="dn25", roi=(0, 0, 8), progress="yes")
