"""Small, dependency-free statistics: Student-t quantiles and per-block summaries of draws."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer ``df`` (Abramowitz & Stegun 26.7.3-26.7.4, closed form)."""
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 1:
        total, term = 0.0, 1.0
        if df > 1:
            total = c
            term = c
            for k in range(3, df - 1, 2):
                term *= c * c * (k - 1) / k
                total += term
        return 2.0 / math.pi * (theta + s * total) if df > 1 else 2.0 * theta / math.pi
    total, term = 1.0, 1.0
    for k in range(2, df - 1, 2):
        term *= c * c * (k - 1) / k
        total += term
    return s * total


@lru_cache(maxsize=None)
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (p in (0.5, 1)) of Student's t with integer ``df >= 1``, to ~1e-12 by bisection."""
    if not (0.5 < p < 1.0):
        raise ValueError(f"p={p!r} must lie in (0.5, 1)")
    if df < 1:
        raise ValueError(f"df={df!r} must be >= 1")
    if df > 10_000:
        from statistics import NormalDist

        return NormalDist().inv_cdf(p)
    target = 2.0 * p - 1.0
    lo, hi = 0.0, 1.0
    while _t_two_sided_mass(hi, df) < target:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_two_sided_mass(mid, df) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13:
            break
    return 0.5 * (lo + hi)


def summarize_draws(samples: np.ndarray, counts: np.ndarray, level: float = 0.95):
    """Mean, standard error and t confidence interval of NaN-padded draws.

    ``samples`` is (n_blocks, max_n) float64 with NaN beyond each block's ``counts``. Returns float64 arrays
    ``mean, stderr, ci_low, ci_high``; stderr and CI are NaN for blocks with fewer than two draws, and the
    interval collapses to the mean when every draw is equal.
    """
    n = counts.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(samples, axis=1) / n
        dev = np.where(np.isnan(samples), 0.0, samples - mean[:, None])
        var = (dev**2).sum(axis=1) / (n - 1)
        stderr = np.where(counts >= 2, np.sqrt(var / n), np.nan)
    tq = np.array([t_quantile(0.5 + level / 2, int(k) - 1) if k >= 2 else np.nan for k in counts])
    half = tq * stderr
    return mean, stderr, mean - half, mean + half
