"""Train the example models of the suite on the CPU and write their checkpoints and manifest.

    python example_suite/train.py [--only NAME ...] [--out example_suite/checkpoints] [--steps N]

Each model (see :data:`example_suite.zoo.MODELS`) is trained from random crops (with flips and rotations)
of the bundled natural images astronaut, coffee and rocket (``cem_checks/data``, sources and licences in
``cem_checks/data/NOTICE.md``); chelsea is held out for validation. The degraded inputs are made by the
engine's own task objects (``SuperResolution(2)``, ``Denoising(50, seed)``, ``Deraining(seed)``) with a
fresh noise / rain seed per sample, so each model is trained on exactly the kind of input the engine feeds
it. Adam with a cosine learning-rate decay, L1 loss; every random draw comes from a ``torch.Generator``
seeded by ``--seed``.

Two models train at once (``--jobs 2``: one process and, by default, one thread each); ``--jobs 1`` trains
them one after the other and writes bit-identical weights. On 2 CPU cores the six models take about 8
minutes (``--jobs 1``: about 15-18 minutes).

Written: ``<out>/<name>.pt`` (``torch.save(model.state_dict())``, loadable with ``weights_only=True``) and
``<out>/manifest.json`` (architecture, task, receptive radius, training settings and time, PSNR on the
held-out crops next to the trivial baseline's: bicubic for SR, the degraded input for DN and DR). Models
not retrained keep their manifest entries.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from cem_checks._io import atomic_write, atomic_write_text
from example_suite import zoo


def train_one(spec: zoo.ModelSpec, steps: int, seed: int, log_every: int = 250) -> tuple[torch.nn.Module, dict]:
    """Train ``spec``'s model for ``steps`` Adam steps; returns the model (eval mode) and its manifest entry."""
    torch.manual_seed(seed)  # weight initialisation
    factory = zoo.resolve_arch(spec.arch)
    model = factory()
    gen = torch.Generator().manual_seed(seed)
    images = zoo.load_images(zoo.TRAIN_IMAGES)
    val = zoo.val_crops()
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    start = time.perf_counter()
    model.train()
    running = 0.0
    for step in range(1, steps + 1):
        clean = zoo.random_crops(images, spec.batch, spec.crop_px, gen)
        seeds = torch.randint(2**31 - 1, (spec.batch,), generator=gen).tolist()
        x = zoo.degrade(spec.task, clean, seeds)
        loss = F.l1_loss(model(x), clean)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += float(loss.detach())
        if step % log_every == 0 or step == steps:
            print(f"  {spec.name} step {step}/{steps} L1 {running / log_every:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            running = 0.0
    seconds = time.perf_counter() - start
    model.eval()
    psnr, baseline = zoo.evaluate(model, spec.task, val)
    trivial = "bicubic upsampling" if spec.task.startswith("sr") else "the degraded input (identity)"
    entry = {
        "file": f"{spec.name}.pt",
        "architecture": spec.arch,
        "description": spec.description,
        "task": spec.task,
        "scale": int(getattr(model, "scale", 1)),
        "receptive_radius": getattr(model, "receptive_radius", None),
        "receptive_radius_exact": bool(getattr(model, "pure_conv", False)),
        "local_radius": getattr(model, "local_radius", None),
        "parameters": sum(p.numel() for p in model.parameters()),
        "training": {
            "images": list(zoo.TRAIN_IMAGES),
            "held_out": zoo.HELD_OUT_IMAGE,
            "source": "cem_checks/data/images (see cem_checks/data/NOTICE.md)",
            "degradation": f"cem_checks.tasks via task {spec.task!r}, a fresh noise/rain seed per sample",
            "crop_px": spec.crop_px,
            "batch": spec.batch,
            "steps": steps,
            "optimizer": f"Adam lr {spec.lr:g}, cosine decay",
            "loss": "L1",
            "seed": seed,
            "seconds": round(seconds, 1),
            "threads": torch.get_num_threads(),
        },
        "validation": {
            "image": zoo.HELD_OUT_IMAGE,
            "crops": len(val),
            "crop_px": zoo.VAL_CROP_PX,
            "crop_seed": zoo.VAL_SEED,
            "psnr_db": round(psnr, 3),
            "trivial_baseline": trivial,
            "trivial_psnr_db": round(baseline, 3),
            "gain_db": round(psnr - baseline, 3),
        },
    }
    return model, entry


def _train_job(job: tuple[str, int, int, int]) -> tuple[str, dict, dict]:
    """Train one model in this process: (name, steps, seed, threads) -> (name, state_dict, manifest entry)."""
    name, steps, seed, threads = job
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # denormal floats slow CPU convolutions down by an order of magnitude
    spec = zoo.MODELS[name]
    print(f"training {name} ({spec.arch}, task {spec.task}, {steps} steps)", flush=True)
    model, entry = train_one(spec, steps, seed)
    return name, model.state_dict(), entry


def _write_manifest(path: Path, models: dict) -> None:
    manifest = {
        "description": "Example models of pytest-cem's example suite, trained by example_suite/train.py.",
        "torch": torch.__version__,
        "platform": platform.platform(),
        "models": {k: models[k] for k in zoo.MODELS if k in models},
    }
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(zoo.MODELS), help="train only these models")
    parser.add_argument("--out", type=Path, default=zoo.CHECKPOINTS, help="checkpoint folder")
    parser.add_argument("--steps", type=int, help="Adam steps per model (default: each model's own, see zoo.MODELS)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and of every draw")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads per model (1 is the fastest on a small, shared CPU: no thread barriers)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="models trained at once, one process each (the weights do not depend on it: every draw "
                             "is seeded per model)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    models = manifest.get("models", {})
    jobs = [(name, args.steps or zoo.MODELS[name].steps, args.seed, args.threads) for name in args.only or zoo.MODELS]
    start = time.perf_counter()
    if min(args.jobs, len(jobs)) > 1:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(min(args.jobs, len(jobs)))
        finished = pool.imap_unordered(_train_job, jobs)
    else:
        pool, finished = None, map(_train_job, jobs)
    failures = []
    for name, state_dict, entry in finished:
        atomic_write(args.out / entry["file"], lambda fh, sd=state_dict: torch.save(sd, fh))  # whole files only
        entry["bytes"] = (args.out / entry["file"]).stat().st_size
        models[name] = entry
        _write_manifest(manifest_path, models)
        v = entry["validation"]
        verdict = "beats" if v["gain_db"] > 0 else "DOES NOT beat"
        print(f"  {name}: {v['psnr_db']:.2f} dB on held-out {v['image']} crops vs {v['trivial_psnr_db']:.2f} dB "
              f"for {v['trivial_baseline']} ({verdict} it by {v['gain_db']:+.2f} dB); "
              f"{entry['training']['seconds']:.0f} s", flush=True)
        if v["gain_db"] <= 0:
            failures.append(name)
    if pool is not None:
        pool.close()
        pool.join()
    print(f"wrote {manifest_path}; {len(jobs)} models in {time.perf_counter() - start:.0f} s wall")
    if failures:
        print(f"models that do not beat their trivial baseline: {failures}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
