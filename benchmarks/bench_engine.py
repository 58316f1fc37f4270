"""Fast mode against paper mode on the same jobs, printed as side-by-side ratios.

For each job: wall ratio (paper / fast), forward-pass ratio, pixels-processed ratio, the share of wall
time spent inside the model forward (both modes), and the fidelity of the fast map against the paper map:
identical support (exact zeros), agreement of the zero sets of the effect, Spearman correlation of effects
on blocks non-zero in either map, and the largest |fast - paper| in units of their combined standard
error. The same fidelity numbers for a paper map of another seed against the paper map are printed beside
them as the noise floor.

Jobs: the real DnCNN (../shared/data) on a 96x96 crop and on the whole 256x256 demo_2.png (DN sigma 50, ROI
16 px near the centre, block 8), a small SR model with channel attention (global) at x4, and seeded models of
the families local evaluation covers: an FFDNet-style denoiser (2x2 unshuffle, noise-level map, 12 convolutions
with batch norm, pixel shuffle) on 96x96, a Real-ESRGAN Compact-style x4 SR model (16 convolutions, 64 channels,
pixel shuffle, nearest residual) on a 64x64 input and a U-Net x2 SR model (strided convolutions down,
transposed convolutions up, concatenated skips) on a 64x64 input.

Paper maps are expensive (the 256x256 one takes about two hours on 2 CPU cores): each is saved under
``benchmarks/results/`` and reused by later runs, which then print the wall time recorded when it was
computed. ``--fresh`` recomputes them. ``--estimate-paper JOB[,JOB]`` does not run paper mode for those
jobs: its cost is then *estimated* and labelled so: the paper's forward passes are counted exactly from
the grid (every block gets ``coarse`` draws, every block flagged by the same coarse rule gets ``fine``;
fast mode applies that rule to every block that can reach the ROI, and blocks that cannot are never
flagged), and its wall time is that count times the bare model's time per image on the same input size,
measured in the same run (a lower bound: it leaves out the engine's own overhead). No fidelity is printed
for an estimated job.

    python benchmarks/bench_engine.py [--jobs dncnn96,dncnn256,sr_ca,ffdnet96,ffdnet96_kair,compact_x4,unet_x2,window_x2] [--device cpu]
                                      [--fresh] [--no-floor] [--estimate-paper dncnn256] [--contend]

``--contend`` keeps a second CPU-bound process busy (a pure-Python loop) throughout the run, as a CI runner or
pytest-xdist on 2 cores would.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import cem_checks as cc
from cem_checks.models import CompactSR, DnCNN, FFDNetLike, RCANLite, UNetSR

ROOT = Path(__file__).resolve().parent
DATA = ROOT.parents[1] / "shared" / "data"
sys.path.insert(0, str(ROOT.parent))  # the example suite's window-attention model
from example_suite.nets import WindowSR  # noqa: E402
RESULTS = ROOT / "results"


def _dncnn():
    return DnCNN.from_state_dict(torch.load(DATA / "dncnn_color_blind.pth", map_location="cpu", weights_only=True)).eval()


def _demo(size: int):
    img = cc.load_image(DATA / "demo_2.png")
    H, W = img.shape[-2:]
    return img[:, (H - size) // 2 : (H - size) // 2 + size, (W - size) // 2 : (W - size) // 2 + size]


def _sr_ca():
    torch.manual_seed(0)
    return RCANLite(scale=4, features=16, blocks=4).eval()


def _seeded(make):
    def build():
        torch.manual_seed(0)
        return make().eval()
    return build


class KairFFDNet(FFDNetLike):
    """The FFDNet-style model written as KAIR writes FFDNet: the sizes read from ``x.shape``, padding to even sizes,
    a noise-level map built at the downsampled size, the output cropped back. The symbolic trace cannot read it;
    local evaluation captures it at the job's shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x = torch.nn.functional.pad(x, (0, w % 2, 0, h % 2), mode="replicate")
        d = self.down(x)
        noise = torch.full((n, 1, d.shape[2], d.shape[3]), float(self.sigma), device=x.device, dtype=x.dtype)
        return (x - self.up(self.body(torch.cat([d, noise], dim=1))))[..., :h, :w]


def _bundled(size: int):
    img = cc.load_image(cc.bundled_images()["coffee"])
    return img[:, 100: 100 + size, 200: 200 + size]


JOBS = {
    "dncnn96": dict(model=_dncnn, image=lambda: _demo(96), task=cc.Denoising(50), roi=(40, 40, 16), block_size=8, needs_data=True),
    "dncnn256": dict(model=_dncnn, image=lambda: _demo(256), task=cc.Denoising(50), roi=(120, 120, 16), block_size=8, needs_data=True),
    "sr_ca": dict(model=_sr_ca, image=lambda: _demo(128) if (DATA / "demo_2.png").is_file() else
                  cc.load_image(cc.bundled_images()["coffee"])[:, 100:228, 200:328],
                  task=cc.SuperResolution(4), roi=(56, 56, 16), block_size=2, needs_data=False),
    # the families local evaluation covers beyond plain conv stacks (seeded weights)
    "ffdnet96": dict(model=_seeded(lambda: FFDNetLike(features=64, layers=12)), image=lambda: _bundled(96),
                     task=cc.Denoising(50), roi=(40, 40, 16), block_size=8, needs_data=False),
    "ffdnet96_kair": dict(model=_seeded(lambda: KairFFDNet(features=64, layers=12)), image=lambda: _bundled(96),
                          task=cc.Denoising(50), roi=(40, 40, 16), block_size=8, needs_data=False),
    "compact_x4": dict(model=_seeded(lambda: CompactSR(scale=4, features=64, convs=16)), image=lambda: _bundled(256),
                       task=cc.SuperResolution(4), roi=(120, 120, 16), block_size=2, needs_data=False),
    "unet_x2": dict(model=_seeded(lambda: UNetSR(scale=2, features=32)), image=lambda: _bundled(128),
                    task=cc.SuperResolution(2), roi=(56, 56, 16), block_size=4, needs_data=False),
    # SwinIR-style shifted window attention, padded to a multiple of the window (a 96x96 input)
    "window_x2": dict(model=_seeded(lambda: WindowSR()), image=lambda: _bundled(192), task=cc.SuperResolution(2),
                      roi=(88, 88, 16), block_size=8, needs_data=False),
}


def run(job: str, mode: str, seed: int, device: str, fresh: bool = False) -> cc.CEMResult:
    spec = JOBS[job]
    path = RESULTS / f"{job}-{mode}-seed{seed}-{device}.npz"
    if mode == "paper" and path.is_file() and not fresh:
        return cc.CEMResult.load(path)
    res = cc.compute_cem(spec["model"](), spec["image"](), task=spec["task"], roi=spec["roi"], block_size=spec["block_size"],
                         mode=mode, seed=seed, device=device, progress=sys.stderr.isatty())
    if mode == "paper":
        res.save(path)
    return res


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    import pandas as pd

    if a.size < 3:
        return float("nan")
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    return float(np.corrcoef(ra, rb)[0, 1])


def fidelity(x: cc.CEMResult, ref: cc.CEMResult) -> dict:
    nz = (x.effect != 0) | (ref.effect != 0)
    se = np.sqrt(np.nan_to_num(x.stderr) ** 2 + np.nan_to_num(ref.stderr) ** 2)
    diff = np.abs(x.raw_effect - ref.raw_effect)
    z = np.where(se > 0, diff / np.where(se > 0, se, 1), np.where(diff > 0, np.inf, 0))
    return {
        "support identical": bool(np.array_equal(x.support, ref.support)),
        "zero-set agreement": float(np.mean((x.effect == 0) == (ref.effect == 0))),
        "spearman (non-zero)": _spearman(x.effect[nz], ref.effect[nz]),
        "max |diff| / stderr": float(z[nz].max()) if nz.any() else 0.0,
        "max |diff| dB": float(diff.max()),
    }


def _fast_summary(fast: cc.CEMResult) -> None:
    f = fast.meta["fast"]
    print(f"  fast: support radius {f.get('support_radius_px')} px, {f.get('group_tests')} group tests, "
          f"{f['candidates']} candidate blocks, crop {f['crop']} ({f['crop_check']}), stopped {f['stopped']}")


def estimate_paper(job: str, fast: cc.CEMResult, device: str) -> tuple[int, float]:
    """Paper mode's forward passes (exact count for the flagged set) and a lower bound of its wall time."""
    spec = JOBS[job]
    nb = fast.rows * fast.cols
    passes = 2 + nb * fast.coarse + int(fast.flagged.sum()) * fast.fine + 8
    model = spec["model"]().to(device)
    h, w = fast.input_shape
    x = torch.rand(8, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        model(x.clone())
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < 20.0 or n < 16:
            model(x.clone())
            n += 8
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        per_image = (time.perf_counter() - t0) / n
    return passes, passes * per_image


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default="dncnn96,dncnn256,sr_ca,ffdnet96,ffdnet96_kair,compact_x4,unet_x2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fresh", action="store_true", help="recompute the paper maps instead of reusing saved ones")
    ap.add_argument("--no-floor", action="store_true", help="skip the paper map of seed 1 (the noise floor)")
    ap.add_argument("--paper-only", action="store_true", help="only compute and save the paper maps")
    ap.add_argument("--estimate-paper", default="", help="jobs whose paper cost is estimated instead of run")
    ap.add_argument("--contend", action="store_true", help="keep a second CPU-bound process busy throughout")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads")
    contender = _contender() if args.contend else None
    if contender is not None:
        print(f"a second CPU-bound process (pid {contender.pid}) runs throughout")
    try:
        return _run_jobs(args)
    finally:
        if contender is not None:
            contender.kill()
            contender.wait()


def _contender():
    import subprocess

    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _run_jobs(args) -> int:
    for job in args.jobs.split(","):
        spec = JOBS[job]
        if spec["needs_data"] and not (DATA / "dncnn_color_blind.pth").is_file():
            print(f"[{job}] skipped: the real DnCNN is not at {DATA}")
            continue
        if job in args.estimate_paper.split(","):
            fast = run(job, "fast", 0, args.device)
            est_passes, est_wall = estimate_paper(job, fast, args.device)
            print(f"\n[{job}] {spec['task'].name}, roi {spec['roi']}, block {spec['block_size']}, "
                  f"{fast.input_shape[1]}x{fast.input_shape[0]} input, {fast.rows * fast.cols} blocks -- paper cost ESTIMATED")
            print(f"  wall ratio paper/fast:          {est_wall / fast.wall_s:8.1f}x   (paper >= {est_wall:.0f} s estimated, fast {fast.wall_s:.1f} s)")
            print(f"  forward-pass ratio paper/fast:  {est_passes / fast.forward_passes:8.1f}x   ({est_passes} estimated vs {fast.forward_passes} images)")
            print(f"  pixels ratio paper/fast:        {est_passes * fast.input_shape[0] * fast.input_shape[1] / fast.pixels_processed:8.1f}x")
            print(f"  share of wall in model forward: fast {fast.meta['model_seconds'] / fast.wall_s:.3f}")
            _fast_summary(fast)
            continue
        t0 = time.time()
        paper = run(job, "paper", 0, args.device, args.fresh)
        floor = None if args.no_floor else run(job, "paper", 1, args.device, args.fresh)
        if args.paper_only:
            print(f"[{job}] paper maps ready ({time.time() - t0:.0f} s)")
            continue
        fast = run(job, "fast", 0, args.device)
        print(f"\n[{job}] {spec['task'].name}, roi {spec['roi']}, block {spec['block_size']}, "
              f"{paper.input_shape[1]}x{paper.input_shape[0]} input, {paper.rows * paper.cols} blocks")
        print(f"  wall ratio paper/fast:          {paper.wall_s / fast.wall_s:8.1f}x   (paper {paper.wall_s:.0f} s as recorded, fast {fast.wall_s:.1f} s)")
        print(f"  forward-pass ratio paper/fast:  {paper.forward_passes / fast.forward_passes:8.1f}x   ({paper.forward_passes} vs {fast.forward_passes} images)")
        print(f"  pixels ratio paper/fast:        {paper.pixels_processed / fast.pixels_processed:8.1f}x")
        print(f"  share of wall in model forward: paper {paper.meta['model_seconds'] / paper.wall_s:.3f}, fast {fast.meta['model_seconds'] / fast.wall_s:.3f}")
        _fast_summary(fast)
        fid = fidelity(fast, paper)
        ref = fidelity(floor, paper) if floor is not None else {}
        print(f"  {'fidelity vs paper seed 0':32s} {'fast seed 0':>14s} {'paper seed 1':>14s}")
        for k, v in fid.items():
            r = ref.get(k, "")
            fmt = lambda t: f"{t:14.3f}" if isinstance(t, float) else f"{str(t):>14s}"  # noqa: E731
            print(f"  {k:32s} {fmt(v)} {fmt(r)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
