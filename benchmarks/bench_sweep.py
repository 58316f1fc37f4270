"""Sweeps: a grid of ROIs on one image through ``cc.sweep`` (forwards shared between the ROIs) against separate
maps, printed as side-by-side ratios; the sweep's overhead outside the maps; sharded in 2 and merged against one
run.

Side A: ``cc.sweep(model, {name: image}, rois=cc.roi_grid(shape, size), mode=...)``; side B: one
``cc.compute_cem`` per ROI with the same settings (the published procedure at its own settings: full-image
forwards, batch 8 on CPU). Printed per job: forward passes and wall time of both sides and their ratios, the
bound ``coarse x blocks + fine x |union of flagged blocks|`` (+ the checks and baselines) for paper mode, and
whether every map equals its separate run. The sides alternate (B, A, B); the load average is printed before each.

Jobs (4x4 grid of 16-px ROIs on a 64x64 crop of the held-out image, block 8 input px, paper mode coarse 3 /
fine 50, unless named otherwise):

- ``ca_small``: a small channel-attention denoiser with seeded weights (global through its average pooling);
- ``dncnn_dn50``, ``attention_dncnn_dn50``: the example suite's trained denoisers (local / global);
- ``attention_sr2``: the example suite's x2 SR model with channel attention (64x64 output, block 4 input px);
- ``ca_small_fast``: ``ca_small`` in fast mode (coarse draws shared, fine draws per ROI).

Overhead: ``cc.sweep`` against ``cc.compute_cem_many`` on the same job (the engine call a sweep makes per image),
best of the alternated runs; and, since that difference is within the run-to-run noise, the sweep's own work
(images, items, cache key, table, results) timed directly: its wall time outside ``run_image`` over ``run_image``'s.
Shards: the job run as shards 0/2 and 1/2 and
merged, against one run: the same table (but the wall-time column) and the same aggregates.

    python benchmarks/bench_sweep.py [--jobs ca_small,dncnn_dn50,attention_dncnn_dn50,attention_sr2,ca_small_fast]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import cem_checks as cc
import cem_checks.sweeps.execution as S  # the module whose run_image the sweep calls (timed below)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from example_suite import zoo  # noqa: E402
from example_suite.nets import AttentionDnCNN  # noqa: E402

PAPER = dict(mode="paper", coarse=3, fine=50, seed=0, device="cpu", batch_size=8, progress=False)


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def _image(size: int = 64) -> torch.Tensor:
    (img,) = zoo.load_images((zoo.HELD_OUT_IMAGE,))
    return img[:, 100 : 100 + size, 150 : 150 + size].contiguous()


def _example(name: str):
    entry = zoo.load_manifest()["models"][name]
    return cc.load_model(zoo.CHECKPOINTS / entry["file"], arch=entry["architecture"])


def _ca_small():
    torch.manual_seed(0)
    return AttentionDnCNN(features=16).eval()


#: name -> (model factory, task, block size, extra settings)
JOBS = {
    "ca_small": (_ca_small, "dn50", 8, {}),
    "dncnn_dn50": (lambda: _example("dncnn_dn50"), "dn50", 8, {}),
    "attention_dncnn_dn50": (lambda: _example("attention_dncnn_dn50"), "dn50", 8, {}),
    "attention_sr2": (lambda: _example("attention_sr2"), "sr2", 4, {}),
    "ca_small_fast": (_ca_small, "dn50", 8, {"mode": "fast"}),
}


def side_sweep(model, img, rois, kw):
    t0 = time.perf_counter()
    sw = cc.sweep(model, {"crop": img}, rois=rois, **kw)
    return sw, time.perf_counter() - t0


def side_separate(model, img, rois, kw):
    t0 = time.perf_counter()
    maps = [cc.compute_cem(model, img, roi=r, **kw) for r in rois]
    return maps, time.perf_counter() - t0


def run_job(name: str, overhead_reps: int) -> dict:
    make, task, block, extra = JOBS[name]
    model, img = make(), _image()
    rois = cc.roi_grid(tuple(img.shape[-2:]), 16)
    kw = {**PAPER, "task": task, "block_size": block, **extra}
    print(f"\n== {name}: {model.__class__.__name__}, {task}, {len(rois)} ROIs of 16 px on a 64x64 crop, block {block}, "
          f"mode {kw['mode']}", flush=True)
    print(f"   load {load()}: separate maps ...", flush=True)
    maps, t_sep = side_separate(model, img, rois, kw)
    print(f"   load {load()}: sweep ...", flush=True)
    sw, t_sweep = side_sweep(model, img, rois, kw)
    print(f"   load {load()}: separate maps again ...", flush=True)
    maps2, t_sep2 = side_separate(model, img, rois, kw)
    identical = all(np.array_equal(a.effect, b.effect) and np.array_equal(a.samples_db, b.samples_db, equal_nan=True)
                    and np.array_equal(a.support, b.support) for a, b in zip(sw.results, maps))
    p_sep = sum(m.forward_passes for m in maps)
    p_sweep = int(sw.counts["forward_passes"])
    nb = maps[0].rows * maps[0].cols
    union = int(np.logical_or.reduce([m.flagged for m in maps]).sum())
    row = {"job": name, "rois": len(rois), "blocks": nb, "union_flagged": union,
           "flagged_per_roi": float(np.mean([m.flagged.sum() for m in maps])),
           "passes_separate": p_sep, "passes_sweep": p_sweep, "passes_ratio": p_sweep / p_sep,
           "wall_separate": min(t_sep, t_sep2), "wall_sweep": t_sweep, "wall_ratio": t_sweep / min(t_sep, t_sep2),
           "identical": identical}
    if kw["mode"] == "paper":
        overhead_one = maps[0].forward_passes - nb * kw["coarse"] - kw["fine"] * int(maps[0].flagged.sum())
        row["bound"] = kw["coarse"] * nb + kw["fine"] * union + overhead_one
    print(f"   flagged per ROI {row['flagged_per_roi']:.1f} blocks, union {union} of {nb}")
    print(f"   forward passes: sweep {p_sweep} vs separate {p_sep} -> {row['passes_ratio']:.3f}x"
          + (f" (bound {row['bound']})" if "bound" in row else ""))
    print(f"   wall: sweep {t_sweep:.1f} s vs separate {row['wall_separate']:.1f} s (runs {t_sep:.1f}, {t_sep2:.1f}) "
          f"-> {row['wall_ratio']:.3f}x; maps identical to separate runs: {identical}", flush=True)

    # overhead: the sweep against the engine call it makes per image, alternating; and the sweep's own work timed
    # directly: its wall time outside run_image (the engine call per image, as compute_cem_many), over run_image's
    many_t, sweep_t, own = [], [], []
    inner = S.run_image
    for _ in range(overhead_reps):
        t0 = time.perf_counter()
        cc.compute_cem_many(model, img, rois=rois, **kw)
        many_t.append(time.perf_counter() - t0)
        spent = []

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                spent.append(time.perf_counter() - t)

        S.run_image = timed
        try:
            sweep_t.append(side_sweep(model, img, rois, kw)[1])
        finally:
            S.run_image = inner
        own.append((sweep_t[-1] - sum(spent)) / sum(spent))
    row["overhead"] = min(sweep_t) / min(many_t) - 1
    row["own"] = float(np.median(own))
    print(f"   sweep overhead outside the maps: {100 * row['overhead']:+.1f} % (sweep {min(sweep_t):.2f} s vs "
          f"compute_cem_many {min(many_t):.2f} s, best of {overhead_reps} alternating; load {load()}); the sweep's "
          f"own work outside run_image, timed directly: {100 * row['own']:.2f} % (median of {overhead_reps})")

    # shards: 0/2 and 1/2 merged against one run
    shards = [cc.sweep(model, {"crop": img}, rois=rois, shard=(k, 2), **kw) for k in range(2)]
    merged = cc.Sweep.merge(shards)
    cols = [c for c in sw.frame.columns if c != "wall_s"]
    same_table = merged.frame[cols].reset_index(drop=True).equals(sw.frame[cols].reset_index(drop=True))
    agg = lambda s: [cc.check_over(s, m, at_most=1e9).value for m in ("support_radius", "negative_fraction")]
    row["shards_equal"] = bool(same_table and agg(merged) == agg(sw))
    print(f"   sharded in 2 and merged: same table and aggregates as one run: {row['shards_equal']}")
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default=",".join(JOBS))
    ap.add_argument("--overhead-reps", type=int, default=3)
    args = ap.parse_args()
    warnings.simplefilter("ignore", cc.OutputRangeWarning)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load()} at start")
    rows = [run_job(j, args.overhead_reps) for j in args.jobs.split(",")]
    print("\njob                    ROIs  flagged/ROI  union  passes sweep/separate  wall sweep/separate  overhead  "
          "own work  identical  shards")
    for r in rows:
        print(f"{r['job']:<22} {r['rois']:>4}  {r['flagged_per_roi']:>11.1f}  {r['union_flagged']:>5}  "
              f"{r['passes_ratio']:>21.3f}  {r['wall_ratio']:>19.3f}  {100 * r['overhead']:>+7.1f}%  {100 * r['own']:>7.2f}%  "
              f"{str(r['identical']):>9}  {str(r['shards_equal']):>6}")
    print(f"load average at end {load()}")
    return 0 if all(r["identical"] and r["shards_equal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
