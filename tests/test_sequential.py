"""The sequential sampling rule of fast mode, checked by simulation against known means."""

from __future__ import annotations

import numpy as np

from cem_checks.engine import sequential_sampling
from cem_checks.stats import t_quantile

LOOKS = [5, 10, 20, 35, 50]
TOL = 0.01


def simulate(means: np.ndarray, sds: np.ndarray, seed: int):
    rng = np.random.default_rng(seed)
    draws = rng.normal(means[:, None], sds[:, None], size=(means.size, LOOKS[-1]))

    def draw(active, start, stop, look):
        return draws[active, start:stop]

    return sequential_sampling(draw, means.size, LOOKS, TOL, 0.05, 0.2)


def test_stopped_intervals_cover_the_true_mean():
    """Union bound over the looks: the family-level interval misses the true mean in <= alpha of blocks."""
    rng = np.random.default_rng(0)
    means = rng.choice([0.0, 0.005, 0.02, 0.1, 1.0, -0.05, 5.0], size=6000)
    sds = np.abs(means) * rng.uniform(0.2, 3.0, size=means.size) + 0.003
    samples, counts, stopped, level = simulate(means, sds, 1)
    assert level == 1 - 0.05 / 5
    assert sum(stopped.values()) == means.size and stopped["precise"] > 200 and stopped["zero"] > 500
    misses = 0
    for k in np.unique(counts):
        sel = counts == k
        x = samples[sel, :k]
        half = t_quantile(0.5 + level / 2, k - 1) * x.std(1, ddof=1) / np.sqrt(k)
        misses += int((np.abs(x.mean(1) - means[sel]) > half).sum())
    assert misses / means.size <= 0.05


def test_zero_decisions_are_rare_for_effects_clearly_above_tol():
    means = np.full(3000, 0.03)  # three times the threshold
    sds = np.full(3000, 0.02)
    samples, counts, stopped, _ = simulate(means, sds, 3)
    zero = np.zeros(means.size, bool)
    for k in np.unique(counts):
        sel = counts == k
        x = samples[sel, :k]
        half = t_quantile(0.5 + (1 - 0.01) / 2, k - 1) * x.std(1, ddof=1) / np.sqrt(k)
        zero[sel] = (x.mean(1) + half < TOL) & (x.mean(1) - half > -TOL) & (k < 50)
    assert zero.mean() < 0.01 and stopped["zero"] / means.size < 0.01


def test_samples_spent_fall_with_the_signal_to_noise_ratio():
    means = np.array([5.0] * 200 + [0.05] * 200)
    sds = np.array([0.2] * 200 + [0.2] * 200)
    _, counts, _, _ = simulate(means, sds, 4)
    assert (counts[:200] == 5).all()  # strong, low-noise effects stop at the first look
    assert counts[200:].mean() > 30  # weak, noisy ones (mean 0.05 +- 0.2 dB) run towards the cap
    assert counts.max() == 50
