"""Paper-mode cost on the real DnCNN (../shared/data): forward passes, and engine overhead as ratios.

Runs compute_cem(mode="paper") on a centre crop of demo_2.png (DN sigma 50, block 8) and, side by side in
the same run, the bare model on batches of the same shape. Prints the share of wall time spent inside the
model forward and the engine's images/s relative to the bare model's.

    python benchmarks/bench_paper.py [--size 96] [--roi 40,40,16] [--fine 50]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import cem_checks as cc
from cem_checks.models import DnCNN

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--roi", default="40,40,16")
    ap.add_argument("--coarse", type=int, default=3)
    ap.add_argument("--fine", type=int, default=50)
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    ckpt = args.data / "dncnn_color_blind.pth"
    if not ckpt.is_file():
        print(f"skipped: {ckpt} not found (the real DnCNN checkpoint)")
        return 0
    model = DnCNN.from_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)).eval()
    img = cc.load_image(args.data / "demo_2.png")
    H, W = img.shape[-2:]
    s = args.size
    crop = img[:, (H - s) // 2 : (H - s) // 2 + s, (W - s) // 2 : (W - s) // 2 + s]
    roi = tuple(int(v) for v in args.roi.split(","))

    res = cc.compute_cem(model, crop, task=cc.Denoising(50), roi=roi, block_size=8, mode="paper",
                         coarse=args.coarse, fine=args.fine, device="cpu", batch_size=8, progress=sys.stderr.isatty())
    # the bare model on the same batch shape, same process
    x = torch.rand(8, 3, s, s, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model(x)
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < 10.0:
            model(x.clone())
            n += 8
        bare_rate = n / (time.perf_counter() - t0)
    engine_rate = res.forward_passes / res.wall_s
    print(f"job: real DnCNN, {s}x{s} crop of demo_2.png, dn50, roi {roi}, block 8, paper mode "
          f"(coarse {args.coarse}, fine {args.fine}), cpu, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"blocks: {res.rows * res.cols}, flagged: {int(res.flagged.sum())}, supported: {int(res.support.sum())}, "
          f"max supported distance: {int(res.distance[res.support].max())} px")
    print(f"forward passes: {res.forward_passes} images in {res.forward_calls} calls "
          f"({res.forward_passes / (res.rows * res.cols):.1f} per block)")
    print(f"wall: {res.wall_s:.1f} s; share inside the model forward: {res.meta['model_seconds'] / res.wall_s:.3f}")
    print(f"engine images/s / bare model images/s (batch 8): {engine_rate / bare_rate:.3f}")
    print(f"effect range: [{res.effect.min():+.3f}, {res.effect.max():+.3f}] dB, base PSNR {res.base_psnr:.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
