"""Write tests/data/engine_golden.json: small maps computed by the engine, which later versions must reproduce.

Each job is a tiny, seeded map (fast and paper mode, denoising, SR, deraining, a global model, a planted
non-local dependency, switches of FastOptions). The file keeps, per job, the per-block effects (dB, 6
decimals), support, flagged blocks and draws per block, and a few meta values. tests/test_engine_golden.py
recomputes every job and compares: support, flags and draws exactly, effects within a tolerance that allows an
occasional 8-bit flip of one ROI pixel from float kernels of another CPU.

Run it only when a change of the maps is intended: ``python scripts/make_engine_golden.py``.
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


def main() -> None:
    out = {name: record(run_job(name)) for name in JOBS}
    path = ROOT / "tests" / "data" / "engine_golden.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"cem_checks": cc.__version__, "jobs": out}, indent=1, sort_keys=True) + "\n")
    print(f"{len(out)} jobs -> {path}")


if __name__ == "__main__":
    main()
