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
transposed convolutions up, concatenated skips) on a 64x64 input. Models written with shape code, all on 96x96
inputs: the FFDNet-style model as KAIR writes it (``ffdnet96_kair``), a U-Net that pads to a multiple and crops
back (``unet_pad96``), x2 SR upsampled with ``interpolate(size=...)`` (``interp_x2``) and SwinIR-style shifted
window attention (``window_x2``).

Timing: one small job in each mode runs first, untimed, so that neither side pays the process's one-time costs.
Fast mode then runs three times, once before the paper map and twice after it, and its median wall time is the
one compared (all three are printed); the paper map runs once. The load average is printed before and after.

Paper maps are expensive (the 256x256 one takes about two hours on 2 CPU cores): each is saved under
``benchmarks/results/`` and reused by later runs, which then print the wall time recorded when it was
computed. ``--fresh`` recomputes them. ``--estimate-paper JOB[,JOB]`` does not run paper mode for those
jobs: its cost is then *estimated* and labelled so: the paper's forward passes are counted exactly from
the grid (every block gets ``coarse`` draws, every block flagged by the same coarse rule gets ``fine``;
fast mode applies that rule to every block that can reach the ROI, and blocks that cannot are never
flagged), and its wall time is that count times the bare model's time per image on the same input size,
measured in the same run (a lower bound: it leaves out the engine's own overhead). No fidelity is printed
for an estimated job.

    python benchmarks/bench_engine.py [--jobs dncnn96,dncnn256,sr_ca,ffdnet96,ffdnet96_kair,unet_pad96,interp_x2,
                                              compact_x4,unet_x2,window_x2] [--device cpu]
                                      [--fresh] [--no-floor] [--estimate-paper dncnn256] [--contend]

``--contend`` keeps a second CPU-bound process busy (a pure-Python loop) throughout the run, as a CI runner or
pytest-xdist on 2 cores would.
"""

from __future__ import annotations

import argparse
import os
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


class PaddedUNet(torch.nn.Module):
    """A U-Net denoiser as NAFNet and Restormer write theirs: ``check_image_size`` pads the input to a multiple of
    ``2 ** levels`` (sizes from ``x.shape``), two strided-convolution levels down, transposed convolutions up with
    additive skips, a residual output cropped back to the input's size."""

    def __init__(self, features: int = 32):
        super().__init__()
        f, conv = features, torch.nn.Conv2d
        self.multiple = 4
        self.head = conv(3, f, 3, padding=1)
        self.enc1 = torch.nn.Sequential(conv(f, f, 3, padding=1), torch.nn.ReLU(), conv(f, f, 3, padding=1))
        self.down1 = conv(f, 2 * f, 2, stride=2)
        self.enc2 = torch.nn.Sequential(conv(2 * f, 2 * f, 3, padding=1), torch.nn.ReLU(), conv(2 * f, 2 * f, 3, padding=1))
        self.down2 = conv(2 * f, 4 * f, 2, stride=2)
        self.mid = torch.nn.Sequential(conv(4 * f, 4 * f, 3, padding=1), torch.nn.ReLU(), conv(4 * f, 4 * f, 3, padding=1))
        self.up2 = torch.nn.ConvTranspose2d(4 * f, 2 * f, 2, stride=2)
        self.dec2 = torch.nn.Sequential(conv(2 * f, 2 * f, 3, padding=1), torch.nn.ReLU())
        self.up1 = torch.nn.ConvTranspose2d(2 * f, f, 2, stride=2)
        self.dec1 = torch.nn.Sequential(conv(f, f, 3, padding=1), torch.nn.ReLU())
        self.tail = conv(f, 3, 3, padding=1)

    def check_image_size(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.size()
        ph, pw = (self.multiple - h % self.multiple) % self.multiple, (self.multiple - w % self.multiple) % self.multiple
        return torch.nn.functional.pad(x, (0, pw, 0, ph))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        B, C, H, W = inp.shape
        x = self.check_image_size(inp)
        e1 = self.enc1(self.head(x))
        e2 = self.enc2(self.down1(e1))
        m = self.mid(self.down2(e2))
        d2 = self.dec2(self.up2(m) + e2)
        d1 = self.dec1(self.up1(d2) + e1)
        return (x + self.tail(d1))[:, :, :H, :W]


class SizedInterpolationSR(torch.nn.Module):
    """x2 SR as VDSR-style repositories write it: the input upsampled to ``size=(2 * h, 2 * w)`` read from
    ``x.shape``, then a residual stack of 3x3 convolutions at the output's resolution."""

    def __init__(self, features: int = 32, convs: int = 8):
        super().__init__()
        layers = [torch.nn.Conv2d(3, features, 3, padding=1), torch.nn.ReLU()]
        for _ in range(convs - 2):
            layers += [torch.nn.Conv2d(features, features, 3, padding=1), torch.nn.ReLU()]
        self.body = torch.nn.Sequential(*layers, torch.nn.Conv2d(features, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        up = torch.nn.functional.interpolate(x, size=(2 * h, 2 * w), mode="bicubic", align_corners=False)
        return up + self.body(up)


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
    # shape code: a U-Net padded to a multiple of 4 and cropped back, x2 SR upsampled by size (96x96 inputs)
    "unet_pad96": dict(model=_seeded(lambda: PaddedUNet()), image=lambda: _bundled(96), task=cc.Denoising(50),
                       roi=(40, 40, 16), block_size=8, needs_data=False),
    "interp_x2": dict(model=_seeded(lambda: SizedInterpolationSR()), image=lambda: _bundled(192),
                      task=cc.SuperResolution(2), roi=(88, 88, 16), block_size=8, needs_data=False),
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


def _warm_up(device: str) -> None:
    """One small job in each mode before any timing, so that neither side pays the process's one-time costs
    (imports, first calls of torch's kernels) inside its measured wall time."""
    torch.manual_seed(0)
    model = KairFFDNet(features=8, layers=3).eval()
    for mode in ("paper", "fast"):
        cc.compute_cem(model, _bundled(32), task=cc.Denoising(50), roi=(8, 8, 8), block_size=8, mode=mode, seed=0,
                       device=device, progress=False)


def _run_jobs(args) -> int:
    _warm_up(args.device)
    print(f"load average before the jobs: {os.getloadavg()[0]:.2f}")
    try:
        return _each_job(args)
    finally:
        print(f"\nload average after the jobs: {os.getloadavg()[0]:.2f}")


def _each_job(args) -> int:
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
        fast_runs = [] if args.paper_only else [run(job, "fast", 0, args.device)]  # fast runs before and after the paper
        paper = run(job, "paper", 0, args.device, args.fresh)
        floor = None if args.no_floor else run(job, "paper", 1, args.device, args.fresh)
        if args.paper_only:
            print(f"[{job}] paper maps ready ({time.time() - t0:.0f} s)")
            continue
        fast_runs += [run(job, "fast", 0, args.device) for _ in range(2)]
        fast = sorted(fast_runs, key=lambda r: r.wall_s)[1]  # the median of the three
        walls = ", ".join(f"{r.wall_s:.2f}" for r in fast_runs)
        print(f"\n[{job}] {spec['task'].name}, roi {spec['roi']}, block {spec['block_size']}, "
              f"{paper.input_shape[1]}x{paper.input_shape[0]} input, {paper.rows * paper.cols} blocks")
        print(f"  wall ratio paper/fast:          {paper.wall_s / fast.wall_s:8.1f}x   (paper {paper.wall_s:.1f} s "
              f"{'as recorded' if not args.fresh else 'in this run'}, fast {fast.wall_s:.2f} s: the median of {walls} s)")
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
