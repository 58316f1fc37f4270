"""The engine reproduces its golden maps (tests/data/engine_golden.json, written by
scripts/make_engine_golden.py): support, flagged blocks and draws per block exactly; effects within 2e-3 dB
(an occasional 8-bit flip of one ROI pixel, which float kernels of another CPU may cause)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from golden_jobs import JOBS, run_job

GOLDEN = json.loads((Path(__file__).parent / "data" / "engine_golden.json").read_text())["jobs"]


def test_every_job_has_a_golden_map():
    assert sorted(GOLDEN) == sorted(JOBS)


@pytest.mark.parametrize("name", sorted(JOBS))
def test_the_engine_reproduces_its_golden_map(name):
    want = GOLDEN[name]
    res = run_job(name)
    np.testing.assert_array_equal(res.support.astype(int), np.array(want["support"]), err_msg="support")
    np.testing.assert_array_equal(res.flagged.astype(int), np.array(want["flagged"]), err_msg="flagged")
    np.testing.assert_array_equal(res.n_samples, np.array(want["n_samples"]), err_msg="n_samples")
    np.testing.assert_allclose(res.raw_effect, np.array(want["effect_db"]), rtol=0, atol=2e-3, err_msg="effect")
    assert res.base_psnr == pytest.approx(want["base_psnr"], abs=2e-3)
    fast = res.meta.get("fast") or {}
    assert fast.get("support_radius_px") == want["support_radius_px"]
    assert fast.get("crop") == want["crop"]
    assert (fast.get("local_eval") or {}).get("used") == want["local_eval_used"]
    assert res.forward_passes == want["forward_passes"]
