"""The causal effect map engine: :func:`compute_cem`.

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
   verdict.
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
  chunk index) for each chunk of draws. So the map does not depend on ``batch_size`` and a resumed run
  replays the same draws. Same seed and batch
  size, same map (bit-identical on CPU); another batch size can only flip an 8-bit level of an ROI output
  through float reassociation in the model (a change of ~1e-4 dB in one draw).
- ``batch_size="auto"``: 8 on CPU; on CUDA sized from the memory one forward takes and the free memory.
  A CUDA out-of-memory error halves the batch and retries the same draws, losing no work.
- ``cache_dir``: finished chunks are written atomically (see :mod:`cem_checks.cache`); a killed run resumes
  without recomputing them.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch

from .cache import ChunkCache, digest, hash_model, hash_tensor
from .devices import resolve_device
from .errors import (
    CEMError,
    CEMInputError,
    ImageError,
    ModelError,
    NondeterministicModelWarning,
    OutputRangeWarning,
    PrecisionWarning,
    ROIError,
    describe_value,
)
from .grid import ROI, BlockGrid
from .images import load_image
from .patches import load_patches
from .result import CEMResult
from .stats import summarize_draws, t_quantile
from .tasks import describe_task, parse_task, task_cache_identity

MODES = ("fast", "paper")
PRECISIONS = ("fp32", "bf16", "fp16")
#: PSNR is capped here (an ROI reproduced exactly would otherwise give +inf dB).
MAX_PSNR_DB = 100.0
#: Draws are synthesised and cached in chunks of this many interventions.
CHUNK = 256
#: Default batch size on CPU: larger batches bring no throughput on a few cores.
CPU_BATCH = 8
ENGINE_VERSION = 3


@dataclass(frozen=True)
class FastOptions:
    """Settings of ``mode="fast"`` (see the module docstring for what each mechanism guarantees)."""

    group_testing: bool = True
    group_draws: int = 3
    group_budget: float = 0.05
    crop: bool = True
    crop_atol: float = 1e-5
    adaptive: bool = True
    looks: tuple[int, ...] = (5, 10, 20, 35, 50)
    rel_precision: float = 0.3
    alpha: float = 0.05
    common_random_numbers: bool = True
    local_eval: bool = True

    def __post_init__(self):
        if isinstance(self.group_draws, bool) or not isinstance(self.group_draws, int) or self.group_draws < 1:
            raise CEMInputError(f"FastOptions.group_draws={self.group_draws!r} must be an integer >= 1 (e.g. 3).")
        if not (0 <= self.group_budget):
            raise CEMInputError(f"FastOptions.group_budget={self.group_budget!r} must be >= 0 (a fraction of the coarse budget).")
        if not (self.crop_atol >= 0):
            raise CEMInputError(f"FastOptions.crop_atol={self.crop_atol!r} must be >= 0.")
        if not self.looks or any((not isinstance(n, int)) or n < 2 for n in self.looks) or list(self.looks) != sorted(set(self.looks)):
            raise CEMInputError(f"FastOptions.looks={self.looks!r} must be increasing integers >= 2, e.g. (5, 10, 20, 35, 50).")
        if not (0 < self.rel_precision):
            raise CEMInputError(f"FastOptions.rel_precision={self.rel_precision!r} must be > 0 (e.g. 0.2 for 20 %).")
        if not (0 < self.alpha < 1):
            raise CEMInputError(f"FastOptions.alpha={self.alpha!r} must lie in (0, 1), e.g. 0.05.")


def _derive_seed(seed: int, *stream: Any) -> int:
    digest = hashlib.sha256(":".join(map(str, (seed,) + stream)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < low:
        raise CEMInputError(f"{name}={value!r} must be an integer >= {low}.")
    return int(value)


def model_name(model: Any) -> str:
    """A readable name for a model or callable."""
    if isinstance(model, torch.nn.Module):
        return type(model).__name__
    return getattr(model, "__qualname__", None) or getattr(model, "__name__", None) or type(model).__name__


def _is_oom(exc: BaseException) -> bool:
    """A device out-of-memory error that a smaller batch may avoid (never one of our own errors)."""
    if isinstance(exc, CEMError):
        return False
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower() and "cuda" in str(exc).lower()
    )


class ModelRunner:
    """Calls the model under ``torch.inference_mode`` on fresh inputs, validates and counts its outputs."""

    def __init__(self, model: Callable, device: torch.device, scale: int, task_name: str,
                 precision: str = "fp32", channels_last: bool = False):
        if not callable(model):
            raise CEMInputError(
                f"model {describe_value(model)} is not callable; pass an nn.Module or a function mapping a "
                "(B, C, h, w) float tensor in [0, 1] to (B, C, H, W)."
            )
        self.model = model
        self.device = device
        self.scale = scale
        self.task_name = task_name
        self.precision = precision
        self.channels_last = channels_last
        self.dtype = torch.float32
        self.images = 0
        self.calls = 0
        self.pixels = 0
        self.seconds = 0.0

    @contextmanager
    def prepared(self):
        """Put an nn.Module in eval mode on the device for the run; restore mode, device and layout after."""
        m = self.model
        if not isinstance(m, torch.nn.Module):
            yield self
            return
        tensors = list(m.parameters()) + list(m.buffers())
        meta = [name for name, t in list(m.named_parameters()) + list(m.named_buffers()) if t.is_meta]
        if meta:
            raise ModelError(
                f"the model {model_name(m)} has {len(meta)} parameters or buffers on the meta device (shapes without "
                f"data, e.g. {meta[0]!r}); load its weights first, e.g. `model.to_empty(device='cpu')` then "
                "`model.load_state_dict(state_dict)`, or build it without the meta-device context."
            )
        was_training = m.training
        orig_device = tensors[0].device if tensors else None
        floating = [t.dtype for t in tensors if t.is_floating_point()]
        if floating:
            self.dtype = floating[0]
        try:
            m.eval()
            if orig_device is not None and orig_device != self.device:
                m.to(self.device)
            if self.channels_last:
                m.to(memory_format=torch.channels_last)
            yield self
        finally:
            m.train(was_training)
            if self.channels_last:
                m.to(memory_format=torch.contiguous_format)
            if orig_device is not None and orig_device != self.device:
                m.to(orig_device)

    def _autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def __call__(self, x: torch.Tensor, what: str = "") -> torch.Tensor:
        B, C, h, w = x.shape
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t0 = time.perf_counter()
        try:
            with torch.inference_mode(), self._autocast():
                out = self.model(x)
        except Exception as exc:
            if _is_oom(exc):
                if B > 1:
                    raise  # the engine halves the batch and retries
                raise ModelError(
                    f"CUDA ran out of memory for a single {tuple(x.shape[1:])} input on {self.device}{what}; the "
                    "model does not fit: use a smaller image or another device."
                ) from exc
            raise ModelError(
                f"the model {model_name(self.model)} raised {type(exc).__name__} when called on a {tuple(x.shape)} "
                f"{self.dtype} tensor on {self.device}{what}: {exc}. The model must map (B, 3, h, w) float in [0, 1] "
                "to (B, 3, H, W); check its input channels, device and size requirements."
            ) from exc
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - t0
        self.images += B
        self.calls += 1
        self.pixels += B * h * w
        if not isinstance(out, torch.Tensor):
            raise ModelError(
                f"the model {model_name(self.model)} returned {type(out).__name__}; expected a torch.Tensor of shape "
                f"(B, C, H, W). Wrap it so that it returns the image tensor."
            )
        if not out.is_floating_point():
            raise ModelError(
                f"the model {model_name(self.model)} returned a {out.dtype} tensor; expected floating point values in "
                "[0, 1] (the outcome clamps the output to [0, 1] and rounds it to 8 bits itself). If it returns 0-255 "
                "integers, wrap it: `lambda x: model(x).float() / 255`."
            )
        want = (B, C, h * self.scale, w * self.scale)
        if out.shape != want:
            hint = ""
            if out.ndim == 4 and out.shape[-1] % w == 0 and out.shape[-1] // w != self.scale:
                hint = f" The model seems to upscale by {out.shape[-1] // w}; use a task with that scale."
            elif out.ndim == 4 and out.shape[1] != C:
                hint = f" The model returns {out.shape[1]} channels; RGB models with {C} channels are expected."
            raise ModelError(
                f"the model {model_name(self.model)} returned shape {tuple(out.shape)} for an input of shape "
                f"{tuple(x.shape)}; task {self.task_name} (scale {self.scale}) expects {want}.{hint}"
            )
        if not torch.isfinite(out).all():
            bad = int((~torch.isfinite(out)).sum())
            raise ModelError(
                f"the model {model_name(self.model)} produced {bad} NaN/inf values for an input of shape "
                f"{tuple(x.shape)}{what}; a causal effect map needs finite outputs. Check the weights and the input range."
            )
        return out.float()


class _Frame:
    """A block-aligned window of the model input (the full input, or a crop) and its ROI outcome.

    ``y0, x0, h, w`` are in input px. ROI outputs are compared bit-exactly with a baseline computed with the
    same batch size; PSNR drops are measured against that baseline.
    """

    def __init__(self, eng: "_Engine", y0: int, x0: int, h: int, w: int):
        self.eng = eng
        self.y0, self.x0, self.h, self.w = y0, x0, h, w
        s, roi = eng.scale, eng.roi
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
        if n not in self._baselines:
            out = self.eng.forward(self.x.expand(n, -1, -1, -1).clone(), f" (baseline batch of {n})")
            r = out[self.sl].clone()
            self._baselines[n] = (r, self.psnr(r))
        return self._baselines[n]


class _Engine:
    """The state of one map computation and the machinery shared by both modes."""

    def __init__(self, *, model, clean, degraded, task, roi, block_size, bank, device, batch_size, seed, show,
                 precision, channels_last, cache):
        self.task, self.roi, self.b, self.scale = task, roi, block_size, task.scale
        self.clean, self.degraded = clean, degraded
        self.device = device
        # float64 statistics (PSNR, drops) stay on the device, except on MPS, which has no float64
        self.stat_device = torch.device("cpu") if device.type == "mps" else device
        self.seed = seed
        self.cache = cache
        _, _, h, w = degraded.shape
        self.grid = BlockGrid(h, w, block_size)
        self.distance = self.grid.distance(roi.footprint(self.scale))
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
        self.runner = ModelRunner(model, device, self.scale, task.name, precision, channels_last)
        self.batch_size = batch_size
        self.oom_backoffs = 0
        self.bar = _progress(show)
        self.full = _Frame(self, 0, 0, h, w)
        self._ar = torch.arange(block_size, device=device)
        self._chans = torch.arange(3, device=device)[None, :, None, None]

    def forward(self, x: torch.Tensor, what: str = "") -> torch.Tensor:
        return self.runner(x, what)

    # ------------------------------------------------------------------------------------- draws
    def patch_ids(self, phase: str, shape: tuple[int, ...]) -> torch.Tensor:
        g = torch.Generator().manual_seed(_derive_seed(self.seed, phase, "patches"))
        return torch.randint(self.n_bank, shape, generator=g)

    def run(self, frame: _Frame, phase: str, item_of_pair: np.ndarray, block_of_pair: np.ndarray,
            patch_of_pair: torch.Tensor, n_items: int, local: _LocalDraws | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Run ``n_items`` interventions in ``frame``; intervention i replaces the blocks of its pairs.

        Pairs (item, block, patch) are sorted by item. Returns per-item PSNR drops (float64, dB, relative to
        the same-shape baseline) and whether the ROI output changed at all. With ``local`` (single-block
        interventions only) the drops come from local evaluation (relative to its own baseline) and
        ``changed`` is all False: callers must not derive ``support`` from it.
        """
        drops = np.empty(n_items, dtype=np.float64)
        changed = np.empty(n_items, dtype=bool)
        starts = np.searchsorted(item_of_pair, list(range(0, n_items, CHUNK)) + [n_items])
        self.bar.total = (self.bar.total or 0) + n_items
        self.bar.refresh()
        for ci, i0 in enumerate(range(0, n_items, CHUNK)):
            i1 = min(i0 + CHUNK, n_items)
            p0, p1 = starts[ci], starts[ci + 1]
            pairs = (item_of_pair[p0:p1] - i0, block_of_pair[p0:p1], patch_of_pair[p0:p1])
            what = digest(*pairs, frame.box) if self.cache.enabled else ""
            cached = None
            # A locally evaluated chunk is cached under its own name, so a chunk computed either way is found
            # again by a rerun (which takes the same path: the local-evaluation verdict is cached too).
            use_local = local is not None and local.active
            if use_local:
                what_local = digest(*pairs, frame.box, "local") if self.cache.enabled else ""
                cached = self.cache.get(f"{phase}-local", ci, i1 - i0, what_local)
                if cached is None and self.cache.enabled and self.cache.has(phase, ci):
                    cached = self.cache.get(phase, ci, i1 - i0, what)
                if cached is None:
                    cached = local.run_chunk(frame, phase, ci, *pairs, i1 - i0)
                    if cached is not None:
                        self.cache.put(f"{phase}-local", ci, *cached, what=what_local)
            else:
                cached = self.cache.get(phase, ci, i1 - i0, what)
            if cached is None:
                cached = self._run_chunk(frame, phase, ci, *pairs, i1 - i0)
                self.cache.put(phase, ci, *cached, what=what)
            drops[i0:i1], changed[i0:i1] = cached
            self.bar.update(i1 - i0)
        return drops, changed

    def chunk_content(self, phase, ci, blocks, patches):
        """The intervened content (n_pairs, 3, b, b) of chunk ``ci`` of ``phase`` and the blocks' tops/lefts."""
        dev, b = self.device, self.b
        g = torch.Generator(device=dev).manual_seed(_derive_seed(self.seed, phase, ci, "noise"))
        blk = torch.as_tensor(blocks, device=dev)
        top, left = self.tops[blk], self.lefts[blk]
        content = self.task.intervene(self.bank_blocks[patches.to(dev)], top=top, left=left, clean=self.clean,
                                      degraded=self.degraded, generator=g)
        if tuple(content.shape) != (len(blocks), 3, b, b):
            raise CEMInputError(
                f"task {self.task.name!r}.intervene returned shape {tuple(content.shape)}; expected {(len(blocks), 3, b, b)}."
            )
        return content, top, left

    def intervened(self, frame, n: int, items: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                   content: torch.Tensor) -> torch.Tensor:
        """``n`` copies of the frame's input where pair i writes ``content[i]`` at the block (``top[i]``,
        ``left[i]``) (input px) of copy ``items[i]``."""
        rows = (top - frame.y0)[:, None] + self._ar
        cols = (left - frame.x0)[:, None] + self._ar
        x = frame.x.expand(n, -1, -1, -1).clone()
        x[items[:, None, None, None], self._chans, rows[:, None, :, None], cols[:, None, None, :]] = content
        return x

    def _run_chunk(self, frame, phase, ci, items, blocks, patches, n):
        dev = self.device
        content, top, left = self.chunk_content(phase, ci, blocks, patches)
        items_t = torch.as_tensor(items, device=dev)
        drops = torch.empty(n, dtype=torch.float64, device=self.stat_device)
        changed = torch.empty(n, dtype=torch.bool, device=dev)
        pair_starts = np.searchsorted(items, np.arange(n + 1))
        s0 = 0
        while s0 < n:
            B = min(self.batch_size, n - s0)
            p0, p1 = pair_starts[s0], pair_starts[s0 + B]
            x = self.intervened(frame, B, items_t[p0:p1] - s0, top[p0:p1], left[p0:p1], content[p0:p1])
            try:
                out = self.forward(x, f" ({phase}, draws {s0}..{s0 + B - 1} of chunk {ci})")
                base_r, base_p = frame.baseline(B)
            except Exception as exc:
                if not _is_oom(exc) or B == 1:
                    raise
                self.batch_size = max(1, B // 2)
                self.oom_backoffs += 1
                del x
                torch.cuda.empty_cache()
                continue
            r = out[frame.sl]
            changed[s0 : s0 + B] = (r != base_r).flatten(1).any(1)
            drops[s0 : s0 + B] = base_p - frame.psnr(r)
            s0 += B
        return drops.cpu().numpy(), changed.cpu().numpy()

    def single_block_draws(self, frame, phase, block_ids: np.ndarray, n_draws: int, crn: bool, first_draw: int = 0,
                           local: _LocalDraws | None = None):
        """``n_draws`` single-block interventions per block (block-major). Returns (n_blocks, n_draws) arrays.

        With ``crn`` the j-th draw of every block uses the same patch (draw index ``first_draw + j``). With
        ``local``, the draws are evaluated locally (see :meth:`run`: ``changed`` is then all False)."""
        nb = len(block_ids)
        if nb == 0:
            return np.zeros((0, n_draws)), np.zeros((0, n_draws), bool)
        if crn:
            base = phase.split("@")[0] + "-crn"
            ids = torch.cat([self.patch_ids(f"{base}{j}", (1,)) for j in range(first_draw, first_draw + n_draws)])
            patches = ids.repeat(nb)
        else:
            patches = self.patch_ids(phase, (nb * n_draws,))
        items = np.arange(nb * n_draws)
        drops, changed = self.run(frame, phase, items, np.repeat(block_ids, n_draws), patches, nb * n_draws, local=local)
        return drops.reshape(nb, n_draws), changed.reshape(nb, n_draws)

    def group_changed(self, phase: str, group: np.ndarray, draws: int) -> bool:
        """Whether a joint intervention on every block of ``group`` changed the ROI output in any of ``draws``."""
        k = len(group)
        items = np.repeat(np.arange(draws), k)
        blocks = np.tile(group, draws)
        patches = self.patch_ids(phase, (draws * k,))
        _, changed = self.run(self.full, phase, items, blocks, patches, draws)
        return bool(changed.any())


def _progress(enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=0, desc="CEM", unit="img", disable=not enabled, leave=False, file=sys.stderr)


#: The output is taken to be on another scale than [0, 1] (e.g. 0-255) when some value's magnitude exceeds
#: ``RANGE_LIMIT``, or more than ``RANGE_SHARE`` of its values lie outside ``RANGE_SLACK``. (Models with
#: untrained weights overshoot [0, 1] by a few units; a 0-255 model's output of any but a black image does not.)
RANGE_LIMIT = 16.0
RANGE_SLACK = (-0.5, 1.5)
RANGE_SHARE = 0.5


def _check_output_range(out: torch.Tensor, model: Any) -> None:
    """Warn (:class:`OutputRangeWarning`) when the model's output is far outside [0, 1] (e.g. 0-255)."""
    lo_ok, hi_ok = RANGE_SLACK
    outside = float(((out < lo_ok) | (out > hi_ok)).double().mean())
    lo, hi = float(out.min()), float(out.max())
    if outside > RANGE_SHARE or max(-lo, hi) > RANGE_LIMIT:
        warnings.warn(
            f"the output of {model_name(model)} on the degraded input has values in [{lo:.4g}, {hi:.4g}], "
            f"{100 * outside:.1f} % of them outside [{lo_ok}, {hi_ok}]; the outcome clamps the output to [0, 1], so "
            "the map is meaningless unless the model works on [0, 1] images. Wrap the model so that it takes and "
            "returns [0, 1] images, e.g. `lambda x: model(x * 255) / 255` for a model of 0-255 images.",
            OutputRangeWarning,
            stacklevel=3,
        )


def _check_batch_independence(eng: "_Engine", x: torch.Tensor) -> None:
    """Raise :class:`ModelError` when the output for one image depends on the other images of its batch.

    The engine batches interventions and compares each image's ROI output with a baseline batch, so a model
    whose output couples the images of a batch (BatchNorm in training mode, batch statistics) gives a wrong
    support and wrong effects. The test: the baseline image next to a copy of itself, and next to a different
    image (the input at half brightness), in batches of the same shape; its output must be bit-identical.
    The verdict is cached with the run's other checks.
    """
    record = eng.cache.get_record("check-batch-independence")
    if record is not None and record.get("independent") is True:
        return
    same = eng.forward(x.expand(2, -1, -1, -1).clone(), " (batch-independence check)")
    mixed = eng.forward(torch.cat([x, x * 0.5]), " (batch-independence check)")
    diff = float((same[0] - mixed[0]).abs().max())
    roi_diff = float((same[0][eng.full.sl[1:]] - mixed[0][eng.full.sl[1:]]).abs().max())
    if diff != 0.0:
        raise ModelError(
            f"the output of {model_name(eng.runner.model)} for an image depends on the other images of its batch: the "
            f"baseline's output changed by up to {diff:.3g} (ROI: {roi_diff:.3g}) when the second image of a batch of "
            "2 was replaced. Batched interventions would then give a wrong support and wrong effects. Typical cause: "
            "BatchNorm (or another layer using batch statistics) in training mode, e.g. an nn.Module wrapped in a "
            "function, which the engine cannot put in eval mode. Fix: call model.eval() before wrapping it (or pass "
            "the nn.Module itself), or pass batch_size=1."
        )
    eng.cache.put_record("check-batch-independence", {"independent": True, "batch": 2})


def _auto_batch_size(runner: ModelRunner, x: torch.Tensor) -> int:
    if runner.device.type != "cuda":
        return CPU_BATCH
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(runner.device)
    before = torch.cuda.memory_allocated(runner.device)
    runner(x.clone(), " (measuring memory for batch_size='auto')")
    per_image = max(1, torch.cuda.max_memory_allocated(runner.device) - before)
    free, _ = torch.cuda.mem_get_info(runner.device)
    return int(max(1, min(CHUNK, (0.5 * free) // per_image)))


def _paper(eng: _Engine, coarse: int, fine: int, tol: float):
    nb = eng.grid.n_blocks
    all_blocks = np.arange(nb)
    c_drops, c_changed = eng.single_block_draws(eng.full, "coarse", all_blocks, coarse, crn=False)
    support = c_changed.any(1)
    flagged = (np.abs(c_drops) >= tol).any(1)
    samples = np.full((nb, max(coarse, fine)), np.nan)
    samples[:, :coarse] = c_drops
    counts = np.full(nb, coarse, dtype=np.int64)
    fl = np.flatnonzero(flagged)
    if fl.size:
        f_drops, f_changed = eng.single_block_draws(eng.full, "fine", fl, fine, crn=False)
        samples[fl] = np.nan
        samples[fl, :fine] = f_drops
        counts[fl] = fine
        support[fl] |= f_changed.any(1)
    mean, stderr, lo, hi = summarize_draws(samples, counts)
    return mean, stderr, lo, hi, counts, samples, support, flagged, {}


def _group_testing(eng: _Engine, opts: FastOptions, coarse: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Blocks not ruled out (bool, n_blocks) and a summary of the tests."""
    dist = eng.distance.ravel()
    nb = dist.size
    candidates = np.ones(nb, dtype=bool)
    tests = 0
    # Stage 1: binary search of the support radius over the rings "distance > d".
    levels = np.unique(dist)
    lo, hi = 0, len(levels) - 1  # invariant: beyond(levels[hi]) is empty (nothing beyond the farthest ring)
    while lo < hi:
        mid = (lo + hi) // 2
        group = np.flatnonzero(dist > levels[mid])
        tests += 1
        if eng.group_changed(f"ring{int(levels[mid])}", group, opts.group_draws):
            lo = mid + 1
        else:
            hi = mid
    radius = int(levels[lo])
    candidates &= dist <= radius
    # Stage 2: k-d split of the remaining candidates, recursing into groups that changed. It may spend
    # `group_budget` of the coarse budget plus the coarse draws it has already saved, so it goes on while it
    # pays (sparse support) and costs little where the support is dense.
    budget = max(opts.group_budget * coarse * int(candidates.sum()), 3 * opts.group_draws)  # >= the first split
    spent = 0
    r, c = np.divmod(np.arange(nb), eng.grid.cols)
    def halves(group: np.ndarray) -> list[np.ndarray]:
        rr, cc = r[group], c[group]
        if np.ptp(rr) >= np.ptp(cc):
            order = np.argsort(rr * eng.grid.cols + cc, kind="stable")
        else:
            order = np.argsort(cc * eng.grid.rows + rr, kind="stable")
        half = group.size // 2
        return [group[order[:half]], group[order[half:]]]

    root = np.flatnonzero(candidates & (dist > 0))  # the ROI's own blocks are always kept
    # With a radius above 0 the root holds the ring just below it, already seen to change: split it untested.
    queue = halves(root) if radius > 0 and root.size > 1 else [root]
    ruled_out = 0
    node = 0
    while queue and spent + opts.group_draws <= budget + ruled_out * coarse:
        group = queue.pop(0)
        if group.size <= 1:
            continue  # a single block is settled by its own coarse draws
        node += 1
        tests += 1
        spent += opts.group_draws
        if not eng.group_changed(f"kd{node}", group, opts.group_draws):
            candidates[group] = False
            ruled_out += group.size
        else:
            queue += halves(group)
    return candidates, {"support_radius_px": radius, "group_tests": tests, "ruled_out_by_kd": ruled_out}


def _verified_crop(eng: _Engine, candidates: np.ndarray, opts: FastOptions) -> tuple[_Frame, dict[str, Any]]:
    b = eng.b
    r, c = np.divmod(np.flatnonzero(candidates), eng.grid.cols)
    y0, y1 = int(r.min()) * b, (int(r.max()) + 1) * b
    x0, x1 = int(c.min()) * b, (int(c.max()) + 1) * b
    if (y1 - y0, x1 - x0) == (eng.grid.height, eng.grid.width):
        return eng.full, {"crop": None, "crop_check": "not needed: the support spans the whole input"}
    frame = _Frame(eng, y0, x0, y1 - y0, x1 - x0)
    box = [y0, x0, y1 - y0, x1 - x0]
    key = f"check-crop-{y0}-{x0}-{y1 - y0}-{x1 - x0}"
    verdict = eng.cache.get_record(key)
    if verdict is None or not isinstance(verdict.get("crop_check"), str):
        verdict, cacheable = _crop_verdict(eng, frame, opts)
        if cacheable:
            eng.cache.put_record(key, verdict)
    if verdict.get("exact"):
        return frame, {"crop": box, "crop_check": verdict["crop_check"]}
    return eng.full, {"crop": None, "crop_check": verdict["crop_check"]}


def _crop_verdict(eng: _Engine, frame: _Frame, opts: FastOptions) -> tuple[dict[str, Any], bool]:
    """Whether the ROI output of the cropped baseline equals the full image's within ``crop_atol``, and whether
    that verdict may be cached (not when the model failed on the crop: an out-of-memory error may not recur)."""
    try:  # one image each: the verdict does not depend on the batch size
        crop_r, _ = frame.baseline(1)
        full_r, _ = eng.full.baseline(1)
    except Exception as exc:
        if not (isinstance(exc, ModelError) or _is_oom(exc)):
            raise
        return {"exact": False, "crop_check": f"failed: the model cannot run on the crop ({exc})"}, False
    diff = float((crop_r - full_r).abs().max())
    if diff == 0.0:
        return {"exact": True, "crop_check": "bit-exact"}, True
    if diff <= opts.crop_atol:
        return {"exact": True, "crop_check": f"max |diff| {diff:.2e} <= crop_atol {opts.crop_atol:.0e}"}, True
    return {"exact": False, "crop_check": f"failed: max |diff| {diff:.3g} > crop_atol {opts.crop_atol:.0e}"}, True


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


class _LocalDraws:
    """Single-block draws of one frame evaluated locally (:mod:`cem_checks.local_eval`), once verified.

    The evaluator (the frame's baseline activations) is built on first use, so a rerun whose draws are all
    cached builds nothing. Costs go to the runner's counters: each intervened image counts as one forward
    pass, its pixels as the output pixels computed per convolution (a full forward on the frame counts h * w)."""

    def __init__(self, eng: _Engine, frame: _Frame, plan, info: dict[str, Any]):
        self.eng, self.frame, self.plan, self.info = eng, frame, plan, info
        self.active = True
        self._ev = None

    @property
    def ev(self):
        if self._ev is None:
            from .local_eval import FrameEvaluator

            S, f = self.eng.roi.size, self.frame
            ry, rx = f.sl[2].start, f.sl[3].start
            with torch.inference_mode():
                self._ev = FrameEvaluator(self.plan, f.x.to(self.eng.runner.dtype), (ry, ry + S, rx, rx + S))
            self.base_psnr = f.psnr(self._ev.roi_base)
        return self._ev

    def roi_outputs(self, blocks: np.ndarray, top: torch.Tensor, left: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        f, runner, b, ev = self.frame, self.eng.runner, self.eng.b, self.ev
        out = None
        t0 = time.perf_counter()
        with torch.inference_mode():
            for blk in np.unique(blocks):
                sel = np.flatnonzero(blocks == blk)
                y, x = int(top[sel[0]]) - f.y0, int(left[sel[0]]) - f.x0
                idx = torch.as_tensor(sel, device=content.device)
                r = ev.roi_outputs((y, y + b, x, x + b), content[idx])
                if out is None:
                    out = r.new_empty((len(blocks),) + tuple(r.shape[1:]))
                out[idx] = r
                runner.calls += 1
        if self.eng.device.type == "cuda":
            torch.cuda.synchronize(self.eng.device)
        runner.seconds += time.perf_counter() - t0
        runner.images += len(blocks)
        return out

    def run_chunk(self, frame, phase, ci, items, blocks, patches, n):
        """(drops, changed) like :meth:`_Engine._run_chunk`, or None to take the normal path."""
        if frame is not self.frame or len(blocks) != n or not np.array_equal(items, np.arange(n)):
            return None
        content, top, left = self.eng.chunk_content(phase, ci, blocks, patches)
        px0 = self._ev.pixels if self._ev is not None else 0
        try:
            ev = self.ev
            r = self.roi_outputs(blocks, top, left, content)
        except Exception as exc:  # any failure: the normal path takes over
            if isinstance(exc, CEMError):
                raise
            if _is_oom(exc):  # the normal path halves its batch; local evaluation goes on with the next chunk
                torch.cuda.empty_cache()
                return None
            self.active = False
            self.info["check"] += f"; stopped after {self.info['draws']} draws: {type(exc).__name__}: {exc}"
            return None
        self.eng.runner.pixels += ev.pixels - px0
        self.info["draws"] += n
        self.info["pixels"] += ev.pixels - px0
        drops = (self.base_psnr - frame.psnr(r)).cpu().numpy()
        return drops, np.zeros(n, dtype=bool)


def _local_setup(eng: _Engine, frame: _Frame, fl: np.ndarray, opts: FastOptions, tol: float):
    """A verified :class:`_LocalDraws` for the fine phase in ``frame``, or None; and the meta summary.

    The verdict of the check is cached (per frame and flagged set), so a rerun neither repeats the check's
    forward passes nor decides differently."""
    info: dict[str, Any] = {"used": False, "check": "", "draws": 0, "check_draws": 0, "pixels": 0}
    if not opts.local_eval:
        info["check"] = "off"
    elif fl.size == 0:
        info["check"] = "not needed: no flagged block"
    elif not tol > 0:
        info["check"] = "not used: tol_db = 0 (fine draws then decide support, which needs the normal forward)"
    elif eng.runner.precision != "fp32":
        info["check"] = f"not used: precision {eng.runner.precision!r} (local evaluation runs in fp32 only)"
    elif eng.scale != 1:
        info["check"] = f"not used: scale {eng.scale} (local evaluation covers same-resolution models)"
    if info["check"]:
        return None, info
    from .local_eval import build_plan

    plan, why = build_plan(eng.runner.model)
    if plan is None:
        info["check"] = f"unsupported: {why}"
        return None, info
    local = _LocalDraws(eng, frame, plan, info)
    key = f"check-local-{digest(frame.box, fl)}"
    verdict = eng.cache.get_record(key)
    if verdict is None or not isinstance(verdict.get("check"), str):
        verdict = _local_verdict(eng, local, fl, opts)
        eng.cache.put_record(key, verdict)
    info.update({k: verdict[k] for k in ("used", "check", "check_draws") if k in verdict})
    return (local if info["used"] else None), info


def _local_verdict(eng: _Engine, local: _LocalDraws, fl: np.ndarray, opts: FastOptions) -> dict[str, Any]:
    """Check local evaluation against the model's forward on the baseline and on real interventions: the
    nearest and farthest flagged blocks, one on the frame border, the median. Returns the (cacheable) verdict."""
    frame = local.frame
    try:
        ev = local.ev
    except Exception as exc:  # a graph the plan cannot evaluate: not supported
        if _is_oom(exc):
            raise
        return {"used": False, "check": f"unsupported: {type(exc).__name__}: {exc}"}
    base_diff = float((ev.roi_base.to(frame.baseline(1)[0].device) - frame.baseline(1)[0]).abs().max())
    if not base_diff <= opts.crop_atol:
        return {"used": False, "check": f"failed: the traced graph's baseline ROI output differs from the model's by {base_diff:.3g}"}

    b = eng.b
    dist = eng.distance.ravel()[fl]
    r, c = np.divmod(fl, eng.grid.cols)
    border = (r * b == frame.y0) | ((r + 1) * b == frame.y0 + frame.h) | (c * b == frame.x0) | ((c + 1) * b == frame.x0 + frame.w)
    order = np.argsort(dist, kind="stable")
    pick = [fl[order[0]], fl[order[-1]], fl[order[len(order) // 2]]] + ([fl[np.flatnonzero(border)[0]]] if border.any() else [])
    pick = np.array(sorted({int(p) for p in pick}))
    blocks = np.repeat(pick, 2)
    patches = eng.patch_ids("local-check", (len(blocks),))
    content, top, left = eng.chunk_content("local-check", 0, blocks, patches)
    ref = []
    for s0 in range(0, len(blocks), eng.batch_size):
        s1 = min(len(blocks), s0 + eng.batch_size)
        one_each = torch.arange(s1 - s0, device=eng.device)
        x = eng.intervened(frame, s1 - s0, one_each, top[s0:s1], left[s0:s1], content[s0:s1])
        ref.append(eng.forward(x, " (checking local evaluation)")[frame.sl])
    px0 = ev.pixels
    try:
        loc = local.roi_outputs(blocks, top, left, content)
    except Exception as exc:  # the check fails: the normal path is kept
        if _is_oom(exc) or isinstance(exc, CEMError):
            raise
        return {"used": False, "check": f"failed: local evaluation raised {type(exc).__name__}: {exc}",
                "check_draws": len(blocks)}
    finally:
        eng.runner.pixels += ev.pixels - px0
    diff = float((torch.cat(ref) - loc.to(ref[0].device)).abs().max())
    if diff > opts.crop_atol:
        return {"used": False, "check_draws": len(blocks),
                "check": f"failed: max |diff| {diff:.3g} > crop_atol {opts.crop_atol:.0e} on {len(blocks)} check draws"}
    check = ("bit-exact" if diff == 0 else f"max |diff| {diff:.2e} <= crop_atol {opts.crop_atol:.0e}")
    return {"used": True, "check_draws": len(blocks), "check": f"{check} on {len(blocks)} check draws"}


def _fast(eng: _Engine, coarse: int, fine: int, tol: float, opts: FastOptions):
    nb = eng.grid.n_blocks
    info: dict[str, Any] = {}
    if opts.group_testing:
        candidates, gt = _group_testing(eng, opts, coarse)
        info.update(gt)
    else:
        candidates = np.ones(nb, dtype=bool)
    frame = eng.full
    if opts.crop and not candidates.all():
        frame, crop_info = _verified_crop(eng, candidates, opts)
        info.update(crop_info)
    else:
        info.update({"crop": None, "crop_check": "off" if not opts.crop else "not needed"})

    cand = np.flatnonzero(candidates)
    width = max(coarse, fine)
    samples = np.full((nb, width), np.nan)
    counts = np.zeros(nb, dtype=np.int64)
    support = np.zeros(nb, dtype=bool)
    flagged = np.zeros(nb, dtype=bool)

    c_drops, c_changed = eng.single_block_draws(frame, "coarse", cand, coarse, crn=opts.common_random_numbers)
    samples[cand, :coarse] = c_drops
    counts[cand] = coarse
    support[cand] = c_changed.any(1)
    flagged[cand] = (np.abs(c_drops) >= tol).any(1)

    fl = np.flatnonzero(flagged)
    samples[fl] = np.nan
    counts[fl] = 0
    looks = [n for n in opts.looks if n < fine] + [fine] if opts.adaptive else [fine]
    # Flagged blocks are in the support already (a drop >= tol_db > 0 needs a changed ROI output), so the
    # fine draws only estimate effects and may be evaluated locally.
    local, info["local_eval"] = _local_setup(eng, frame, fl, opts, tol)

    def draw(active: np.ndarray, start: int, stop: int, look: int) -> np.ndarray:
        d, ch = eng.single_block_draws(frame, f"fine@{look}", fl[active], stop - start,
                                       crn=opts.common_random_numbers, first_draw=start, local=local)
        support[fl[active]] |= ch.any(1)
        return d

    fine_samples, fine_counts, stopped, level = sequential_sampling(draw, fl.size, looks, tol, opts.alpha, opts.rel_precision)
    samples[fl, :fine] = fine_samples
    counts[fl] = fine_counts

    nz = counts > 0
    mean = np.zeros(nb)
    stderr = np.zeros(nb)
    lo = np.zeros(nb)
    hi = np.zeros(nb)
    m, s, l, h = summarize_draws(samples[nz], counts[nz])
    mean[nz], stderr[nz], lo[nz], hi[nz] = m, s, l, h
    info.update({"candidates": int(candidates.sum()), "stopped": stopped, "sampling_level": level})
    return mean, stderr, lo, hi, counts, samples, support, flagged, info


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
        progress: show a progress bar; default: when stderr is a terminal.
        fast: :class:`FastOptions` for ``mode="fast"`` (each mechanism can be switched off).
        precision: ``"fp32"`` (reference), ``"bf16"`` or ``"fp16"`` (autocast; fp16 on CUDA only).
        channels_last: run the model in channels-last memory format (often faster on GPUs).
        cache_dir: folder for resumable partial results (see :mod:`cem_checks.cache`).
        cache_key: identifies the model in the cache key when it is a plain callable (an ``nn.Module`` is
            identified by the hash of its weights).

    Returns:
        a :class:`CEMResult`.
    """
    t_start = time.perf_counter()
    if mode not in MODES:
        raise CEMInputError(f"mode={mode!r} is not available; expected one of {', '.join(map(repr, MODES))}.")
    coarse = _check_int("coarse", coarse, 1)
    fine = _check_int("fine", fine, 1)
    seed = _check_int("seed", seed, 0)
    if isinstance(tol_db, bool) or not isinstance(tol_db, (int, float)) or not (tol_db >= 0 and math.isfinite(tol_db)):
        raise CEMInputError(f"tol_db={tol_db!r} must be a finite number >= 0 (dB), e.g. 0.01.")
    if not (batch_size == "auto" or (not isinstance(batch_size, bool) and isinstance(batch_size, int) and batch_size >= 1)):
        raise CEMInputError(f"batch_size={batch_size!r} must be 'auto' or an integer >= 1.")
    if progress is not None and not isinstance(progress, bool):
        raise CEMInputError(f"progress={progress!r} must be True, False or None (auto: on when stderr is a terminal).")
    if fast is None:
        fast = FastOptions()
    elif not isinstance(fast, FastOptions):
        raise CEMInputError(f"fast={describe_value(fast)} must be a cem_checks.FastOptions, e.g. FastOptions(crop=False).")
    if precision not in PRECISIONS:
        raise CEMInputError(f"precision={precision!r} is unknown; expected one of {', '.join(map(repr, PRECISIONS))}.")
    show = sys.stderr.isatty() if progress is None else progress

    dev = resolve_device(device)
    if precision == "fp16" and dev.type != "cuda":
        raise CEMInputError(f"precision='fp16' needs a CUDA device (got {dev}); use precision='bf16' on the CPU, or 'fp32'.")
    task = parse_task(task)
    s = task.scale
    b = _check_int("block_size", block_size, 1) if block_size is not None else max(1, 8 // s)
    roi = ROI.parse(roi)

    # ---------------------------------------------------------------------------- image and grid
    loaded = load_image(image)
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
    bank = load_patches(patches)

    cache_material = None
    if cache_dir is not None:
        if isinstance(model, torch.nn.Module):
            model_id = hash_model(model)
        elif cache_key is not None:
            model_id = f"key:{cache_key}"
        else:
            raise CEMInputError(
                f"cache_dir needs to identify the model, but {model_name(model)} is a plain callable whose weights "
                "cannot be hashed; pass cache_key='<name-and-version-of-the-model>' or an nn.Module."
            )
        cache_material = {
            "engine": ENGINE_VERSION, "model": model_id, "image": hash_tensor(clean.cpu()), "task": task_cache_identity(task),
            "roi": list(roi.as_tuple()), "block_size": b, "mode": mode, "seed": seed, "patches": bank.sha256,
            "coarse": coarse, "fine": fine, "tol_db": tol_db, "fast": asdict(fast) if mode == "fast" else None,
            "precision": precision, "channels_last": channels_last, "device": dev.type,
            "degraded": hash_tensor(degraded.cpu()), "torch": torch.__version__,
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type,
            "tf32": [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32],
        }
    cache = ChunkCache(cache_dir, cache_material or {})

    eng = _Engine(model=model, clean=clean, degraded=degraded, task=task, roi=roi, block_size=b, bank=bank,
                  device=dev, batch_size=1, seed=seed, show=show, precision=precision, channels_last=channels_last,
                  cache=cache)
    try:
        with eng.runner.prepared():
            first = eng.forward(degraded.clone(), " (validating the model on the degraded input)")
            second = eng.forward(degraded.clone(), " (determinism check)")
            _check_output_range(first, model)
            deterministic = torch.equal(first, second)
            if not deterministic:
                diff = float((first - second).abs().max())
                warnings.warn(
                    f"two identical forward passes of {model_name(model)} differ (max |diff| = {diff:.3g}); the model is "
                    "not deterministic, so `support` will mark blocks that cannot reach the ROI as supported and the "
                    "effects carry extra noise. Disable dropout or stochastic layers, or call "
                    "torch.use_deterministic_algorithms(True).",
                    NondeterministicModelWarning,
                    stacklevel=2,
                )
            precision_shift = None
            if precision != "fp32":
                eng.runner.precision = "fp32"
                reference = eng.forward(degraded.clone(), " (fp32 reference for the precision check)")
                eng.runner.precision = precision
                precision_shift = float((eng.full.psnr(first[eng.full.sl]) - eng.full.psnr(reference[eng.full.sl])).abs()[0])
                if precision_shift > tol_db:
                    warnings.warn(
                        f"precision={precision!r} moves the baseline ROI PSNR by {precision_shift:.4f} dB, more than "
                        f"tol_db={tol_db}; effects near the threshold may be zeroed or kept differently than in fp32. "
                        "fp32 is the reference; use reduced precision for speed where this is acceptable.",
                        PrecisionWarning,
                        stacklevel=2,
                    )
            B = _auto_batch_size(eng.runner, degraded) if batch_size == "auto" else int(batch_size)
            eng.batch_size = min(B, CHUNK)
            if eng.batch_size > 1 and deterministic:
                _check_batch_independence(eng, degraded)
            base_psnr = float(eng.full.psnr(first[eng.full.sl])[0])
            if mode == "paper":
                mean, stderr, lo, hi, counts, samples, support, flagged, info = _paper(eng, coarse, fine, tol_db)
            else:
                mean, stderr, lo, hi, counts, samples, support, flagged, info = _fast(eng, coarse, fine, tol_db, fast)
    finally:
        eng.bar.close()

    effect = np.where(np.abs(mean) >= tol_db, mean, 0.0)
    shape = (eng.grid.rows, eng.grid.cols)
    runner = eng.runner
    meta = {
        "model_seconds": runner.seconds,
        "torch": torch.__version__,
        "image_shape": list(loaded.shape[-2:]),
        "batch_size": eng.batch_size,
        "oom_backoffs": eng.oom_backoffs,
        "precision": precision,
        "precision_shift_db": precision_shift,
        "channels_last": channels_last,
        "cache": {"dir": str(cache.dir), "hits": cache.hits, "writes": cache.writes, "check_hits": cache.check_hits}
        if cache.enabled else None,
        **({"fast": {**asdict(fast), **info}} if mode == "fast" else {}),
    }
    return CEMResult(
        effect=effect.reshape(shape),
        raw_effect=mean.reshape(shape),
        stderr=stderr.reshape(shape),
        n_samples=counts.reshape(shape),
        ci_low=lo.reshape(shape),
        ci_high=hi.reshape(shape),
        support=support.reshape(shape),
        flagged=flagged.reshape(shape),
        roi_mask=(eng.distance == 0),
        distance=eng.distance,
        samples_db=samples.reshape(shape + (samples.shape[1],)),
        base_psnr=base_psnr,
        block_size=b,
        scale=s,
        roi=roi,
        task=task.name,
        seed=seed,
        mode=mode,
        tol_db=float(tol_db),
        coarse=coarse,
        fine=fine,
        forward_passes=runner.images,
        forward_calls=runner.calls,
        pixels_processed=runner.pixels,
        wall_s=time.perf_counter() - t_start,
        device=str(dev),
        input_shape=(h, w),
        output_shape=(H, W),
        task_params=describe_task(task),
        patch_bank=bank.describe(),
        model=model_name(model),
        meta=meta,
        input_image=torch.round(degraded[0].detach().cpu().double().clamp(0, 1) * 255.0).to(torch.uint8).permute(1, 2, 0).numpy(),
        output_image=torch.round(first[0].detach().cpu().double().clamp(0, 1) * 255.0).to(torch.uint8).permute(1, 2, 0).numpy(),
    )
