"""Regression baselines: has a model's causal effect map drifted since it was accepted?

``cem_baseline(result)`` compares the fresh map block by block with the one stored under
``example_suite/baselines`` (see ``example_suite/conftest.py``): a block differs when its effect moved by more
than ``atol_db`` plus the half-widths of both 95 % confidence intervals, or when it started or stopped
affecting the ROI at all. Retraining a model, changing its architecture or the engine's estimator shows up
here even when every causal property still holds.

A missing baseline is written and the test fails saying so; after a deliberate change, accept the new maps
with ``pytest example_suite --cem-regen`` (rewrites those that differ) or ``--cem-regen-all``.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.cem(roi=(8, 8, 16))  # the maps of test_plain_cnn_locality.py: cached, not recomputed


@pytest.mark.cem(task="sr2")
def test_plain_sr_map_matches_its_baseline(cem, example_model, held_out, cem_baseline):
    result = cem(example_model("plain_sr2"), held_out(64))
    cem_baseline(result, atol_db=0.05)


@pytest.mark.cem(task="dr")
def test_derain_map_matches_its_baseline(cem, example_model, held_out, cem_baseline):
    result = cem(example_model("derain_dr"), held_out(64))
    cem_baseline(result, atol_db=0.05)
