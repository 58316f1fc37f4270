"""The published procedure (``mode="paper"``): ``coarse`` draws for every block; blocks where some draw moved the
ROI PSNR by >= ``tol_db`` are *flagged* and get ``fine`` fresh draws; the effect is O minus the mean ROI PSNR of
those fresh draws (unflagged blocks keep the mean of their coarse draws, below ``tol_db``)."""

from __future__ import annotations

import numpy as np

from .draws import Engine
from .estimates import Estimates
from .options import COARSE, FINE


def paper_estimates(eng: Engine, coarse: int, fine: int, tol: float) -> Estimates:
    nb = eng.grid.n_blocks
    all_blocks = np.arange(nb)
    eng.progress.stage("coarse", nb * coarse)
    c_drops, c_changed, _ = eng.single_block_draws(eng.full, COARSE, all_blocks, coarse, crn=False)
    support = c_changed.any(1)
    flagged = (np.abs(c_drops) >= tol).any(1)
    samples = np.full((nb, max(coarse, fine)), np.nan)
    samples[:, :coarse] = c_drops
    counts = np.full(nb, coarse, dtype=np.int64)
    fl = np.flatnonzero(flagged)
    if fl.size:
        eng.progress.stage("fine", int(fl.size) * fine)
        f_drops, f_changed, _ = eng.single_block_draws(eng.full, FINE, fl, fine, crn=False)
        samples[fl] = np.nan
        samples[fl, :fine] = f_drops
        counts[fl] = fine
        support[fl] |= f_changed.any(1)
    return Estimates(samples=samples, counts=counts, support=support, flagged=flagged)
