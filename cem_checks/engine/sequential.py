"""Sequential sampling: per-block means estimated with early stopping at a few looks (fast mode's fine draws)."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..stats import t_quantile


def sequential_sampling(draw: Callable[[np.ndarray, int, int, int], np.ndarray], n_blocks: int, looks: list[int],
                        tol_db: float, alpha: float, rel_precision: float):
    """Sequential estimation of ``n_blocks`` means with early stopping at ``looks`` (increasing draw counts).

    ``draw(active, start, stop, look)`` returns the draws ``start..stop-1`` of the blocks whose indices are
    ``active`` as an (len(active), stop - start) array. After each look but the last, a block stops when its
    Student-t interval at level ``1 - alpha / len(looks)`` lies inside (-tol_db, tol_db) ("zero"), or lies
    outside [-tol_db, tol_db] with half-width <= ``rel_precision`` x |mean| ("precise"); the others go on to
    the last look ("cap"). By a union bound over the looks, the final interval of a block misses its true
    mean with probability at most ``alpha`` (up to the t approximation).

    Returns ``(samples (n_blocks, looks[-1]) NaN-padded, counts (n_blocks,), stopped counts, level)``.
    """
    level = 1.0 - alpha / len(looks)
    samples = np.full((n_blocks, looks[-1]), np.nan)
    counts = np.zeros(n_blocks, dtype=np.int64)
    stopped = {"zero": 0, "precise": 0, "cap": 0}
    active = np.arange(n_blocks)
    done = 0
    for li, n_look in enumerate(looks):
        if active.size == 0:
            break
        samples[active, done:n_look] = draw(active, done, n_look, li)
        counts[active] = n_look
        done = n_look
        if li == len(looks) - 1:
            stopped["cap"] += int(active.size)
            break
        x = samples[active, :n_look]
        mean = x.mean(1)
        half = t_quantile(0.5 + level / 2, n_look - 1) * x.std(1, ddof=1) / math.sqrt(n_look)
        zero = (mean - half > -tol_db) & (mean + half < tol_db)
        precise = ((mean - half > tol_db) | (mean + half < -tol_db)) & (half <= rel_precision * np.abs(mean))
        stopped["zero"] += int(zero.sum())
        stopped["precise"] += int(precise.sum())
        active = active[~(zero | precise)]
    return samples, counts, stopped, level
