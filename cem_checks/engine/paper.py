"""The published procedure (``mode="paper"``): ``coarse`` draws for every block; blocks where some draw moved the
ROI PSNR by >= ``tol_db`` are *flagged* and get ``fine`` fresh draws; the effect is O minus the mean ROI PSNR of
those fresh draws (unflagged blocks keep the mean of their coarse draws, below ``tol_db``).

The draws do not depend on the ROI: the coarse draws are one stream over all blocks, and each block's fine draws
are a stream of their own (patches and noise derived from the seed and the block), run in batches of their own.
So several ROIs of one image (:func:`paper_estimates_shared`) read their PSNRs from the same forwards: the coarse
draws run once, and each fine draw once for every block some ROI flagged, with maps identical to separate runs.
"""

from __future__ import annotations

import numpy as np

from ..cache import ChunkCache
from .draws import Engine, Frame
from .estimates import Estimates
from .options import COARSE, Phase


def fine_phase(block: int) -> Phase:
    """The phase of block ``block``'s fine draws (its own random streams; cached as ``fine-block<i>``)."""
    return Phase("fine-block", int(block))


def paper_estimates(eng: Engine, coarse: int, fine: int, tol: float) -> Estimates:
    return paper_estimates_shared(eng, [eng.full], [eng.cache], coarse, fine, tol)[0]


def paper_estimates_shared(eng: Engine, frames: list[Frame], caches: list[ChunkCache], coarse: int, fine: int,
                           tol: float) -> list[Estimates]:
    """The paper's estimates for several ROIs (one full-input frame and one cache each) from shared forwards.

    Returns one :class:`Estimates` per frame, each with ``info["forward_passes_read"]``: the intervened forward
    passes whose outputs that ROI read (its coarse draws and the fine draws of its flagged blocks)."""
    nb = eng.grid.n_blocks
    F = len(frames)
    all_blocks = np.arange(nb)
    eng.shared_frames = list(frames)
    try:
        eng.progress.stage("coarse", nb * coarse)
        c_drops, c_changed = eng.run_frames(frames, caches, COARSE,
                                            *eng.single_block_pairs(COARSE, all_blocks, coarse, crn=False),
                                            nb * coarse)
        c_drops = c_drops.reshape(F, nb, coarse)
        c_changed = c_changed.reshape(F, nb, coarse)
        flagged = (np.abs(c_drops) >= tol).any(2)
        support = c_changed.any(2)
        samples = np.full((F, nb, max(coarse, fine)), np.nan)
        samples[:, :, :coarse] = c_drops
        counts = np.full((F, nb), coarse, dtype=np.int64)
        union = np.flatnonzero(flagged.any(0))
        eng.progress.stage("fine", int(union.size) * fine)
        for b in union:
            ks = np.flatnonzero(flagged[:, b])
            phase = fine_phase(b)
            f_drops, f_changed = eng.run_frames([frames[k] for k in ks], [caches[k] for k in ks], phase,
                                                *eng.single_block_pairs(phase, np.array([b]), fine, crn=False), fine)
            samples[ks, b] = np.nan
            samples[ks, b, :fine] = f_drops
            counts[ks, b] = fine
            support[ks, b] |= f_changed.any(1)
    finally:
        eng.shared_frames = []
    return [Estimates(samples=samples[k], counts=counts[k], support=support[k], flagged=flagged[k],
                      info={"forward_passes_read": nb * coarse + fine * int(flagged[k].sum()),
                            "shared_fine_blocks": int(union.size)})
            for k in range(F)]
