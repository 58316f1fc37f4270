"""Fast mode (``mode="fast"``, the default): the same estimand as the paper for far less compute, as a pipeline
of stages, each of which can be switched off through :class:`~cem_checks.engine.FastOptions`:

1. *Support* (:mod:`.support`): the ring binary search and a k-d split rule out every block that cannot change
   the ROI output (effect exactly 0, no per-block pass). The k-d stage may spend ``group_budget`` of the coarse
   budget (at least its first split, three tests) plus the coarse draws it has already saved, so it goes on
   where the support is sparse and stops early where it is dense. Where the draws are evaluated locally in the
   full input, the k-d split runs after the coarse draws instead, on the blocks that no draw changed.
2. *Crop* (:mod:`.crop`): the model runs on the bounding box of the remaining blocks, once verified.
3. *Coarse*: ``coarse`` draws per remaining block (the paper's flagging rule: some draw moved the ROI PSNR by
   >= ``tol_db``), with common random numbers;
4. *Fine* (:mod:`.sequential`): flagged blocks get fresh draws in rounds up to ``fine``, each stopping when its
   interval is decided.

The coarse and fine draws are evaluated locally (:mod:`.local`) when the model's traced graph allows it and a
check on real interventions agrees with the normal forward; ``support`` stays exact through group tests and a
normal-forward confirmation of the blocks whose local draws did not change the ROI output.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .crop import verified_crop
from .draws import Engine, Frame
from .estimates import Estimates
from .local import local_setup
from .options import COARSE, CONFIRM, FastOptions, Phase
from .sequential import sequential_sampling
from .support import SupportSearch


def support_candidates(eng: Engine, search: SupportSearch | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Stage 1's radius: the blocks within the support radius and the traced reach (bool, n_blocks), and a summary
    of the group tests; the k-d split is :func:`fast_prepare`'s (or :func:`fast_finish`'s)."""
    nb = eng.grid.n_blocks
    if search is None:
        return np.ones(nb, dtype=bool), {}
    eng.progress.stage("support")
    radius = search.radius()
    candidates = (search.dist <= radius) & search.reach  # outside the traced reach: no path to the ROI
    return candidates, {"support_radius_px": radius, "group_tests": search.ring_tests, "ruled_out_by_kd": 0}


def _kd_budget(coarse: int, n_candidates: int, opts: FastOptions) -> float:
    """The draws the k-d split may spend: ``group_budget`` of the coarse draws, at least its first split."""
    return max(opts.group_budget * coarse * n_candidates, 3 * opts.group_draws)


def _full_frame_local(eng: Engine, opts: FastOptions) -> bool:
    """Whether the draws run in the full input, evaluated locally there (see :func:`crop_frame`)."""
    plan = eng.plans.get(tuple(eng.full.x.shape), (None, ""))[0]
    return bool(opts.local_eval and plan is not None and plan.shape is not None and not plan.has_whole
                and eng.runner.precision == "fp32")


def crop_frame(eng: Engine, candidates: np.ndarray, opts: FastOptions) -> tuple[Frame, dict[str, Any]]:
    """Stage 2: the frame the draws run in (a verified crop, or the full input). A model whose local-evaluation
    plan is a capture at the full input's shape (made for the traced reach) draws in the full input: local
    evaluation computes only what the ROI needs there, and a crop would capture the model again at its shape. Not
    so where the plan has a region of tokens, which runs on its whole input: a crop makes that smaller."""
    if opts.crop and not candidates.all():
        if _full_frame_local(eng, opts):
            return eng.full, {"crop": None, "crop_check": "not needed: local evaluation in the full input, "
                                                          "captured for the traced reach"}
        return verified_crop(eng, candidates, opts)
    return eng.full, {"crop": None, "crop_check": "off" if not opts.crop else "not needed"}


class FastState:
    """Fast mode's state between its stages: the candidates, the frame the draws run in, local evaluation and the
    meta summary (see :func:`fast_prepare`)."""

    def __init__(self, eng: Engine, candidates: np.ndarray, frame: Frame, local: Any, info: dict[str, Any],
                 search: SupportSearch | None = None):
        self.eng, self.candidates, self.frame, self.local, self.info = eng, candidates, frame, local, info
        #: the support search whose k-d split waits for the coarse draws (see :func:`fast_prepare`), or None
        self.search = search

    @property
    def cand(self) -> np.ndarray:
        return np.flatnonzero(self.candidates)

    @property
    def full_image_draws(self) -> bool:
        """Nothing ruled out, no crop, no local evaluation: every coarse draw is a full-input forward that every
        ROI of the image can read (see :func:`cem_checks.engine.job.map_many`)."""
        return bool(self.candidates.all()) and self.frame is self.eng.full and self.local is None


def fast_prepare(eng: Engine, search: SupportSearch | None, coarse: int, tol: float, opts: FastOptions) -> FastState:
    """Stages 1 and 2 and the local-evaluation check.

    Where the draws run in the full input whatever the k-d split rules out (local evaluation at the full input's
    shape), local evaluation is checked first, once. Verified, it moves the split after the coarse draws: a block
    that some locally evaluated draw changed is in the support already, so the split runs on the others only
    (:func:`fast_finish`), and not at all where every candidate changed."""
    candidates, info = support_candidates(eng, search)
    full_frame = search is not None and opts.crop and _full_frame_local(eng, opts)
    if full_frame:
        frame, crop_info = crop_frame(eng, candidates, opts)
        info.update(crop_info)
        local = _checked_local(eng, search, frame, candidates, opts, tol, info)
        if local is not None:
            return FastState(eng, candidates, frame, local, info, search=search)
    if search is not None:
        ruled_out, kd = search.refine(info["support_radius_px"], budget=_kd_budget(coarse, int(candidates.sum()), opts),
                                      reward=coarse)
        candidates &= ~ruled_out
        info["group_tests"] += kd["tests"]
        info["ruled_out_by_kd"] = kd["ruled_out"]
    if full_frame:  # checked above, in this very frame
        return FastState(eng, candidates, frame, None, info)
    frame, crop_info = crop_frame(eng, candidates, opts)
    info.update(crop_info)
    return FastState(eng, candidates, frame, _checked_local(eng, search, frame, candidates, opts, tol, info), info)


def _checked_local(eng: Engine, search: SupportSearch | None, frame: Frame, candidates: np.ndarray,
                   opts: FastOptions, tol: float, info: dict[str, Any]):
    """:func:`local_setup` for the candidates' draws in ``frame``, its summary written to ``info``; a check that
    fails (or a plan refused) stops the traced reach."""
    local, info["local_eval"] = local_setup(eng, frame, np.flatnonzero(candidates), opts, tol)
    check = info["local_eval"]["check"]
    if search is not None and check.startswith(("failed", "unsupported")):
        search.disable_reach(f"local evaluation's check of the traced graph {check}")
        info["reach"] = search.reach_info
    return local


def fast_coarse(st: FastState, coarse: int, opts: FastOptions):
    """Stage 3's draws: (drops, changed, exact) of the candidates, (n_candidates, coarse) each."""
    cand = st.cand
    st.eng.progress.stage("coarse", int(cand.size) * coarse)
    return st.eng.single_block_draws(st.frame, COARSE, cand, coarse, crn=opts.common_random_numbers, local=st.local)


def fast_estimates(eng: Engine, search: SupportSearch | None, coarse: int, fine: int, tol: float,
                   opts: FastOptions) -> Estimates:
    st = fast_prepare(eng, search, coarse, tol, opts)
    return fast_finish(st, fast_coarse(st, coarse, opts), coarse, fine, tol, opts)


def fast_finish(st: FastState, coarse_draws, coarse: int, fine: int, tol: float, opts: FastOptions) -> Estimates:
    """The rest of stage 3 (flags, support confirmation) and stage 4, from the coarse draws."""
    eng, frame, local, info, candidates = st.eng, st.frame, st.local, st.info, st.candidates
    nb = eng.grid.n_blocks
    cand = st.cand
    c_drops, c_changed, c_exact = coarse_draws
    samples = np.full((nb, max(coarse, fine)), np.nan)
    counts = np.zeros(nb, dtype=np.int64)
    support = np.zeros(nb, dtype=bool)
    flagged = np.zeros(nb, dtype=bool)
    samples[cand, :coarse] = c_drops
    counts[cand] = coarse
    flagged[cand] = (np.abs(c_drops) >= tol).any(1)
    support[cand] = c_changed.any(1) | (flagged[cand] & (tol > 0))
    # Support stays exact: a block that no locally evaluated draw clearly changed (and that is not flagged) gets
    # its coarse draws again through the normal forward, compared bit for bit with the baseline.
    unsure = cand[~support[cand] & ~c_exact.all(1)]
    if st.search is not None:  # the k-d split, on the blocks no draw changed: each it rules out needs no confirmation
        budget = _kd_budget(coarse, int(cand.size), opts)
        ruled, kd = st.search.refine(int(info["support_radius_px"]), budget=budget, reward=coarse, root=unsure)
        info["group_tests"] += kd["tests"]
        info["ruled_out_by_kd"] = kd["ruled_out"]
        if ruled.any():
            candidates = candidates & ~ruled
            samples[ruled] = np.nan
            counts[ruled] = 0
            flagged[ruled] = False
            unsure = unsure[~ruled[unsure]]
            cand = np.flatnonzero(candidates)
    if unsure.size:
        eng.progress.stage("confirm", int(unsure.size) * coarse)
        _, u_changed, _ = eng.single_block_draws(frame, CONFIRM, unsure, coarse, crn=opts.common_random_numbers)
        support[unsure] = u_changed.any(1)
    info["support_confirmed"] = int(unsure.size)

    # Stage 4: fine draws of the flagged blocks, sequentially, locally where verified.
    fl = np.flatnonzero(flagged)
    samples[fl] = np.nan
    counts[fl] = 0
    looks = [n for n in opts.looks if n < fine] + [fine] if opts.adaptive else [fine]

    def draw(active: np.ndarray, start: int, stop: int, look: int) -> np.ndarray:
        d, ch, _ = eng.single_block_draws(frame, Phase("fine", look), fl[active], stop - start,
                                          crn=opts.common_random_numbers, first_draw=start, local=local)
        support[fl[active]] |= ch.any(1)
        return d

    eng.progress.stage("fine", int(fl.size) * fine)
    fine_samples, fine_counts, stopped, level = sequential_sampling(draw, fl.size, looks, tol, opts.alpha, opts.rel_precision)
    samples[fl, :fine] = fine_samples
    counts[fl] = fine_counts
    info.update({"candidates": int(candidates.sum()), "stopped": stopped, "sampling_level": level})
    return Estimates(samples=samples, counts=counts, support=support, flagged=flagged, info=info)
