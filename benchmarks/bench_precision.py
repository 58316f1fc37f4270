"""Reduced precision against fp32 on the real DnCNN: map fidelity and speed, side by side.

Runs compute_cem with precision="fp32" and with "bf16" (and "fp16" on CUDA) on the same job and prints the
correlation of the effects, the largest per-block change in dB, the baseline ROI PSNR shift, whether the
support (exact zeros) is unchanged, and the wall ratio.

    python benchmarks/bench_precision.py [--device cpu|cuda] [--size 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import cem_checks as cc
from cem_checks.models import DnCNN

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--mode", default="fast")
    args = ap.parse_args()
    if not (DATA / "dncnn_color_blind.pth").is_file():
        print(f"skipped: the real DnCNN is not at {DATA}")
        return 0
    model = DnCNN.from_state_dict(torch.load(DATA / "dncnn_color_blind.pth", map_location="cpu", weights_only=True))
    img = cc.load_image(DATA / "demo_2.png")
    s = args.size
    crop = img[:, 128 - s // 2 : 128 + s // 2, 128 - s // 2 : 128 + s // 2]
    kw = dict(task=cc.Denoising(50), roi=(s // 2 - 8, s // 2 - 8, 16), block_size=8, mode=args.mode, device=args.device,
              progress=False, seed=0)
    ref = cc.compute_cem(model, crop, precision="fp32", **kw)
    print(f"job: real DnCNN, {s}x{s} crop, dn50, roi {kw['roi']}, block 8, mode {args.mode}, device {args.device}")
    precisions = ["bf16"] + (["fp16"] if args.device.startswith("cuda") else [])
    for p in precisions:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", cc.PrecisionWarning)
            low = cc.compute_cem(model, crop, precision=p, **kw)
        nz = (ref.effect != 0) | (low.effect != 0)
        corr = float(np.corrcoef(ref.raw_effect[nz], low.raw_effect[nz])[0, 1]) if nz.sum() > 2 else float("nan")
        print(f"  {p}: effect correlation {corr:.4f}, max |d effect| {np.abs(ref.raw_effect - low.raw_effect).max():.4f} dB, "
              f"baseline ROI PSNR shift {low.meta['precision_shift_db']:.4f} dB, support unchanged: "
              f"{np.array_equal(ref.support, low.support)}, wall ratio fp32/{p}: {ref.wall_s / low.wall_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
