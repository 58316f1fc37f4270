"""The per-block estimates of a map, as the estimation stages (paper or fast procedure) return them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..stats import summarize_draws


@dataclass
class Estimates:
    """Per-block draws and what the engine derives from them; arrays are over the blocks in row-major order.

    ``samples`` (n_blocks, max_draws) float64 dB: PSNR drops, NaN-padded beyond ``counts`` (int64, draws behind
    each estimate; 0 for blocks shown to have no effect, whose estimates are exactly 0). ``support``: some draw
    changed the ROI output at all; ``flagged``: a coarse draw moved the ROI PSNR by >= tol_db. ``mean``,
    ``stderr``, ``ci_low``, ``ci_high`` (dB) summarise the draws (95 % Student-t interval). ``info``: what the
    procedure reports in ``meta``.
    """

    samples: np.ndarray
    counts: np.ndarray
    support: np.ndarray
    flagged: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    mean: np.ndarray = field(init=False)
    stderr: np.ndarray = field(init=False)
    ci_low: np.ndarray = field(init=False)
    ci_high: np.ndarray = field(init=False)

    def __post_init__(self):
        nb = self.counts.size
        self.mean, self.stderr, self.ci_low, self.ci_high = (np.zeros(nb) for _ in range(4))
        drawn = self.counts > 0
        m, s, lo, hi = summarize_draws(self.samples[drawn], self.counts[drawn])
        self.mean[drawn], self.stderr[drawn], self.ci_low[drawn], self.ci_high[drawn] = m, s, lo, hi
