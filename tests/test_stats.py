"""Student-t quantiles and per-block summaries."""

from __future__ import annotations

import numpy as np
import pytest

from cem_checks.stats import summarize_draws, t_quantile

# two-sided 95 % critical values of Student's t (standard tables)
TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 20: 2.086, 30: 2.042, 49: 2.010, 120: 1.980}


@pytest.mark.parametrize("df, value", sorted(TABLE.items()))
def test_t_quantile_matches_tables(df, value):
    assert t_quantile(0.975, df) == pytest.approx(value, abs=6e-4)


def test_t_quantile_other_levels_and_limits():
    assert t_quantile(0.995, 10) == pytest.approx(3.169, abs=1e-3)
    assert t_quantile(0.95, 1) == pytest.approx(6.314, abs=1e-3)
    assert t_quantile(0.975, 10**6) == pytest.approx(1.95996, abs=1e-4)
    with pytest.raises(ValueError):
        t_quantile(0.3, 5)


def test_summary_of_padded_draws():
    samples = np.array([[1.0, 2.0, 3.0, np.nan], [5.0, np.nan, np.nan, np.nan], [2.0, 2.0, 2.0, 2.0]])
    counts = np.array([3, 1, 4])
    mean, se, lo, hi = summarize_draws(samples, counts)
    np.testing.assert_allclose(mean, [2.0, 5.0, 2.0])
    assert se[0] == pytest.approx(1 / np.sqrt(3)) and np.isnan(se[1]) and se[2] == 0
    assert lo[0] == pytest.approx(2 - 4.303 / np.sqrt(3), abs=1e-3) and hi[2] == 2.0


def test_ci_coverage_by_simulation():
    """The t interval of 50 Gaussian draws covers the true mean ~95 % of the time."""
    rng = np.random.default_rng(0)
    samples = rng.normal(0.3, 1.0, size=(4000, 50))
    _, _, lo, hi = summarize_draws(samples, np.full(4000, 50))
    coverage = np.mean((lo <= 0.3) & (0.3 <= hi))
    assert 0.94 < coverage < 0.96
