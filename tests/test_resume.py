"""Resumable runs: kill a run mid-way, rerun, same map with fewer passes; corrupted cache files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import cem_checks as cc
from nets import ConvStack

TESTS = Path(__file__).resolve().parent

JOB = dict(task="dn20", roi=(12, 12, 8), block_size=2, mode="paper", coarse=3, fine=4, progress=False, device="cpu",
           seed=11, batch_size=8)


class Slow(ConvStack):
    """ConvStack((1, 1)) with a pause in every forward, so that a run can be killed mid-way."""

    def __init__(self, pause_s: float = 0.0):
        super().__init__((1, 1))
        self.pause_s = pause_s

    def forward(self, x):
        time.sleep(self.pause_s)
        return super().forward(x)


def _image():
    img = cc.load_image(cc.bundled_images()["coffee"])[:, 100:132, 200:232]
    return (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import cem_checks as cc
    from test_resume import JOB, Slow, _image
    cc.compute_cem(Slow(0.02), _image(), cache_dir={cache!r}, **JOB)
    """
)


def test_a_killed_run_resumes_with_the_same_map_and_fewer_passes(tmp_path):
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT.format(tests=str(TESTS), cache=str(cache))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    chunks: list[Path] = []
    while time.time() < deadline and proc.poll() is None:
        chunks = list(cache.glob("*/coarse-*.npz"))
        if len(chunks) >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = sorted(p.name for p in cache.glob("*/*.npz"))
    assert 1 <= len(done_before) < 4  # coarse has 768 draws = 3 chunks, then the fine pass

    resumed = cc.compute_cem(Slow(), _image(), cache_dir=cache, **JOB)
    fresh = cc.compute_cem(Slow(), _image(), **JOB)
    for name in ("effect", "raw_effect", "stderr", "samples_db", "support", "flagged", "n_samples"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(fresh, name), err_msg=name)
    assert resumed.meta["cache"]["hits"] == len(done_before)
    assert resumed.forward_passes <= fresh.forward_passes - 256 * len(done_before) + 16

    again = cc.compute_cem(Slow(), _image(), cache_dir=cache, **JOB)  # everything cached now
    np.testing.assert_array_equal(again.effect, fresh.effect)
    assert again.forward_passes <= 2 + 8  # the validation forwards and one baseline


def test_corrupted_cache_files_are_ignored_with_a_warning(tmp_path):
    model = Slow()
    first = cc.compute_cem(model, _image(), cache_dir=tmp_path, **JOB)
    files = sorted(tmp_path.glob("*/coarse-*.npz"))
    assert len(files) == 3
    files[0].write_bytes(b"garbage")
    data = dict(np.load(files[1]))
    data["drops"] = data["drops"] + 1.0  # well-formed but not what was written
    np.savez(files[1], **data)
    with pytest.warns(cc.CacheWarning, match="ignoring corrupted cache file") as rec:
        second = cc.compute_cem(model, _image(), cache_dir=tmp_path, **JOB)
    assert len(rec) == 2
    np.testing.assert_array_equal(second.samples_db, first.samples_db)
    assert second.meta["cache"]["hits"] == len(list(tmp_path.glob("*/*.npz"))) - 2


def test_the_cache_key_separates_jobs(tmp_path):
    a = cc.compute_cem(Slow(), _image(), cache_dir=tmp_path, **JOB)
    b = cc.compute_cem(Slow(), _image(), cache_dir=tmp_path, **{**JOB, "seed": 12})
    other = Slow()
    with __import__("torch").no_grad():
        next(other.parameters()).add_(0.01)
    c = cc.compute_cem(other, _image(), cache_dir=tmp_path, **JOB)
    import json

    stages = sorted(json.loads((d / "key.json").read_text())["stage"] for d in tmp_path.iterdir())
    assert stages == ["map"] * 3 + ["support"] * 3  # each job: its group tests, and its map's draws
    assert b.meta["cache"]["hits"] == 0 and c.meta["cache"]["hits"] == 0
    assert not np.array_equal(a.samples_db, b.samples_db)


def test_plain_callables_need_a_cache_key(tmp_path):
    f = ConvStack((1,))
    with pytest.raises(cc.CEMInputError, match="pass cache_key="):
        cc.compute_cem(lambda x: f(x), _image(), cache_dir=tmp_path, **JOB)
    res = cc.compute_cem(lambda x: f(x), _image(), cache_dir=tmp_path, cache_key="convstack-v1", **JOB)
    assert res.meta["cache"]["writes"] > 0


def test_models_are_told_apart_by_buffers_and_settings(tmp_path):
    import torch

    from cem_checks.cache import hash_model

    bn = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.BatchNorm2d(3)).eval()
    assert len(hash_model(bn)) == 64  # 0-d buffers (num_batches_tracked) hash fine
    assert hash_model(torch.nn.AvgPool2d(3, 1, 1)) != hash_model(torch.nn.AvgPool2d(5, 1, 2))
    res = cc.compute_cem(bn, _image(), cache_dir=tmp_path, **JOB)
    assert res.meta["cache"]["writes"] > 0


def test_a_chunk_written_for_other_interventions_is_not_reused(tmp_path):
    first = cc.compute_cem(Slow(), _image(), cache_dir=tmp_path, **JOB)
    files = sorted(tmp_path.glob("*/coarse-*.npz"))
    files[1].write_bytes(files[0].read_bytes())  # same size and checksum, other blocks and patches
    with pytest.warns(cc.CacheWarning, match="written for other interventions"):
        again = cc.compute_cem(Slow(), _image(), cache_dir=tmp_path, **JOB)
    np.testing.assert_array_equal(again.samples_db, first.samples_db)
