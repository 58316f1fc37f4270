"""Sweeps at scale: shards and their merge, resuming a killed sweep from its cache, executors (a process pool, a
thread pool, Dask's LocalCluster when installed) and the devices of a local pool's workers."""

from __future__ import annotations

import functools
import os
import queue
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import cem_checks as cc
import cem_checks.sweeps as S
from cem_checks.models import DnCNN
from cem_checks.engine.runner import usable_cores

TESTS = Path(__file__).resolve().parent
QUICK = dict(progress=False, device="cpu")
MAP = dict(task="dn25", block_size=8, mode="paper", coarse=2, fine=2, seed=5, **QUICK)
ROIS = [(0, 0, 8), (16, 8, 8)]
ARRAYS = ("effect", "raw_effect", "stderr", "n_samples", "samples_db", "support", "flagged")


def _noise(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((32, 32, 3)) * 255).round().astype(np.uint8)


IMAGES = {"a": _noise(1), "b": _noise(2)}


def _model() -> DnCNN:
    torch.manual_seed(0)
    return DnCNN(features=4, depth=3).eval()  # receptive radius 3 px; importable in any worker process


class Slow(DnCNN):
    """The small DnCNN with a pause in every forward, so that a sweep can be killed mid-way."""

    def __init__(self, pause_s: float = 0.0):
        torch.manual_seed(0)
        super().__init__(features=4, depth=3)
        self.eval()
        self.pause_s = pause_s

    def forward(self, x):
        time.sleep(self.pause_s)
        return super().forward(x)


def _same_maps(a: cc.Sweep, b: cc.Sweep) -> None:
    assert a.items == b.items
    for x, y in zip(a.results, b.results):
        for name in ARRAYS:
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name), err_msg=name)
        assert x.base_psnr == y.base_psnr


@pytest.fixture(scope="module")
def whole() -> cc.Sweep:
    return cc.sweep(_model(), IMAGES, rois=ROIS, context_radius=4, **MAP)


# ------------------------------------------------------------------------------------- shards and merge
def test_shards_merge_into_the_unsharded_sweep(whole, tmp_path):
    shards = [cc.sweep(_model(), IMAGES, rois=ROIS, context_radius=4, shard=(k, 2), **MAP) for k in range(2)]
    assert [[i.index for i in s.items] for s in shards] == [[0, 2], [1, 3]]
    assert [s.shard for s in shards] == [(0, 2), (1, 2)]
    merged = cc.Sweep.merge([shards[1].save(tmp_path / "s1"), shards[0]])  # a folder and an object
    assert merged.shard is None and merged.counts["items"] == 4 and merged.counts["shards"] == 2
    _same_maps(merged, whole)
    timing = ["wall_s"]
    assert merged.frame.drop(columns=timing).equals(whole.frame.drop(columns=timing))
    for statistic in ("mean", "max", "quantile:0.9"):
        a = cc.check_over(merged, "effective_radius_px", at_most=100, statistic=statistic)
        b = cc.check_over(whole, "effective_radius_px", at_most=100, statistic=statistic)
        assert (a.value, a.ci_low, a.ci_high, a.worst) == (b.value, b.ci_low, b.ci_high, b.worst)


def test_shards_by_image_keep_the_rois_of_an_image_together_and_their_shared_forwards(whole):
    # paper mode: the 2 ROIs of an image share their forwards; split by item, each shard pays for both images
    by_image = [cc.sweep(_model(), IMAGES, rois=ROIS, context_radius=4, shard=(k, 2), shard_by="image", **MAP)
                for k in range(2)]
    assert [[(i.index, i.image) for i in s.items] for s in by_image] == [[(0, "a"), (1, "a")], [(2, "b"), (3, "b")]]
    merged = cc.Sweep.merge(by_image)
    _same_maps(merged, whole)
    assert merged.frame.drop(columns=["wall_s"]).equals(whole.frame.drop(columns=["wall_s"]))
    by_item = [cc.sweep(_model(), IMAGES, rois=ROIS, context_radius=4, shard=(k, 2), **MAP) for k in range(2)]
    ran = lambda shards: sum(s.counts["forward_passes"] for s in shards)  # noqa: E731
    assert ran(by_image) == whole.counts["forward_passes"] < ran(by_item)
    assert all(s.counts["forward_passes_saved"] > 0 for s in by_image)
    assert all(s.counts["forward_passes_saved"] == 0 for s in by_item)
    # mixing the two splits is refused as such (not as an item found twice)
    with pytest.raises(cc.CEMInputError, match=r"split by different rules \(shard_by 'image' and 'item'\)"):
        cc.Sweep.merge([by_image[0], by_item[0]])
    with pytest.raises(cc.CEMInputError, match="shard_by='images' is not one of 'item', 'image'"):
        cc.sweep(_model(), IMAGES, rois=ROIS, shard=(0, 2), shard_by="images", **MAP)


def test_an_empty_shard_is_an_empty_sweep():
    s = cc.sweep(_model(), IMAGES, rois=ROIS, shard=(5, 6), **MAP)
    assert len(s) == 0 and s.counts["items"] == 0 and list(s.frame.columns) == list(S.COLUMNS)


def test_merge_refuses_what_is_not_the_shards_of_one_sweep(whole):
    s0 = cc.sweep(_model(), IMAGES, rois=ROIS, context_radius=4, shard=(0, 2), **MAP)
    other_seed = cc.sweep(_model(), IMAGES, rois=ROIS, context_radius=4, shard=(1, 2), **{**MAP, "seed": 6})
    with pytest.raises(cc.CEMInputError, match=r"sweeps\[1\] has other settings than sweeps\[0\] \(seed=6 vs 5\); merge "
                                               "only the shards of one sweep"):
        cc.Sweep.merge([s0, other_seed])
    with pytest.raises(cc.CEMInputError, match="item 0 \\(image 'a', roi \\(0, 0, 8\\)\\) is in sweeps\\[1\\] and in an "
                                               "earlier sweep; each shard must be merged once"):
        cc.Sweep.merge([s0, s0])
    with pytest.raises(cc.CEMInputError, match="the merged sweeps lack 2 of its 4 items \\(shard 1/2\\), e.g. item 1; "
                                               "pass every shard"):
        cc.Sweep.merge([s0])
    third = cc.Sweep(whole.items[:1], whole.results[:1], "map", whole.settings, shard=(0, 3))
    with pytest.raises(cc.CEMInputError, match=r"shards of different splits \(N in \[2, 3\]\)"):
        cc.Sweep.merge([s0, third])
    with pytest.raises(cc.CEMInputError, match="Sweep.merge got no sweeps"):
        cc.Sweep.merge([])


# --------------------------------------------------------------------------------------- resuming
SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import cem_checks as cc
    from test_sweep_scale import MAP, Slow, _noise
    cc.sweep(Slow(0.08), {{"a": _noise(1)}}, rois={rois!r}, cache_dir={cache!r}, **{{**MAP, **{settings!r}}})
    """
)
KILL_ROIS = [(0, 0, 8), (16, 8, 8), (8, 16, 8)]
#: fast mode on a local model: each ROI's map runs alone and is written as soon as it is done
FAST_LOCAL = dict(mode="fast", coarse=2, fine=4)


def _kill_when(cache: Path, pattern: str, settings: dict) -> list[str]:
    """Start the sweep in a subprocess, SIGKILL it once a file matching ``pattern`` appears under ``cache``; the
    names of the finished items."""
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT.format(tests=str(TESTS), rois=KILL_ROIS, cache=str(cache),
                                                                 settings=settings)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(cache.glob(pattern)):
        time.sleep(0.02)
    assert proc.poll() is None, f"the sweep ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return sorted(p.name for p in cache.glob("sweep-*/item-*.npz"))


@pytest.mark.slow
def test_a_killed_sweep_resumes_computing_only_the_missing_items(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    done = _kill_when(cache, "sweep-*/item-*.npz", FAST_LOCAL)
    assert "item-0.npz" in done and len(done) < 3

    from cem_checks.engine import job

    calls = []
    real = job.Job.__init__

    @functools.wraps(real)
    def recording(self, model, image, *, roi, **kwargs):
        calls.append(tuple(roi))
        real(self, model, image, roi=roi, **kwargs)

    monkeypatch.setattr(job.Job, "__init__", recording)
    settings = {**MAP, **FAST_LOCAL}
    resumed = cc.sweep(Slow(), {"a": _noise(1)}, rois=KILL_ROIS, cache_dir=cache, **settings)
    missing = [KILL_ROIS[k] for k in range(3) if f"item-{k}.npz" not in done]
    assert calls == missing  # the finished items are read back, not computed
    assert resumed.counts["items_cached"] == len(done) and resumed.counts["items_computed"] == len(missing)
    calls.clear()
    fresh = cc.sweep(Slow(), {"a": _noise(1)}, rois=KILL_ROIS, **settings)
    _same_maps(resumed, fresh)
    # the same table, but the costs (an item the kill interrupted resumes from its cached chunks)
    costs = ["wall_s", "forward_passes"]
    assert resumed.frame.drop(columns=costs).equals(fresh.frame.drop(columns=costs))

    calls.clear()
    again = cc.sweep(Slow(), {"a": _noise(1)}, rois=KILL_ROIS, cache_dir=cache, **settings)
    assert calls == [] and again.counts["items_cached"] == 3 and again.counts["forward_passes"] == 0
    _same_maps(again, fresh)


@pytest.mark.slow
def test_a_killed_shared_sweep_resumes_from_its_chunks(tmp_path):
    """Paper mode: the ROIs of the image share forwards and finish together; a kill keeps the finished chunks of the
    draws, which a rerun reads back (for every ROI) instead of running them again."""
    cache = tmp_path / "cache"
    done = _kill_when(cache, "**/coarse-*", {})
    assert done == []  # killed during the shared draws, before any item was done
    resumed = cc.sweep(Slow(), {"a": _noise(1)}, rois=KILL_ROIS, cache_dir=cache, **MAP)
    fresh = cc.sweep(Slow(), {"a": _noise(1)}, rois=KILL_ROIS, **MAP)
    _same_maps(resumed, fresh)
    assert resumed.counts["forward_passes"] < fresh.counts["forward_passes"]
    assert fresh.counts["forward_passes_saved"] > 0


def test_the_sweep_cache_is_keyed_and_corrupted_items_are_recomputed(tmp_path):
    first = cc.sweep(_model(), {"a": _noise(1)}, rois=ROIS, cache_dir=tmp_path, **MAP)
    folders = list(tmp_path.glob("sweep-*"))
    assert len(folders) == 1 and sorted(p.name for p in folders[0].iterdir()) == ["item-0.npz", "item-1.npz"]
    assert first.settings["execution"]["cache_key"] == folders[0].name.removeprefix("sweep-")
    (folders[0] / "item-0.npz").write_bytes(b"garbage")
    with pytest.warns(cc.CacheWarning, match="ignoring sweep cache file .*item-0.npz"):
        second = cc.sweep(_model(), {"a": _noise(1)}, rois=ROIS, cache_dir=tmp_path, **MAP)
    assert second.counts["items_cached"] == 1 and second.counts["items_computed"] == 1
    _same_maps(first, second)
    other = cc.sweep(_model(), {"a": _noise(1)}, rois=ROIS[:1], cache_dir=tmp_path, **{**MAP, "seed": 6})
    assert other.counts["items_cached"] == 0 and len(list(tmp_path.glob("sweep-*"))) == 2


# --------------------------------------------------------------------------------------- executors
@pytest.mark.slow
def test_a_local_process_pool_gives_the_in_process_maps(whole):
    pooled = cc.sweep(_model(), IMAGES, rois=ROIS, context_radius=4, workers=2, **MAP)
    threads = max(1, usable_cores() // 2)
    assert pooled.settings["execution"]["workers"] == 2 and pooled.settings["execution"]["threads"] == threads
    reference = cc.sweep(_model(), IMAGES, rois=ROIS, context_radius=4, threads=threads, **MAP)
    _same_maps(pooled, reference)
    _same_maps(pooled, whole)


def test_any_executor_runs_the_images(whole):
    with ThreadPoolExecutor(2) as pool:
        threaded = cc.sweep(_model(), IMAGES, rois=ROIS, context_radius=4, executor=pool, **MAP)
    assert threaded.settings["execution"]["executor"] == "ThreadPoolExecutor"
    _same_maps(threaded, whole)
    assert threaded.settings == {**whole.settings, "execution": threaded.settings["execution"]}


def test_dask_distributed_executor(whole):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        on_dask = cc.sweep(_model(), IMAGES, rois=ROIS, context_radius=4, executor=client.get_executor(), **MAP)
    _same_maps(on_dask, whole)
    assert on_dask.frame.drop(columns="wall_s").equals(whole.frame.drop(columns="wall_s"))


def test_a_pool_worker_runs_its_maps_on_its_own_device(monkeypatch):
    import cem_checks.sweeps.execution as E  # the module of the workers' state

    monkeypatch.setattr(E, "_WORKER_DEVICE", None)
    slots: queue.Queue = queue.Queue()
    slots.put("cpu")
    E._init_worker(slots, None)  # what a worker of a local pool runs first
    assert E._WORKER_DEVICE == "cpu"
    # the worker's device replaces the sweep's: no machine here has 'cuda:7'
    out = S.run_image(_model(), "a", _noise(1), [(0, 0, 8)], "map", {**MAP, "device": "cuda:7"})
    assert out[0].device == "cpu"


@pytest.mark.cuda
def test_one_worker_per_cuda_device():
    s = cc.sweep(_model(), IMAGES, rois=ROIS, devices="all", **{k: v for k, v in MAP.items() if k != "device"})
    assert {r.device for r in s.results} <= {f"cuda:{i}" for i in range(torch.cuda.device_count())}
    assert s.settings["execution"]["devices"] == [f"cuda:{i}" for i in range(torch.cuda.device_count())]
