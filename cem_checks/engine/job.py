"""A job: one model, image, task and ROI prepared once, whose stages run on demand and share their work.

:func:`compute_cem` and :func:`compute_support` are short pipelines over a :class:`Job`. The pytest plugin
keeps a job per map, so that a receptive-field assertion runs only the support stage and a later effect
property runs the map on top of it, repeating no group test.

Stages: *start* (once: validate the model on the degraded input and its output range, check reduced precision,
pick the batch size, check determinism and batch independence on a window of the input), *support* (:mod:`.support`) and *map*
(:mod:`.paper` or :mod:`.fast`).
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, replace
from typing import Any, Callable

import numpy as np
import torch

from ..cache import ChunkCache
from ..devices import resolve_device
from ..errors import CEMInputError, ImageError, PrecisionWarning, ROIError
from ..grid import ROI, BlockGrid
from ..images import load_image
from ..patches import load_patches
from ..result import CEMResult, SupportResult
from ..tasks import describe_task, parse_task
from .cachekey import job_material, map_material, support_material
from ..progress import Progress
from .draws import Engine
from .estimates import Estimates
from .fast import fast_coarse, fast_estimates, fast_finish, fast_prepare
from .options import CHUNK, COARSE, FastOptions, validate_common, validate_int, validate_map_settings
from .draws import Frame
from .paper import paper_estimates, paper_estimates_shared
from .runner import ModelRunner, auto_batch_size, torch_threads, validate_model, validate_output_range, model_name
from .guard import preserved
from .support import SupportSearch


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    return torch.round(t.detach().cpu().double().clamp(0, 1) * 255.0).to(torch.uint8).permute(1, 2, 0).numpy()


class Job:
    """One model, image, task and ROI prepared for the engine's stages (arguments as :func:`compute_cem`).

    Construction validates every argument and prepares the input (no forward pass). :meth:`support` and
    :meth:`map` run the stages; each runs the start stage first (once per job) and reuses every group test an
    earlier stage of the job ran. ``forward_passes`` and ``seconds`` accumulate over the job's stages.
    """

    def __init__(self, model: Callable, image: Any, *, task: Any, roi: Any, block_size: int | None = None,
                 patches: Any = None, mode: str = "fast", coarse: int = 3, fine: int = 50, tol_db: float = 0.01,
                 seed: int = 0, device: Any = "auto", batch_size: int | str = "auto", progress: bool | None = None,
                 fast: FastOptions | None = None, precision: str = "fp32", channels_last: bool = False,
                 cache_dir: Any = None, cache_key: str | None = None, threads: int | None = None):
        t0 = time.perf_counter()
        self.mode = mode
        self.coarse, self.fine, self.tol_db, self.fast = validate_map_settings(mode=mode, coarse=coarse, fine=fine,
                                                                                tol_db=tol_db, fast=fast)
        self.seed = validate_common(seed=seed, batch_size=batch_size, progress=progress, precision=precision,
                                    threads=threads)
        self.threads = threads
        self.batch_size_arg = batch_size
        self.precision, self.channels_last = precision, channels_last
        self.progress_arg = progress
        self.model = model

        dev = resolve_device(device)
        if precision == "fp16" and dev.type != "cuda":
            raise CEMInputError(f"precision='fp16' needs a CUDA device (got {dev}); use precision='bf16' on the CPU, or 'fp32'.")
        self.device = dev
        task = parse_task(task)
        s = task.scale
        b = validate_int("block_size", block_size, 1) if block_size is not None else max(1, 8 // s)
        roi = ROI.parse(roi)
        self.task, self.scale, self.block_size, self.roi = task, s, b, roi
        self.label = f"{model_name(model)} {task.name} ROI {roi.as_tuple()}"

        # ---------------------------------------------------------------------------- image and grid
        loaded = load_image(image)
        self.image_shape = list(loaded.shape[-2:])
        clean_full = task.crop(loaded)
        H0, W0 = clean_full.shape[-2:]
        unit = s * b
        H, W = (H0 // unit) * unit, (W0 // unit) * unit
        if H == 0 or W == 0:
            raise ImageError(
                f"the image ({W0}x{H0} px after cropping to the x{s} scale) is smaller than one block of {b} input px "
                f"({unit} output px); use a larger image or a smaller block_size."
            )
        clean = clean_full[:, :H, :W][None].to(dev)
        try:
            roi.validate((H, W), s)
        except ROIError as exc:
            if (H, W) != (H0, W0):
                raise ROIError(f"{exc} (the image was trimmed from {W0}x{H0} to {W}x{H} so that whole {b}-px blocks tile the input.)") from None
            raise
        degraded = task.degrade(clean)
        h, w = H // s, W // s
        if tuple(degraded.shape) != (1, 3, h, w):
            raise CEMInputError(
                f"task {task.name!r} degraded a (1, 3, {H}, {W}) image to shape {tuple(degraded.shape)}; expected "
                f"(1, 3, {h}, {w}) for scale {s}."
            )
        degraded = degraded.to(dev).contiguous()
        grid = BlockGrid(h, w, b)
        if not (grid.distance(roi.footprint(s)) > 0).any():
            raise ROIError(
                f"roi {roi.as_tuple()} covers every block of the {grid.cols}x{grid.rows} grid of {b}-px blocks over "
                f"the {w}x{h} px input: no block lies outside it, so no property can measure anything; use a smaller "
                "ROI, a larger image or a smaller block_size."
            )
        self.degraded = degraded
        self.input_shape, self.output_shape = (h, w), (H, W)
        self.bank = load_patches(patches)

        # ---------------------------------------------------------------------------- caches
        self.cache_dir = cache_dir
        self._map_cache: ChunkCache | None = None
        if cache_dir is not None:
            self._material = job_material(model=model, cache_key=cache_key, clean=clean, degraded=degraded, task=task,
                                          roi=roi, block_size=b, seed=self.seed, bank=self.bank, precision=precision,
                                          channels_last=channels_last, device=dev)
            support_cache = ChunkCache(cache_dir, support_material(self._material, self.fast.group_draws))
        else:
            self._material = None
            support_cache = ChunkCache(None, {})

        self.runner = ModelRunner(model, dev, s, task.name, precision, channels_last)
        self.eng = Engine(runner=self.runner, clean=clean, degraded=degraded, task=task, roi=roi, block_size=b,
                          bank=self.bank, device=dev, seed=self.seed, progress=Progress("off"),
                          cache=ChunkCache(None, {}), support_cache=support_cache)
        self._search: SupportSearch | None = None
        self.started = False
        self.first: torch.Tensor | None = None
        self.base_psnr = float("nan")
        self.precision_shift: float | None = None
        self.stages: list[str] = []
        self.seconds = time.perf_counter() - t0

    # ------------------------------------------------------------------------------------- helpers
    @property
    def map_cache(self) -> ChunkCache:
        if self._map_cache is None:
            if self._material is None:
                self._map_cache = ChunkCache(None, {})
            else:
                self._map_cache = ChunkCache(self.cache_dir, map_material(
                    self._material, mode=self.mode, coarse=self.coarse, fine=self.fine, tol_db=self.tol_db,
                    fast=self.fast))
        return self._map_cache

    @property
    def search(self) -> SupportSearch:
        if self._search is None:
            self._search = SupportSearch(self.eng, self.fast.group_draws, crop=self.fast)
        return self._search

    @property
    def forward_passes(self) -> int:
        return self.runner.images

    @contextmanager
    def _stage(self, name: str, record: bool = True):
        t0 = time.perf_counter()
        self.eng.progress = Progress.auto(self.progress_arg, self.label)
        self.eng.progress.stage(name)
        try:
            with preserved(self.model), torch_threads(self.threads), self.runner.prepared():
                self._start()
                yield
            if record and name not in self.stages[-1:]:
                self.stages.append(name)
        finally:
            self.eng.progress.close()
            self.seconds += time.perf_counter() - t0

    def _start(self) -> None:
        """Validate the model on the degraded input and pick the batch size (once per job)."""
        if self.started:
            return
        eng, runner, degraded = self.eng, self.runner, self.degraded
        first = eng.forward(degraded.clone(), " (validating the model on the degraded input)")
        validate_output_range(first, self.model)
        if self.precision != "fp32":
            runner.precision = "fp32"
            reference = eng.forward(degraded.clone(), " (fp32 reference for the precision check)")
            runner.precision = self.precision
            shift = float((eng.full.psnr(first[eng.full.sl]) - eng.full.psnr(reference[eng.full.sl])).abs()[0])
            self.precision_shift = shift
            if shift > self.tol_db:
                warnings.warn(
                    f"precision={self.precision!r} moves the baseline ROI PSNR by {shift:.4f} dB, more than "
                    f"tol_db={self.tol_db}; effects near the threshold may be zeroed or kept differently than in fp32. "
                    "fp32 is the reference; use reduced precision for speed where this is acceptable.",
                    PrecisionWarning,
                    stacklevel=5,
                )
        B = auto_batch_size(runner, degraded) if self.batch_size_arg == "auto" else int(self.batch_size_arg)
        eng.batch_size = min(B, CHUNK)
        validate_model(runner, degraded, eng.support_cache, batched=eng.batch_size > 1)
        self.first = first
        roi_out = first[eng.full.sl].clone()
        # the validation forward is the baseline of a batch of one image (same shape, same values)
        eng.full._baselines[1] = (roi_out, eng.full.psnr(roi_out))
        self.base_psnr = float(eng.full._baselines[1][1][0])
        self.started = True

    def _adopt_start(self, lead: "Job") -> None:
        """Take the start stage of ``lead``, a job on the same model, image and settings (another ROI)."""
        self.first = lead.first
        self.eng.batch_size = lead.eng.batch_size
        self.precision_shift = lead.precision_shift
        self.started = True

    def _common(self) -> dict[str, Any]:
        """The fields both result types share."""
        return dict(
            block_size=self.block_size, scale=self.scale, roi=self.roi, task=self.task.name, seed=self.seed,
            forward_passes=self.runner.images, wall_s=self.seconds, device=str(self.device),
            input_shape=self.input_shape, output_shape=self.output_shape, task_params=describe_task(self.task),
            patch_bank=self.bank.describe(), model=model_name(self.model),
            input_image=_to_uint8(self.degraded[0]), output_image=_to_uint8(self.first[0]),
        )

    def _meta(self, cache: ChunkCache) -> dict[str, Any]:
        runner = self.runner
        caches = [c for c in (self.eng.support_cache, cache) if c.enabled]
        return {
            "model_seconds": runner.seconds,
            "torch": torch.__version__,
            "image_shape": self.image_shape,
            "batch_size": self.eng.batch_size,
            "oom_backoffs": self.eng.oom_backoffs,
            "precision": self.precision,
            "precision_shift_db": self.precision_shift,
            "channels_last": self.channels_last,
            "stages": list(self.stages),
            "cache": {"dir": str(cache.dir if cache.enabled else self.eng.support_cache.dir),
                      "hits": sum(c.hits for c in caches), "writes": sum(c.writes for c in caches),
                      "check_hits": sum(c.check_hits for c in caches)} if caches else None,
        }

    # ------------------------------------------------------------------------------------- stages
    def support(self, within: float | None = None, *, find_radius: bool = False, refine: bool = True,
                max_tests: int | None = None, offenders: int = 0) -> SupportResult:
        """The support stage (see :func:`compute_support`). With ``within``, one ring test answers "does anything
        beyond ``within`` px change the ROI output?"; ``find_radius`` then also finds the support radius (a binary
        search, over the rings inside ``within`` when nothing lies beyond it), and when something does lie beyond
        it, up to ``offenders`` blocks of the farthest ring that change the ROI output alone are found (a few
        group tests). Without ``within``: the radius, then (``refine``) the k-d refinement to single blocks
        within ``max_tests`` group tests."""
        beyond = None
        with self._stage("support"):
            search = self.search
            if within is not None:
                beyond = search.beyond(within)
                if find_radius:
                    radius = search.radius()
                    if beyond and offenders:
                        search.offenders(radius, offenders, max_tests=4 * offenders)
            else:
                radius = search.radius()
                if refine:
                    inside = int((search.dist <= radius).sum())
                    budget = 2 * inside if max_tests is None else max_tests
                    search.refine(radius, budget=budget * search.draws, singles=True, roi_blocks=True)
        support, resolved = search.verdicts()
        shape = (self.eng.grid.rows, self.eng.grid.cols)
        meta = self._meta(self.eng.support_cache)
        meta["support_search"] = {"rings": {str(k): v for k, v in sorted(search.rings.items())},
                                  "kd_groups": len(search.groups), "alone": len(search.alone),
                                  "tests_run": search.tests_run, "frame": dict(search.frame_info),
                                  "reach": search.reach_info}
        return SupportResult(
            support=support.reshape(shape), resolved=resolved.reshape(shape), roi_mask=self.eng.distance == 0,
            distance=self.eng.distance, radius_px=search.radius() if search.radius_known() else None,
            draws=search.draws, base_psnr=self.base_psnr, within_px=None if within is None else float(within), beyond_within=beyond,
            group_tests=search.group_tests, meta=meta, **self._common(),
        )

    def map(self) -> CEMResult:
        """The map stage: the paper procedure or fast mode's stages (reusing the job's group tests)."""
        self.eng.cache = self.map_cache
        with self._stage("map"):
            if self.mode == "paper":
                est = paper_estimates(self.eng, self.coarse, self.fine, self.tol_db)
            else:
                search = self.search if self.fast.group_testing else None
                est = fast_estimates(self.eng, search, self.coarse, self.fine, self.tol_db, self.fast)
        return self._map_result(est)

    def _map_result(self, est: Estimates) -> CEMResult:
        shape = (self.eng.grid.rows, self.eng.grid.cols)
        tol = self.tol_db
        effect = np.where(np.abs(est.mean) >= tol, est.mean, 0.0)
        meta = self._meta(self.map_cache)
        if self.mode == "fast":
            meta["fast"] = {**asdict(self.fast), **est.info}
        runner = self.runner
        return CEMResult(
            effect=effect.reshape(shape),
            raw_effect=est.mean.reshape(shape),
            stderr=est.stderr.reshape(shape),
            n_samples=est.counts.reshape(shape),
            ci_low=est.ci_low.reshape(shape),
            ci_high=est.ci_high.reshape(shape),
            support=est.support.reshape(shape),
            flagged=est.flagged.reshape(shape),
            roi_mask=(self.eng.distance == 0),
            distance=self.eng.distance,
            samples_db=est.samples.reshape(shape + (est.samples.shape[1],)),
            base_psnr=self.base_psnr,
            mode=self.mode,
            tol_db=float(tol),
            coarse=self.coarse,
            fine=self.fine,
            forward_calls=runner.calls,
            pixels_processed=runner.pixels,
            meta=meta,
            radius_px=self._pixel_radius(est),
            **self._common(),
        )

    def _pixel_radius(self, est: Estimates) -> int | None:
        """The pixel-exact support radius where the job's group tests decided it (None: paper mode, no search)."""
        if self._search is not None and self._search.radius_known():
            return self._search.radius()
        return est.info.get("support_radius_px")


def compute_cem(
    model: Callable,
    image: Any,
    *,
    task: Any,
    roi: Any,
    block_size: int | None = None,
    patches: Any = None,
    mode: str = "fast",
    coarse: int = 3,
    fine: int = 50,
    tol_db: float = 0.01,
    seed: int = 0,
    device: Any = "auto",
    batch_size: int | str = "auto",
    progress: bool | None = None,
    fast: FastOptions | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    cache_dir: Any = None,
    cache_key: str | None = None,
    threads: int | None = None,
) -> CEMResult:
    """Compute the causal effect map of ``model`` for the ROI ``roi`` of the restoration of ``image``.

    Args:
        model: an ``nn.Module`` or callable mapping (B, 3, h, w) float in [0, 1] to (B, 3, h*scale, w*scale).
            An ``nn.Module`` is put in eval mode and moved to ``device`` for the run; both are restored after.
        image: the clean ground truth: a path, PIL image, HxWxC numpy array or CxHxW tensor (see
            :func:`cem_checks.images.load_image` for RGBA and grayscale).
        task: :class:`SuperResolution`, :class:`Denoising`, :class:`Deraining`, an object following the
            :class:`Task` protocol, or a short name ``"sr4"``, ``"dn50"``, ``"dr"``.
        roi: ``(x, y, size)`` in output pixels (or an :class:`ROI`); must be aligned to the task's scale.
        block_size: block side in input px; default ``max(1, 8 // scale)`` (8 output px when the scale divides 8).
        patches: the natural patch bank (see :func:`cem_checks.patches.load_patches`); default bundled.
        mode: ``"fast"`` (default: same estimand, far less compute) or ``"paper"`` (the published procedure).
        coarse: draws per block in the coarse pass. fine: draws per flagged block (fast: the cap).
        tol_db: threshold in dB: flags blocks in the coarse pass and zeroes ``|effect| < tol_db``.
        seed: seeds every random draw of the map. device: ``"auto"``, ``"cpu"``, ``"cuda[:N]"``, ``"mps"``.
        batch_size: images per forward, or ``"auto"`` (8 on CPU; on CUDA sized from free memory).
        progress: True a progress bar, False nothing, None (default) a bar when stderr is a terminal and log
            lines otherwise (after 10 s, one per stage and at most every 10 s), a function receiving those lines,
            or a :class:`cem_checks.progress.Progress`.
        fast: :class:`FastOptions` for ``mode="fast"`` (each mechanism can be switched off).
        precision: ``"fp32"`` (reference), ``"bf16"`` or ``"fp16"`` (autocast; fp16 on CUDA only).
        channels_last: run the model in channels-last memory format (often faster on GPUs).
        cache_dir: folder for resumable partial results (see :mod:`cem_checks.cache`).
        cache_key: identifies the model in the cache key when it is a plain callable (an ``nn.Module`` is
            identified by the hash of its weights).
        threads: torch's intra-op threads during the run (restored after); default: unchanged, except in a
            pytest-xdist worker, which takes ``max(1, cores // workers)`` so that the workers share the cores.

    Returns:
        a :class:`CEMResult`.
    """
    return Job(model, image, task=task, roi=roi, block_size=block_size, patches=patches, mode=mode, coarse=coarse,
               fine=fine, tol_db=tol_db, seed=seed, device=device, batch_size=batch_size, progress=progress, fast=fast,
               precision=precision, channels_last=channels_last, cache_dir=cache_dir, cache_key=cache_key,
               threads=threads).map()


def _same_job(j: Job, lead: Job) -> bool:
    """Whether ``j`` differs from ``lead`` at most in its ROI."""
    return (j.model is lead.model and j.mode == lead.mode and (j.coarse, j.fine, j.tol_db, j.seed, j.fast) ==
            (lead.coarse, lead.fine, lead.tol_db, lead.seed, lead.fast) and j.block_size == lead.block_size and
            j.device == lead.device and (j.precision, j.channels_last) == (lead.precision, lead.channels_last) and
            j.bank is lead.bank and torch.equal(j.degraded, lead.degraded) and torch.equal(j.eng.clean, lead.eng.clean))


def _shared_frames(lead: Job, jobs: list[Job]) -> list[Frame]:
    """Full-input frames on ``lead``'s engine, one per job's ROI (the lead's own frame first), with the baseline of
    one image taken from the validation forward."""
    h, w = lead.input_shape
    frames = [lead.eng.full if j is lead else Frame(lead.eng, 0, 0, h, w, roi=j.roi) for j in jobs]
    for f in frames:
        if 1 not in f._baselines:
            r = lead.first[f.sl].clone()
            f._baselines[1] = (r, f.psnr(r))
    return frames


def map_many(jobs: list[Job], on_result: Callable[[int, CEMResult], None] | None = None) -> list[CEMResult]:
    """The maps of several jobs that differ only in their ROI (see :func:`compute_cem_many`). ``on_result(k,
    result)`` is called as soon as job k's map is done (a map computed alone is done before the next one starts;
    maps read from shared forwards are done together)."""
    lead = jobs[0]
    emit = on_result or (lambda k, r: None)
    if len(jobs) == 1 or not all(_same_job(j, lead) for j in jobs):
        out = []
        for k, j in enumerate(jobs):
            out.append(j.map())
            emit(k, out[-1])
        return out
    if lead.mode != "paper":
        return _fast_many(jobs, emit)
    out = _paper_many(jobs)  # read from shared forwards: the maps are done together
    for k, r in enumerate(out):
        emit(k, r)
    return out


def _paper_many(jobs: list[Job]) -> list[CEMResult]:
    lead = jobs[0]
    for j in jobs:
        j.eng.cache = j.map_cache
    with lead._stage("map"):
        start_passes = lead.runner.images
        frames = _shared_frames(lead, jobs)
        ests = paper_estimates_shared(lead.eng, frames, [j.map_cache for j in jobs], lead.coarse, lead.fine,
                                      lead.tol_db)
    total = lead.runner.images
    baselines = sum(n for n in frames[0]._baselines if n != 1)
    share = lead.seconds / len(jobs)
    results = []
    for j, f, est in zip(jobs, frames, ests):
        if j is not lead:
            j._adopt_start(lead)
            j.base_psnr = float(f._baselines[1][1][0])
            j.stages.append("map")
        j.seconds = share if j is lead else j.seconds + share
        read = start_passes + baselines + est.info.pop("forward_passes_read")
        results.append(_shared_result(j, est, read, total, "coarse and fine", est.info.pop("shared_fine_blocks"),
                                      len(jobs)))
    return results


def _shared_result(j: Job, est: Estimates, read: int, total: int, what: str, fine_blocks: int | None,
                   rois: int) -> CEMResult:
    res = j._map_result(est)
    res.meta["shared"] = {"draws": what, "rois": rois, "image_forward_passes": total, "forward_passes_read": read,
                          "fine_blocks": fine_blocks}
    return replace(res, forward_passes=read, wall_s=j.seconds)


def _fast_many(jobs: list[Job], emit: Callable[[int, CEMResult], None]) -> list[CEMResult]:
    """Fast mode: each ROI's support stage runs alone; the ROIs whose draws all run on the full input (nothing
    ruled out, no crop, no local evaluation: global models) read their coarse draws from shared forwards; the
    sequential fine draws stop per block and ROI, so they run per ROI."""
    lead = jobs[0]
    states = []
    for j in jobs:
        j.eng.cache = j.map_cache
        with j._stage("map", record=False):
            states.append(fast_prepare(j.eng, j.search if j.fast.group_testing else None, j.coarse, j.tol_db, j.fast))
    group = [k for k, st in enumerate(states) if st.full_image_draws]
    coarse: dict[int, Any] = {}
    shared_passes = 0
    if len(group) > 1:
        head = jobs[group[0]]
        with head._stage("map", record=False):
            before = head.runner.images
            frames = _shared_frames(head, [jobs[k] for k in group])
            nb = head.eng.grid.n_blocks
            pairs = head.eng.single_block_pairs(COARSE, np.arange(nb), head.coarse, head.fast.common_random_numbers)
            head.eng.shared_frames = frames
            try:
                head.eng.progress.stage("coarse", nb * head.coarse)
                drops, changed = head.eng.run_frames(frames, [jobs[k].map_cache for k in group], COARSE, *pairs,
                                                     nb * head.coarse)
            finally:
                head.eng.shared_frames = []
            for i, k in enumerate(group):
                coarse[k] = (drops[i].reshape(nb, -1), changed[i].reshape(nb, -1), np.ones((nb, head.coarse), bool))
                if jobs[k] is not head:
                    jobs[k].eng.full._baselines.update(frames[i]._baselines)
            shared_passes = head.runner.images - before
    results: list[Any] = [None] * len(jobs)
    ests: dict[int, Estimates] = {}
    for k, (j, st) in enumerate(zip(jobs, states)):
        with j._stage("map"):
            est = fast_finish(st, coarse[k] if k in coarse else fast_coarse(st, j.coarse, j.fast), j.coarse, j.fine,
                              j.tol_db, j.fast)
        if k in coarse:
            ests[k] = est
        else:
            results[k] = j._map_result(est)
            emit(k, results[k])
    total = sum(jobs[k].runner.images for k in coarse)  # what the ROIs that shared forwards cost together
    for k in coarse:
        j = jobs[k]
        own = j.runner.images - (shared_passes if j is jobs[group[0]] else 0)
        results[k] = _shared_result(j, ests[k], own + shared_passes, total, "coarse", None, len(group))
        emit(k, results[k])
    return results


def compute_cem_many(model: Callable, image: Any, *, rois: list, **kwargs: Any) -> list[CEMResult]:
    """The maps of several ROIs of one image (arguments as :func:`compute_cem`, with ``rois`` for ``roi``).

    With ``mode="paper"`` the draws of the image serve every ROI: each intervened output is scored on all the
    ROIs; the coarse draws run once and each fine draw once for every block some ROI flagged. The maps are
    identical to separate :func:`compute_cem` runs with the same seed (and find each other's cached chunks).
    Each result's ``forward_passes`` counts the forwards its map read (shared ones count for every ROI that read
    them); ``meta["shared"]["image_forward_passes"]`` is what the image cost.

    In fast mode each ROI's support stage runs alone; where nothing is ruled out and the draws run on the full input
    (global models), the ROIs read their coarse draws from shared forwards; the sequential fine draws stop per
    block and ROI and run per ROI. Local models need no sharing: their support stage and crop already confine
    each ROI's draws to its neighbourhood."""
    if not isinstance(rois, (list, tuple)) or not rois or all(isinstance(v, (int, np.integer)) for v in rois):
        hint = " (it looks like one ROI: pass rois=[roi])" if isinstance(rois, tuple) and rois else ""
        raise CEMInputError(f"rois={rois!r} must be a non-empty list of (x, y, size) ROIs in output px{hint}, "
                            "e.g. rois=[(0, 0, 16), (16, 0, 16)].")
    jobs = [Job(model, image, roi=r, **kwargs) for r in rois]
    return map_many(jobs)


def validate_within(within: Any) -> float | None:
    if within is None:
        return None
    if isinstance(within, bool) or not isinstance(within, (int, float, np.integer, np.floating)) or \
            not (math.isfinite(float(within)) and float(within) >= 0):
        raise CEMInputError(
            f"within={within!r} must be a distance >= 0 in input px (e.g. within=20 asks whether anything farther "
            "than 20 px from the ROI changes its output), or None for the whole support."
        )
    return float(within)


def compute_support(
    model: Callable,
    image: Any,
    *,
    task: Any,
    roi: Any,
    block_size: int | None = None,
    patches: Any = None,
    draws: int = 3,
    seed: int = 0,
    device: Any = "auto",
    batch_size: int | str = "auto",
    within: float | None = None,
    max_tests: int | None = None,
    cache_dir: Any = None,
    cache_key: str | None = None,
    progress: bool | None = None,
    threads: int | None = None,
) -> SupportResult:
    """The exact support of the ROI output: which input blocks can change it at all, by group testing (see
    :mod:`cem_checks.engine.support`), without estimating effects.

    Without ``within``: a binary search over the rings "farther than d px" finds the support radius, then a
    k-d split of the blocks within it, recursing into the groups that changed, decides blocks one by one
    (testing single blocks alone, the ROI's own blocks last; where the support is dense, a changed group goes
    straight to its single blocks) within ``max_tests`` group tests (default: twice the number of blocks within
    the radius, enough to resolve a dense support one block at a time). Blocks of groups that changed but were
    never tested alone stay unresolved (``SupportResult.resolved``).

    With ``within=r`` (input px): one ring test of ``draws`` joint draws answers only "does anything farther
    than r px change the ROI output?" (``beyond_within``), and the search stops.

    Every group test replaces its blocks ``draws`` times at once with random natural patches and compares the
    ROI output bit for bit with a baseline of the same batch shape. The other arguments are those of
    :func:`compute_cem` and give the same errors. Returns a :class:`SupportResult`.
    """
    within = validate_within(within)
    if max_tests is not None:
        max_tests = validate_int("max_tests", max_tests, 0)
    draws = validate_int("draws", draws, 1)
    job = Job(model, image, task=task, roi=roi, block_size=block_size, patches=patches, seed=seed, device=device,
              batch_size=batch_size, progress=progress, fast=FastOptions(group_draws=draws), cache_dir=cache_dir,
              cache_key=cache_key, threads=threads)
    return job.support(within, max_tests=max_tests)
