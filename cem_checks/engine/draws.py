"""Draw synthesis and the chunk runner: :class:`Engine` (the state of one job) and :class:`Frame` (a window of
the model input with its ROI outcome).

Interventions are synthesised on the device: the patch bank lives on the device, patches are gathered by
index, degraded by the task and scattered into fresh copies of the input; no per-image Python loop. The model
never sees a tensor the engine reuses (some real models modify their input in place).

Randomness: patch indices are drawn per phase from a generator derived from (seed, phase) (with common random
numbers: from (seed, draw index)); the tasks' noise from a generator derived from (seed, phase, chunk index)
for each chunk of draws. So a map does not depend on ``batch_size`` and a resumed run replays the same draws.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..cache import ChunkCache, digest
from ..errors import CEMInputError
from ..grid import BlockGrid
from .options import CHUNK, MAX_PSNR_DB, Phase, derive_seed
from .runner import ModelRunner, is_oom

if TYPE_CHECKING:  # pragma: no cover
    from .local import LocalDraws

#: Phases of the support stage: their draws and verdicts are cached under the support key, which leaves out
#: the settings of the estimation (mode, coarse, fine, tol_db), so a map reuses the group tests of a support run.
SUPPORT_KINDS = ("ring", "kd", "kd-block", "reach")


@dataclass(frozen=True)
class PixelMask:
    """The input pixels an intervention writes (the others keep the input's values): ``pixels`` (h, w) bool on the
    device, over the whole input; ``key`` names the mask in cache digests."""

    key: str
    pixels: torch.Tensor


class Frame:
    """A block-aligned window of the model input (the full input, or a crop) and its ROI outcome.

    ``y0, x0, h, w`` are in input px. ROI outputs are compared bit-exactly with a baseline computed with the
    same batch size; PSNR drops are measured against that baseline.
    """

    def __init__(self, eng: "Engine", y0: int, x0: int, h: int, w: int, roi=None):
        self.eng = eng
        self.y0, self.x0, self.h, self.w = y0, x0, h, w
        s, roi = eng.scale, (eng.roi if roi is None else roi)
        self.roi = roi
        self.x = eng.degraded[:, :, y0 : y0 + h, x0 : x0 + w].contiguous()
        ry, rx = roi.y - y0 * s, roi.x - x0 * s
        self.sl = (slice(None), slice(None), slice(ry, ry + roi.size), slice(rx, rx + roi.size))
        gt = eng.clean[:, :, roi.y : roi.y + roi.size, roi.x : roi.x + roi.size].to(eng.stat_device)
        self.gt = torch.round(gt.double().clamp(0, 1) * 255.0)
        self._baselines: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.y0, self.x0, self.h, self.w)

    def psnr(self, roi_out: torch.Tensor) -> torch.Tensor:
        """(B,) PSNR in dB of (B, 3, S, S) ROI outputs; both sides clamped to [0, 1] and rounded to 8 bits."""
        q = torch.round(roi_out.to(self.gt.device).double().clamp(0.0, 1.0) * 255.0)
        mse = ((q - self.gt) ** 2).mean(dim=(1, 2, 3)) / (255.0**2)
        return -10.0 * torch.log10(mse.clamp_min(10.0 ** (-MAX_PSNR_DB / 10.0)))

    def baseline(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ROI output and PSNR of a batch of ``n`` copies of the frame (computed once per batch size; one
        forward serves every frame of the engine's shared group, see :meth:`Engine.run_frames`)."""
        if n not in self._baselines:
            group = self.eng.shared_frames if self in self.eng.shared_frames else [self]
            out = self.eng.forward(self.x.expand(n, -1, -1, -1).clone(), f" (baseline batch of {n})")
            for f in group:
                if n not in f._baselines:
                    r = out[f.sl].clone()
                    f._baselines[n] = (r, f.psnr(r))
        return self._baselines[n]


class Engine:
    """The state of one job (model, clean image, degraded input, task, ROI, grid, patch bank, caches) and the
    machinery every stage shares: synthesising interventions and running them in cached chunks."""

    def __init__(self, *, runner: ModelRunner, clean, degraded, task, roi, block_size, bank, device, seed, progress,
                 cache: ChunkCache, support_cache: ChunkCache):
        self.task, self.roi, self.b, self.scale = task, roi, block_size, task.scale
        self.clean, self.degraded = clean, degraded
        self.device = device
        # float64 statistics (PSNR, drops) stay on the device, except on MPS, which has no float64
        self.stat_device = torch.device("cpu") if device.type == "mps" else device
        self.seed = seed
        self.cache = cache
        self.support_cache = support_cache
        _, _, h, w = degraded.shape
        self.grid = BlockGrid(h, w, block_size)
        footprint = roi.footprint(self.scale)
        self.distance = self.grid.distance(footprint)  # (rows, cols): each block's nearest pixel
        self.far_distance = self.grid.far_distance(footprint)  # (rows, cols): each block's farthest pixel
        self.pixel_distance = self.grid.pixel_distance(footprint)  # (h, w): each input pixel
        self._beyond_masks: dict[int, PixelMask] = {}
        tops, lefts = self.grid.tops_lefts()
        self.tops = torch.as_tensor(tops, device=device)
        self.lefts = torch.as_tensor(lefts, device=device)
        self.n_bank = len(bank)
        self.bank_blocks = task.patch_to_block(bank.as_float(device), block_size).contiguous()
        if tuple(self.bank_blocks.shape) != (len(bank), 3, block_size, block_size):
            raise CEMInputError(
                f"task {task.name!r} turned the patch bank into shape {tuple(self.bank_blocks.shape)}; expected "
                f"{(len(bank), 3, block_size, block_size)} (patches at the block size)."
            )
        self.runner = runner
        self.batch_size = 1
        self.oom_backoffs = 0
        #: the local-evaluation plans of the model (see :func:`.local.local_plan`), by input shape
        self.plans: dict[Any, tuple[Any, str]] = {}
        #: their evaluators by (plan, frame, ROI): see :func:`.local.frame_evaluator` (the plan is kept with its own)
        self.evaluators: dict[Any, tuple[Any, Any]] = {}
        self.progress = progress
        #: frames over the same input window whose ROIs read the same forwards (see :meth:`run_frames`)
        self.shared_frames: list[Frame] = []
        self.full = Frame(self, 0, 0, h, w)
        self._ar = torch.arange(block_size, device=device)
        self._chans = torch.arange(3, device=device)[None, :, None, None]

    def forward(self, x: torch.Tensor, what: str = "") -> torch.Tensor:
        return self.runner(x, what)

    def cache_for(self, phase: Phase) -> ChunkCache:
        return self.support_cache if phase.kind in SUPPORT_KINDS else self.cache

    # ------------------------------------------------------------------------------------- draws
    def patch_ids(self, stream: Phase | str, shape: tuple[int, ...]) -> torch.Tensor:
        g = torch.Generator().manual_seed(derive_seed(self.seed, stream, "patches"))
        return torch.randint(self.n_bank, shape, generator=g)

    def run(self, frame: Frame, phase: Phase, item_of_pair: np.ndarray, block_of_pair: np.ndarray,
            patch_of_pair: torch.Tensor, n_items: int, local: "LocalDraws | None" = None,
            batch: int | None = None, pixels: PixelMask | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run ``n_items`` interventions in ``frame``; intervention i replaces the blocks of its pairs.

        Pairs (item, block, patch) are sorted by item. Returns per-item PSNR drops (float64, dB, relative to
        the same-shape baseline), whether the ROI output changed, and whether that verdict is exact. With
        ``pixels`` an intervention writes only the pixels of its blocks that the mask holds (e.g. those farther
        than d px from the ROI footprint, :meth:`beyond_mask`), keeping the rest of each block as it is. A normal
        forward is compared bit for bit with its baseline (exact). With ``local`` (single-block interventions
        only) the drops come from local evaluation (relative to its own baseline) and ``changed`` marks only
        the changes far above float rounding (see :mod:`.local`): not exact, so a block without such a change
        needs a normal forward to settle its support. ``batch`` caps the images per forward (default: the
        engine's batch size).
        """
        cache = self.cache_for(phase)
        drops = np.empty(n_items, dtype=np.float64)
        changed = np.empty(n_items, dtype=bool)
        exact = np.ones(n_items, dtype=bool)
        starts = np.searchsorted(item_of_pair, list(range(0, n_items, CHUNK)) + [n_items])
        for ci, i0 in enumerate(range(0, n_items, CHUNK)):
            i1 = min(i0 + CHUNK, n_items)
            p0, p1 = starts[ci], starts[ci + 1]
            pairs = (item_of_pair[p0:p1] - i0, block_of_pair[p0:p1], patch_of_pair[p0:p1])
            what = digest(*pairs, frame.box, *(() if pixels is None else (pixels.key,))) if cache.enabled else ""
            cached = None
            # A locally evaluated chunk is cached under its own name, so a chunk computed either way is found
            # again by a rerun (which takes the same path: the local-evaluation verdict is cached too).
            use_local = local is not None and local.active
            if use_local:
                what_local = digest(*pairs, frame.box, "local") if cache.enabled else ""
                cached = cache.get(f"{phase}-local", ci, i1 - i0, what_local)
                exact[i0:i1] = False
                if cached is None and cache.has(str(phase), ci):
                    cached = cache.get(str(phase), ci, i1 - i0, what)
                    exact[i0:i1] = cached is not None
                if cached is None:
                    cached = local.run_chunk(frame, phase, ci, *pairs, i1 - i0)
                    if cached is not None:
                        cache.put(f"{phase}-local", ci, *cached, what=what_local)
                    else:
                        exact[i0:i1] = True
            if cached is None:
                (cached,) = self._cached_chunk([frame], [cache], phase, ci, pairs, i1 - i0, what, batch=batch,
                                               pixels=pixels)
            drops[i0:i1], changed[i0:i1] = cached
            self.progress.update(i1 - i0)
        return drops, changed, exact

    def chunk_content(self, phase: Phase, ci: int, blocks: np.ndarray, patches: torch.Tensor):
        """The intervened content (n_pairs, 3, b, b) of chunk ``ci`` of ``phase`` and the blocks' tops/lefts."""
        dev, b = self.device, self.b
        g = torch.Generator(device=dev).manual_seed(derive_seed(self.seed, phase, ci, "noise"))
        blk = torch.as_tensor(blocks, device=dev)
        top, left = self.tops[blk], self.lefts[blk]
        content = self.task.intervene(self.bank_blocks[patches.to(dev)], top=top, left=left, clean=self.clean,
                                      degraded=self.degraded, generator=g)
        if tuple(content.shape) != (len(blocks), 3, b, b):
            raise CEMInputError(
                f"task {self.task.name!r}.intervene returned shape {tuple(content.shape)}; expected {(len(blocks), 3, b, b)}."
            )
        return content, top, left

    def beyond_mask(self, d: int) -> PixelMask:
        """The input pixels farther than ``d`` px from the ROI footprint."""
        if d not in self._beyond_masks:
            self._beyond_masks[d] = PixelMask(f"beyond{d}", torch.as_tensor(self.pixel_distance > d, device=self.device))
        return self._beyond_masks[d]

    def intervened(self, frame: Frame, n: int, items: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                   content: torch.Tensor, pixels: PixelMask | None = None) -> torch.Tensor:
        """``n`` copies of the frame's input where pair i writes ``content[i]`` at the block (``top[i]``,
        ``left[i]``) (input px) of copy ``items[i]``; with ``pixels``, only on the pixels the mask holds (the
        others keep the input's values)."""
        rows = (top - frame.y0)[:, None] + self._ar
        cols = (left - frame.x0)[:, None] + self._ar
        x = frame.x.expand(n, -1, -1, -1).clone()
        x[items[:, None, None, None], self._chans, rows[:, None, :, None], cols[:, None, None, :]] = content
        if pixels is not None:
            write = pixels.pixels[frame.y0: frame.y0 + frame.h, frame.x0: frame.x0 + frame.w]
            x = torch.where(write, x, frame.x)
        return x

    def _cached_chunk(self, frames: list[Frame], caches: list[ChunkCache], phase: Phase, ci: int, pairs: tuple,
                      n: int, what: str, batch: int | None = None,
                      pixels: PixelMask | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Chunk ``ci``'s (drops, changes) for every frame: read from each frame's cache; when any cache lacks it,
        the chunk runs once (every frame scored on its forwards) and is written to the caches that lacked it."""
        got = [c.get(str(phase), ci, n, what) for c in caches]
        if any(g is None for g in got):
            drops, changed = self._run_chunk_frames(frames, phase, ci, *pairs, n, batch=batch, pixels=pixels)
            for k, c in enumerate(caches):
                if got[k] is None:
                    c.put(str(phase), ci, drops[k], changed[k], what=what)
            got = list(zip(drops, changed))
        return got

    def forward_in_batches(self, n: int, make: Callable[[int, int], torch.Tensor], label: str) -> list[torch.Tensor]:
        """The outputs of ``n`` images, ``make(s0, s1)`` building images ``s0..s1-1``, forwarded in batches of at
        most the batch size; a CUDA out-of-memory error halves the batch size (as the draws do) and retries."""
        outs, s0 = [], 0
        while s0 < n:
            s1 = min(n, s0 + self.batch_size)
            try:
                outs.append(self.forward(make(s0, s1), label))
            except Exception as exc:
                if not is_oom(exc) or s1 - s0 == 1:
                    raise
                self.batch_size = max(1, (s1 - s0) // 2)
                self.oom_backoffs += 1
                torch.cuda.empty_cache()
                continue
            s0 = s1
        return outs

    def _run_chunk_frames(self, frames: list[Frame], phase: Phase, ci: int, items, blocks, patches, n: int,
                          batch: int | None = None, pixels: PixelMask | None = None):
        """Run one chunk; every frame (same input window, its own ROI) is scored on the same forwards.
        Returns (len(frames), n) drops and changes."""
        dev = self.device
        frame = frames[0]
        content, top, left = self.chunk_content(phase, ci, blocks, patches)
        items_t = torch.as_tensor(items, device=dev)
        drops = torch.empty((len(frames), n), dtype=torch.float64, device=self.stat_device)
        changed = torch.empty((len(frames), n), dtype=torch.bool, device=dev)
        pair_starts = np.searchsorted(items, np.arange(n + 1))
        s0 = 0
        while s0 < n:
            B = min(self.batch_size if batch is None else min(batch, self.batch_size), n - s0)
            p0, p1 = pair_starts[s0], pair_starts[s0 + B]
            x = self.intervened(frame, B, items_t[p0:p1] - s0, top[p0:p1], left[p0:p1], content[p0:p1], pixels)
            try:
                out = self.forward(x, f" ({phase}, draws {s0}..{s0 + B - 1} of chunk {ci})")
                bases = [f.baseline(B) for f in frames]
            except Exception as exc:
                if not is_oom(exc) or B == 1:
                    raise
                self.batch_size = max(1, B // 2)
                self.oom_backoffs += 1
                del x
                torch.cuda.empty_cache()
                continue
            for k, (f, (base_r, base_p)) in enumerate(zip(frames, bases)):
                r = out[f.sl]
                changed[k, s0 : s0 + B] = (r != base_r).flatten(1).any(1)
                drops[k, s0 : s0 + B] = base_p - f.psnr(r)
            s0 += B
        return drops.cpu().numpy(), changed.cpu().numpy()

    def run_frames(self, frames: list[Frame], caches: list[ChunkCache], phase: Phase, item_of_pair: np.ndarray,
                   block_of_pair: np.ndarray, patch_of_pair: torch.Tensor, n_items: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`run` (normal forwards) for several frames over the same input window, each with its own ROI and
        cache: each intervened output is scored on every frame's ROI. A chunk runs once unless every frame's
        cache holds it, and is written to every cache that lacked it, under the name a single-ROI run gives it,
        so shared and separate runs find each other's chunks. Returns (len(frames), n_items) drops and changes."""
        box = frames[0].box
        if any(f.box != box for f in frames):
            raise ValueError("run_frames needs frames over one input window")
        F = len(frames)
        drops = np.empty((F, n_items), dtype=np.float64)
        changed = np.empty((F, n_items), dtype=bool)
        starts = np.searchsorted(item_of_pair, list(range(0, n_items, CHUNK)) + [n_items])
        for ci, i0 in enumerate(range(0, n_items, CHUNK)):
            i1 = min(i0 + CHUNK, n_items)
            p0, p1 = starts[ci], starts[ci + 1]
            pairs = (item_of_pair[p0:p1] - i0, block_of_pair[p0:p1], patch_of_pair[p0:p1])
            what = digest(*pairs, box) if any(c.enabled for c in caches) else ""
            got = self._cached_chunk(frames, caches, phase, ci, pairs, i1 - i0, what)
            for k, (d, ch) in enumerate(got):
                drops[k, i0:i1], changed[k, i0:i1] = d, ch
            self.progress.update(i1 - i0)
        return drops, changed

    def single_block_draws(self, frame: Frame, phase: Phase, block_ids: np.ndarray, n_draws: int, crn: bool,
                           first_draw: int = 0, local: "LocalDraws | None" = None):
        """``n_draws`` single-block interventions per block (block-major). Returns (n_blocks, n_draws) arrays of
        drops, changes and whether each change verdict is exact (see :meth:`run`).

        With ``crn`` the j-th draw of every block uses the same patch (draw index ``first_draw + j``). With
        ``local``, the draws are evaluated locally where it is verified."""
        nb = len(block_ids)
        if nb == 0:
            return np.zeros((0, n_draws)), np.zeros((0, n_draws), bool), np.ones((0, n_draws), bool)
        items, blocks, patches = self.single_block_pairs(phase, block_ids, n_draws, crn, first_draw)
        drops, changed, exact = self.run(frame, phase, items, blocks, patches, nb * n_draws, local=local)
        return drops.reshape(nb, n_draws), changed.reshape(nb, n_draws), exact.reshape(nb, n_draws)

    def single_block_pairs(self, phase: Phase, block_ids: np.ndarray, n_draws: int, crn: bool, first_draw: int = 0):
        """The (item, block, patch) pairs of :meth:`single_block_draws`."""
        nb = len(block_ids)
        if crn:
            ids = torch.cat([self.patch_ids(phase.crn_stream(j), (1,)) for j in range(first_draw, first_draw + n_draws)])
            patches = ids.repeat(nb)
        else:
            patches = self.patch_ids(phase, (nb * n_draws,))
        return np.arange(nb * n_draws), np.repeat(block_ids, n_draws), patches

    def group_changed(self, phase: Phase, group: np.ndarray, draws: int, frame: Frame | None = None,
                      pixels: PixelMask | None = None) -> bool:
        """Whether a joint intervention on every block of ``group`` changed the ROI output in any of ``draws``
        (in ``frame``, default the full input); with ``pixels``, on the blocks' pixels that the mask holds only. The draws run one image at a time: a verdict does not depend on the batch
        shape, and the baseline of one image is the validation forward's, so it costs nothing."""
        k = len(group)
        items = np.repeat(np.arange(draws), k)
        blocks = np.tile(group, draws)
        patches = self.patch_ids(phase, (draws * k,))
        _, changed, _ = self.run(frame or self.full, phase, items, blocks, patches, draws, batch=1, pixels=pixels)
        return bool(changed.any())
