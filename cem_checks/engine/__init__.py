"""The causal effect map engine: :func:`compute_cem` (a map), :func:`compute_cem_many` (the maps of several ROIs of one
image from shared forwards) and :func:`compute_support` (its exact support alone).

Modules, one job each: :mod:`.options` (settings, phases), :mod:`.runner` (calling the model, model checks),
:mod:`.draws` (draw synthesis, the chunk runner), :mod:`.support` (group testing), :mod:`.crop` (the verified
crop), :mod:`.sequential` (sequential sampling), :mod:`.local` (local evaluation glue), :mod:`.paper` (the
published procedure), :mod:`.fast` (fast mode's stages), :mod:`.estimates`, :mod:`.cachekey` (what the cache
keys cover) and :mod:`.job` (the pipeline of stages behind both functions).

Estimand (both modes; Hu et al., TPAMI 2025): for each block b of the model input,
``effect(b) = O - E[PSNR of the ROI when b holds random natural content]`` in dB, where O is the baseline
ROI PSNR, and ``|effect| < tol_db`` counts as 0. The outcome is the RGB PSNR of the ROI of the model
output against the clean image, both clamped to [0, 1] and rounded to 8 bits (the PSNR of uint8 images),
capped at ``MAX_PSNR_DB``.

``mode="paper"`` (the published procedure): ``coarse`` draws for every block; blocks where some draw moved
the ROI PSNR by >= ``tol_db`` are *flagged* and get ``fine`` fresh draws; the effect is O minus the mean
ROI PSNR of those fresh draws (unflagged blocks keep the mean of their coarse draws, below ``tol_db``).

``mode="fast"`` (the default) estimates the same quantity for far less compute; every mechanism can be
switched off through :class:`FastOptions`:

1. *Exact zero detection by group testing.* Many blocks are intervened on at once. If the ROI output stays
   bit-identical to the baseline (computed with the same batch shape) under ``group_draws`` independent
   joint draws, every block of the group is marked outside the support, with effect exactly 0 and no
   per-block pass. Groups are first the rings "distance > d" (a binary search over d for the support
   radius), then halves of the remaining candidates (a k-d split), recursing only into groups that
   changed; the k-d stage may spend ``group_budget`` of the coarse budget (at least its first split, three
   tests) plus the coarse draws it has already saved, so it goes on where the support is sparse and stops
   early where it is dense. *Assumption:* a
   block that can change the ROI output does so under a random joint replacement of its group (no exact
   cancellation between blocks, and no dependence confined to a set of contents that random natural
   patches miss), which holds for generic weights; ``group_draws`` (default 3) independent draws guard the
   verdict. The same search, alone, is :func:`compute_support` (see :mod:`.support`).
2. *Crop to a verified support.* Once the blocks beyond the support radius are shown to have no effect,
   the model runs on the bounding box of the remaining blocks (whole blocks, SR: in input px) instead of
   the full image, after checking that the ROI output of the cropped baseline equals the full-image ROI
   output within ``crop_atol`` (float kernels may differ with the input size; measured on the real DnCNN:
   up to 3e-6, i.e. an occasional flip of one 8-bit level). Otherwise, or when the model fails on the
   crop, it falls back to full images.
3. *Adaptive sampling.* Flagged blocks (the paper's coarse rule) get fresh draws in rounds up to the
   paper's ``fine`` cap; after each look (``looks``) a block stops when its Student-t interval at level
   ``1 - alpha / n_looks`` lies inside (-tol_db, tol_db) (effect 0), or excludes [-tol_db, tol_db] with a
   half-width <= ``rel_precision`` x |mean| (default 30 %: about the precision that the paper's 50 draws
   give the strong blocks of the real DnCNN). By a union bound over the looks, a stopped block's interval
   misses the true effect with probability at most ``alpha`` (up to the t approximation). (The intervals
   reported in the result, ``ci_low`` / ``ci_high``, are the usual per-block 95 % intervals of the draws.) Samples spent
   per block are in ``n_samples``. Draws use *common random numbers*: the j-th draw of every block uses
   the same natural patch, so differences between blocks (their ranking) carry less noise; each block's own
   estimate is unaffected.
4. *Local evaluation of the fine draws* (``local_eval``). For models traced by ``torch.fx``
   into local, stride-1, same-resolution operations (e.g. DnCNN), a flagged block's draws compute each
   layer only where the intervention can change it and the ROI output needs it (see
   :mod:`cem_checks.local_eval`), after checking the ROI outputs of a few real interventions against the
   normal forward within ``crop_atol``; otherwise, or for any other model, the normal forward is kept.
   Flagged blocks are in ``support`` already (their coarse draws changed the ROI output), so ``support``
   still comes from bit-exact comparisons only; effects may differ by an occasional 8-bit flip.

Implementation notes:

- Interventions are synthesised on the device: the patch bank lives on the device, patches are gathered by
  index, degraded by the task and scattered into fresh copies of the input; no per-image Python loop. The
  model never sees a tensor the engine reuses (some real models modify their input in place).
- Randomness: patch indices are drawn per phase from a generator derived from (seed, phase) (with common
  random numbers: from (seed, draw index)); the tasks' noise from a generator derived from (seed, phase,
  chunk index) for each chunk of draws. Paper mode's fine draws are a phase per block (``fine-block<i>``),
  so they do not depend on which other blocks are flagged: the ROIs of one image can share them
  (:func:`compute_cem_many`). So the map does not depend on ``batch_size`` and a resumed run
  replays the same draws. Same seed and batch
  size, same map (bit-identical on CPU); another batch size can only flip an 8-bit level of an ROI output
  through float reassociation in the model (a change of ~1e-4 dB in one draw).
- ``batch_size="auto"``: 8 on CPU; on CUDA sized from the memory one forward takes and the free memory.
  A CUDA out-of-memory error halves the batch and retries the same draws, losing no work.
- ``cache_dir``: finished chunks and the verdicts of the run's checks are written atomically (see
  :mod:`cem_checks.cache` and :mod:`.cachekey`); a killed run resumes without recomputing them, and a rerun
  whose work is all cached makes only the two validation forwards.
"""

from __future__ import annotations

from .job import Job, compute_cem, compute_cem_many, compute_support
from .options import CHUNK, CPU_BATCH, ENGINE_VERSION, MAX_PSNR_DB, MODES, PRECISIONS, FastOptions, Phase
from .runner import ModelRunner, model_name
from .sequential import sequential_sampling

__all__ = [
    "CHUNK",
    "CPU_BATCH",
    "ENGINE_VERSION",
    "MAX_PSNR_DB",
    "MODES",
    "PRECISIONS",
    "FastOptions",
    "Job",
    "ModelRunner",
    "Phase",
    "compute_cem",
    "compute_cem_many",
    "compute_support",
    "model_name",
    "sequential_sampling",
]
