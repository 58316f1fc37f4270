"""Which architectures of the spandrel zoo (tests/zoo.py: small, seeded weights) the engine evaluates locally, set
beside the truth. Runs where spandrel imports (`make setup-spandrel`).

One row per architecture, on its tiny job (``Arch.job``: a natural crop, an 8-px ROI at the centre of the output,
a 4x4 grid of blocks):

Weights: the zoo's seeded initialisation, with parameters left all zero made small and random (:func:`generic`).

- ``local in truth``: the input pixels the ROI output depends on (autograd: a random projection of the Jacobian
  of the ROI output, exact for generic weights; where autograd fails on an in-place update, each pixel replaced
  in turn) all lie strictly inside the image, none on its border rows or
  columns; ``reach px``: the Chebyshev distance (input px) from the ROI footprint of the farthest of them;
- ``local eval``: whether the engine's local evaluation takes the model (``cem_checks.local_eval.build_plan`` and
  ``traced_reach``), else its refusal, shortened; ``traced >= truth``: the traced reach box holds every pixel
  the ROI output depends on;
- with ``--maps``: a default (fast) map and a paper-mode map of the job, whether their supports are equal, and
  their forward passes and wall times side by side (paper / fast).

Last, a summary line: N built, M local in truth, K of those evaluated locally. ``--local-only`` lists only the
rows local in truth (the README's table; the summary still counts every architecture).

    python benchmarks/zoo_coverage.py [--arch NAME[,NAME]] [--maps] [--markdown] [--local-only]
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import zoo  # noqa: E402
from nets import jacobian_dependence  # noqa: E402

import cem_checks as cc  # noqa: E402
from cem_checks.grid import ROI, BlockGrid  # noqa: E402
from cem_checks.local_eval import build_plan, traced_reach  # noqa: E402
from cem_checks.tasks import parse_task  # noqa: E402

COLUMNS = ["name", "scale", "input", "local in truth", "reach px", "local eval", "traced >= truth"]
MAP_COLUMNS = ["fast = paper support", "fast fwd", "paper fwd", "fwd paper/fast", "fast s", "paper s",
               "wall paper/fast"]


def _short(text: str, n: int = 80) -> str:
    """``text`` on one line, at most ``n`` characters; of a refusal after a capture, the capture's part (the
    symbolic trace's refusal is then known: it could not read the model)."""
    text = " ".join(text.split())
    if "; captured at " in text:
        text = "captured at " + text.split("; captured at ", 1)[1]
    elif "; torch.compile " in text:
        text = "torch.compile " + text.split("; torch.compile ", 1)[1]
    return text if len(text) <= n else text[: n - 3] + "..."


def pixel_dependence(model: torch.nn.Module, x: torch.Tensor, roi: tuple, batch: int = 32) -> np.ndarray:
    """(h, w) bool: the input pixels whose replacement (all channels, by random values) changes the ROI output at
    all, bit for bit against the unchanged input in the same batch shape; one forward per pixel."""
    rx, ry, s = roi
    h, w = x.shape[-2:]
    g = torch.Generator().manual_seed(0)
    dep = np.zeros(h * w, bool)
    with torch.no_grad():
        base = model(x.repeat(batch, 1, 1, 1))[:1, :, ry : ry + s, rx : rx + s]
        for start in range(0, h * w, batch):
            idx = torch.arange(start, min(start + batch, h * w))
            xb = x.repeat(batch, 1, 1, 1)
            xb[torch.arange(len(idx)), :, idx // w, idx % w] = torch.rand(len(idx), x.shape[1], generator=g)
            roi_out = model(xb)[: len(idx), :, ry : ry + s, rx : rx + s]
            dep[idx.numpy()] = (roi_out != base).flatten(1).any(1).numpy()
    return dep.reshape(h, w)


def generic(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``model`` with every parameter that its initialisation leaves all zero (residual scales such as NAFNet's
    ``beta`` and ``gamma``, zero-initialised last convolutions) set to small seeded random values: with zeros there,
    whole branches add nothing, and a global branch would look local in truth."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and p.numel() and not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def row(a: zoo.Arch, maps: bool) -> dict:
    """The row of one architecture (see the module docstring)."""
    out: dict = {"name": a.name, "scale": a.scale, "input": f"{a.size}x{a.size}"}
    try:
        model = generic(a.build())
    except Exception as exc:  # noqa: BLE001 - a zoo entry that does not build is a row saying so
        return {**out, "local in truth": f"build failed: {_short(f'{type(exc).__name__}: {exc}', 60)}"}
    job = a.job()
    x = parse_task(job["task"]).degrade(cc.load_image(job["image"])[None])
    rx, ry, s = job["roi"]
    try:
        dep = jacobian_dependence(model, x, job["roi"]).numpy()
    except RuntimeError:  # an in-place update of a tensor autograd needs (PLKSR in eval mode): pixel by pixel
        dep = pixel_dependence(model, x, job["roi"])
    h, w = dep.shape
    inside = dep.any() and not (dep[0].any() or dep[-1].any() or dep[:, 0].any() or dep[:, -1].any())
    dist = BlockGrid(h, w, 1).pixel_distance(ROI(rx, ry, s).footprint(a.scale))
    out["local in truth"] = "yes" if inside else "no"
    out["reach px"] = int(dist[dep].max()) if dep.any() else 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan, why = build_plan(model, x)  # the symbolic trace, else the capture at the job's shape
        if plan is not None:
            box, why, _ = traced_reach(model, x, (ry, ry + s, rx, rx + s))
    if plan is not None and box is not None:
        ys, xs = np.nonzero(dep)
        y0, y1, x0, x1 = box
        how = "captured" if plan.shape is not None else "traced"
        out["local eval"] = f"yes, {how} (box y {y0}:{y1}, x {x0}:{x1})"
        out["traced >= truth"] = "yes" if (ys.min() >= y0 and ys.max() < y1 and xs.min() >= x0
                                           and xs.max() < x1) else "NO"
    else:
        out["local eval"] = f"no: {_short(why)}"
        out["traced >= truth"] = "-"
    if maps:
        kw = dict(task=job["task"], roi=job["roi"], block_size=job["block_size"], batch_size=job["batch_size"],
                  progress=False, device="cpu", seed=0)
        fast = cc.compute_cem(model, job["image"], **kw)
        paper = cc.compute_cem(model, job["image"], mode="paper", **kw)
        out["fast = paper support"] = "yes" if np.array_equal(fast.support, paper.support) else (
            f"no ({int((fast.support != paper.support).sum())} blocks differ)")
        out["fast fwd"], out["paper fwd"] = fast.forward_passes, paper.forward_passes
        out["fwd paper/fast"] = f"{paper.forward_passes / max(fast.forward_passes, 1):.1f}"
        out["fast s"], out["paper s"] = f"{fast.wall_s:.2f}", f"{paper.wall_s:.2f}"
        out["wall paper/fast"] = f"{paper.wall_s / max(fast.wall_s, 1e-9):.1f}"
    return out


def table(rows: list[dict], columns: list[str], markdown: bool) -> str:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    fmt = "  ".join(f"{{:<{wd}}}" for wd in widths)
    return "\n".join([fmt.format(*columns), *(fmt.format(*c) for c in cells)])


def summary(rows: list[dict]) -> str:
    built = [r for r in rows if "reach px" in r]
    local = [r for r in built if r["local in truth"] == "yes"]
    used = [r for r in local if str(r["local eval"]).startswith("yes")]
    return (f"{len(built)} built, {len(local)} local in truth, {len(used)} of those with local evaluation used"
            + (f" ({len(rows) - len(built)} failed to build)" if len(rows) > len(built) else ""))


def main(argv: list[str] | None = None) -> list[dict]:
    """Print the table (and return its rows)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", help="comma-separated zoo names (default: all)")
    p.add_argument("--maps", action="store_true", help="also compare a fast map with a paper map (slow)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table with the date and versions")
    p.add_argument("--local-only", action="store_true",
                   help="list only the architectures local in truth (the README's table); the summary counts all")
    args = p.parse_args(argv)
    why = zoo.unavailable()
    if why is not None:
        p.error(why)
    archs = [zoo.arch(n) for n in args.arch.split(",")] if args.arch else zoo.ARCHS
    rows = []
    for a in archs:
        t0 = time.perf_counter()
        rows.append(row(a, args.maps))
        if not args.markdown:
            print(f"  {a.name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    columns = COLUMNS + (MAP_COLUMNS if args.maps else [])
    if args.markdown:
        import spandrel

        print(f"spandrel zoo coverage, {datetime.date.today().isoformat()}: torch {torch.__version__}, "
              f"spandrel {spandrel.__version__}\n")
    shown = [r for r in rows if r.get("local in truth") == "yes"] if args.local_only else rows
    print(table(shown, columns, args.markdown))
    print(("\n" if args.markdown else "") + summary(rows))
    return rows


if __name__ == "__main__":
    main()
