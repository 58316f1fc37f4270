"""Threads: each pytest-xdist worker runs its maps with max(1, cores // workers) intra-op threads, unless
--cem-threads / ini cem_threads / the marker says how many."""

from __future__ import annotations

import os

import pytest

from plugin_inner import make_suite

pytest_plugins = ["pytester"]

SUITE = """
    import os
    import types

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
            # kept outside the model's own attributes: the engine restores those after each call
            self.log = types.SimpleNamespace(seen=set())

        def forward(self, x):
            self.log.seen.add(torch.get_num_threads())
            return self.conv(x) * 0.1 + x

    @pytest.mark.cem(**TINY)
    @pytest.mark.parametrize("k", [0, 1])
    def test_threads(cem, k):
        spy = Spy()
        before = torch.get_num_threads()
        cem(spy, IMG).map()
        assert torch.get_num_threads() == before  # restored after the map
        assert spy.log.seen == {int(os.environ["EXPECTED_THREADS"])}, spy.log.seen
"""


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@pytest.mark.slow
@pytest.mark.parametrize("args, expected", [
    ((), max(1, _cores() // 2)),   # two workers share the cores
    (("--cem-threads", "3"), 3),   # the user chose
])
def test_xdist_workers_share_the_cores(pytester, monkeypatch, args, expected):
    pytest.importorskip("xdist")
    make_suite(pytester, SUITE)
    monkeypatch.setenv("EXPECTED_THREADS", str(expected))
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=2)


def test_without_xdist_the_threads_are_left_alone_unless_asked(pytester, monkeypatch):
    import torch

    make_suite(pytester, SUITE)
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"):  # this suite itself may run under xdist
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EXPECTED_THREADS", str(torch.get_num_threads()))
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
    monkeypatch.setenv("EXPECTED_THREADS", "1")
    pytester.makeini("[pytest]\ncem_threads = 1\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
