"""Write tests/data/engine_golden.json: small maps computed by the engine, which later versions must reproduce.

Each job is a tiny, seeded map (fast and paper mode, denoising, SR, deraining, a global model, a planted
non-local dependency, switches of FastOptions). The file keeps, per job, the per-block effects (dB, 6
decimals), support, flagged blocks and draws per block, and a few meta values. tests/test_engine_golden.py
recomputes every job and compares: support, flags and draws exactly, effects within a tolerance that allows an
occasional 8-bit flip of one ROI pixel from float kernels of another CPU.

Run it only when a change of the maps is intended: ``python scripts/make_engine_golden.py``. When only what the
maps cost changes (forward passes, the support radius the fast path records, its crop, local evaluation), run
``python scripts/make_engine_golden.py --costs-only``: it recomputes every job, stops naming the job and field if
any map differs from the file (support, flags, draws exactly, effects within the test's tolerance), and rewrites
the cost fields only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import cem_checks as cc  # noqa: E402
from golden_jobs import JOBS, run_job  # noqa: E402


def record(result: cc.CEMResult) -> dict:
    fast = result.meta.get("fast") or {}
    return {
        "effect_db": np.round(result.raw_effect, 6).tolist(),
        "support": result.support.astype(int).tolist(),
        "flagged": result.flagged.astype(int).tolist(),
        "n_samples": result.n_samples.tolist(),
        "forward_passes": int(result.forward_passes),
        "base_psnr": round(float(result.base_psnr), 6),
        "support_radius_px": fast.get("support_radius_px"),
        "crop": fast.get("crop"),
        "local_eval_used": (fast.get("local_eval") or {}).get("used"),
    }


MAP_FIELDS = ("support", "flagged", "n_samples")
COST_FIELDS = ("forward_passes", "support_radius_px", "crop", "local_eval_used")


def same_map(name: str, old: dict, new: dict) -> None:
    """Stop (SystemExit naming the job and the field) unless ``new`` is the map ``old`` holds."""
    for field in MAP_FIELDS:
        if not np.array_equal(np.array(old[field]), np.array(new[field])):
            raise SystemExit(f"{name}: {field} differs from the golden file; --costs-only keeps maps as they are: "
                             "run without it if the change of the map is intended")
    if not np.allclose(np.array(old["effect_db"]), np.array(new["effect_db"]), rtol=0, atol=2e-3):
        raise SystemExit(f"{name}: effect_db differs from the golden file by more than 2e-3 dB")
    if abs(old["base_psnr"] - new["base_psnr"]) > 2e-3:
        raise SystemExit(f"{name}: base_psnr differs from the golden file by more than 2e-3 dB")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    path = ROOT / "tests" / "data" / "engine_golden.json"
    out = {name: record(run_job(name)) for name in JOBS}
    if "--costs-only" in argv:
        old = json.loads(path.read_text())["jobs"]
        for name, new in out.items():
            same_map(name, old[name], new)
            changed = {k: (old[name].get(k), new[k]) for k in COST_FIELDS if old[name].get(k) != new[k]}
            if changed:
                print(f"{name}: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
            old[name].update({k: new[k] for k in COST_FIELDS})
        out = old
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"cem_checks": cc.__version__, "jobs": out}, indent=1, sort_keys=True) + "\n")
    print(f"{len(out)} jobs -> {path}")


if __name__ == "__main__":
    main()
