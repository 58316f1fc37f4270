"""A receptive-field gate through the ``cem`` fixture (the support stage only) against the full default-mode map of
the same job, printed as side-by-side ratios; plus the support stage on a global model and on a planted sparse
non-local dependency.

Jobs:

- ``dncnn256``: the real DnCNN (../shared/data), demo_1.png 256x256, dn50, ROI (96, 152, 32) (the paper's default
  ROI), block 8. Side A is a pytest run (in a subprocess, ``--cem-json``) of one test that calls only
  ``cc.assert_receptive_field_within(cem(model, image), radius=20)``; its forward passes and the test's duration
  come from the JSON results. Side B is ``compute_cem`` with its defaults (fast mode) on the same job. The sides
  alternate (A, B, A); the load average is printed before each. Checked: the gate's support radius equals the
  map's, and on every block the gate resolved, its verdict equals the map's support.
- ``global``: a channel-attention SR model (seeded weights): ``compute_support(within=r)`` answers "changes
  beyond r" after one group test.
- ``planted``: a model whose ROI output copies one far block: ``compute_support`` resolves each block exactly.

    python benchmarks/bench_support.py [--jobs dncnn256,global,planted] [--radius 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

import cem_checks as cc

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
JOB = dict(task="dn50", roi=(96, 152, 32), block_size=8)

TEST = textwrap.dedent(
    """
    import pytest
    import torch
    import cem_checks as cc
    from cem_checks.models import DnCNN

    @pytest.mark.cem(task="dn50", roi=(96, 152, 32), block_size=8)
    def test_receptive_field_gate(cem):
        model = DnCNN.from_state_dict(torch.load({ckpt!r}, map_location="cpu", weights_only=True))
        cc.assert_receptive_field_within(cem(model, {image!r}), radius={radius})
    """
)


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def gate_through_the_fixture(radius: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        test = Path(tmp) / "test_gate.py"
        test.write_text(TEST.format(ckpt=str(DATA / "dncnn_color_blind.pth"), image=str(DATA / "demo_1.png"),
                                    radius=radius))
        out = Path(tmp) / "r.json"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", str(test), "-q", "-p", "no:cacheprovider",
                               "--cem-json", str(out), "--rootdir", tmp], capture_output=True, text=True, cwd=tmp)
        process_s = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"the gate run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        (test_entry,) = json.loads(out.read_text())["tests"]
        (m,) = test_entry["maps"]
        return {"map": m, "test_s": test_entry["duration_s"], "process_s": process_s,
                "property": test_entry["properties"][0]}


def full_map() -> cc.CEMResult:
    from cem_checks.models import DnCNN

    model = DnCNN.from_state_dict(torch.load(DATA / "dncnn_color_blind.pth", map_location="cpu", weights_only=True))
    return cc.compute_cem(model, DATA / "demo_1.png", progress=False, device="cpu", **JOB)


def bench_dncnn256(radius: float) -> None:
    if not (DATA / "dncnn_color_blind.pth").is_file():
        print(f"[dncnn256] skipped: the real DnCNN is not at {DATA}")
        return
    print(f"\n[dncnn256] real DnCNN, demo_1.png 256x256, dn50, ROI {JOB['roi']}, block 8; "
          f"gate: assert_receptive_field_within(radius={radius:g}) through the cem fixture")
    print(f"  load average before gate run 1: {load()}")
    a1 = gate_through_the_fixture(radius)
    print(f"  load average before the full map: {load()}")
    full = full_map()
    print(f"  load average before gate run 2: {load()}")
    a2 = gate_through_the_fixture(radius)
    gate = a2["map"]
    test_s = min(a1["test_s"], a2["test_s"])
    print(f"  gate: stage {gate['stage']!r}, {gate['forward_passes']} forward passes, {gate['group_tests']} group tests, "
          f"test {a1['test_s']:.2f} s / {a2['test_s']:.2f} s (pytest process {a1['process_s']:.1f} s / "
          f"{a2['process_s']:.1f} s), property {a2['property']['measured_text']} -> "
          f"{'passed' if a2['property']['passed'] else 'FAILED'}")
    print(f"  full map: {full.forward_passes} forward passes, {full.wall_s:.1f} s, support radius "
          f"{cc.support_radius(full)} px")
    print(f"  forward-pass ratio map/gate:  {full.forward_passes / gate['forward_passes']:8.1f}x   (target: gate <= 30 passes)")
    print(f"  wall ratio map/gate (test):   {full.wall_s / test_s:8.1f}x   (target >= 10x; the faster gate run)")
    support = np.array(gate["support"], dtype=bool)
    resolved = np.array(gate["resolved"], dtype=bool)
    agree = np.array_equal(support[resolved], full.support[resolved])
    print(f"  radius equal: {gate['support_radius_px'] == cc.support_radius(full)} "
          f"({gate['support_radius_px']} vs {cc.support_radius(full)} px); resolved blocks {int(resolved.sum())} of "
          f"{resolved.size}, their verdicts equal the map's support: {agree}")


def bench_global() -> None:
    from cem_checks.models import RCANLite

    torch.manual_seed(0)
    model = RCANLite(scale=4, features=16, blocks=4).eval()
    img = cc.load_image(cc.bundled_images()["coffee"])[:, 100:228, 200:328]
    print("\n[global] RCAN-like x4 SR with channel attention (seeded weights), 32x32 input, ROI (56, 56, 16), block 2")
    for r in (4, 12):
        res = cc.compute_support(model, img, task="sr4", roi=(56, 56, 16), block_size=2, within=r, progress=False,
                                 device="cpu")
        print(f"  within={r}: changes beyond: {res.beyond_within}, group tests run: "
              f"{res.meta['support_search']['tests_run']}, forward passes {res.forward_passes}, {res.wall_s:.2f} s")


def bench_planted() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from nets import PlantedNonLocal

    img = cc.load_image(cc.bundled_images()["astronaut"])[:, 100:164, 100:164].clone()
    roi, source = (8, 8, 8), (48, 40, 8)
    img[:, 40:48, 48:56] = img[:, 8:16, 8:16]
    res = cc.compute_support(PlantedNonLocal(roi, source), img, task=cc.Denoising(10), roi=roi, block_size=4,
                             progress=False, device="cpu")
    expected = np.zeros_like(res.support)
    expected[source[1] // 4:(source[1] + 8) // 4, source[0] // 4:(source[0] + 8) // 4] = True
    print(f"\n[planted] identity whose 8x8 ROI copies a far 8x8 region: {res.rows * res.cols} blocks")
    print(f"  resolved {int(res.resolved.sum())} of {res.resolved.size}; support = the planted blocks exactly: "
          f"{np.array_equal(res.support, expected)} ({int(res.support.sum())} blocks); {res.group_tests} group tests, "
          f"{res.forward_passes} forward passes (one-by-one testing: {res.rows * res.cols} tests)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default="dncnn256,global,planted")
    ap.add_argument("--radius", type=float, default=20.0)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    jobs = args.jobs.split(",")
    if "dncnn256" in jobs:
        bench_dncnn256(args.radius)
    if "global" in jobs:
        bench_global()
    if "planted" in jobs:
        bench_planted()
    return 0


if __name__ == "__main__":
    sys.exit(main())
