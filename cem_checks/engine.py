"""The causal effect map engine: :func:`compute_cem`.

Procedure (``mode="paper"``, Hu et al., TPAMI 2025):

1. The clean image is trimmed at the bottom/right so that whole blocks tile the model input (SR: to a
   multiple of ``scale * block_size`` output px), then degraded by the task into the model input x.
2. Baseline outcome O: PSNR (dB, RGB) of the ROI of the model output against the clean image, both clamped
   to [0, 1] and rounded to 8 bits (the PSNR of uint8 images), capped at ``MAX_PSNR_DB``.
3. Coarse pass: every block gets ``coarse`` interventions (its content replaced by a random natural patch,
   degraded like the input). A block is *flagged* when some draw moved the ROI PSNR by >= ``tol_db``.
4. Fine pass: every flagged block gets ``fine`` fresh draws; its raw effect is O minus the mean ROI PSNR of
   those draws (unflagged blocks keep the mean of their coarse draws). ``|raw| < tol_db`` counts as 0.

Implementation notes:

- Interventions are synthesised on the device in batches: the patch bank lives on the device, the
  patches of a batch are gathered by index, degraded by the task and scattered into copies of x; no
  per-image Python loop.
- The model never sees a tensor the engine reuses: each forward gets a freshly built input (some real
  models modify their input in place).
- ``support`` compares each draw's raw ROI output bit-exactly against a baseline forward of x computed
  with the same batch size, at the same position in the batch (conv algorithms may depend on batch shape).
  Each draw's PSNR drop is measured against that same-shape baseline, so an unchanged ROI has drop 0 exactly.
- Randomness: patch indices come from a CPU generator seeded with ``seed``; the tasks' per-draw noise from a
  generator on the device seeded from ``seed``, consumed in fixed chunks of draws, so the map does not
  depend on ``batch_size``. Same seed and batch size, same map (bit-identical on CPU). Another batch size
  gives the same draws; only float reassociation in the model's kernels can then flip an 8-bit level of
  the ROI output (a change of ~1e-4 dB in a draw).
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Any, Callable

import numpy as np
import torch

from .devices import resolve_device
from .errors import CEMInputError, ImageError, ModelError, NondeterministicModelWarning, ROIError, describe_value
from .grid import ROI, BlockGrid
from .images import load_image
from .patches import load_patches
from .result import CEMResult
from .stats import summarize_draws
from .tasks import describe_task, parse_task

MODES = ("paper",)
#: PSNR is capped here (an ROI reproduced exactly would otherwise give +inf dB).
MAX_PSNR_DB = 100.0
#: Draws are synthesised in chunks of this many interventions (random streams do not depend on batch size).
CHUNK = 1024
#: Default batch size on CPU: larger batches bring no throughput on a few cores.
CPU_BATCH = 8


def _derive_seed(seed: int, stream: str) -> int:
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
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


class ModelRunner:
    """Calls the model under ``torch.inference_mode`` on fresh inputs, validates and counts its outputs."""

    def __init__(self, model: Callable, device: torch.device, expected_chw: tuple[int, int, int], task_name: str, scale: int):
        if not callable(model):
            raise CEMInputError(
                f"model {describe_value(model)} is not callable; pass an nn.Module or a function mapping a "
                "(B, C, h, w) float tensor in [0, 1] to (B, C, H, W)."
            )
        self.model = model
        self.device = device
        self.expected_chw = expected_chw
        self.task_name = task_name
        self.scale = scale
        self.dtype = torch.float32
        self.images = 0
        self.calls = 0
        self.pixels = 0
        self.seconds = 0.0

    @contextmanager
    def prepared(self):
        """Put an nn.Module in eval mode on the device for the run; restore mode and device afterwards."""
        m = self.model
        if not isinstance(m, torch.nn.Module):
            yield self
            return
        tensors = list(m.parameters()) + list(m.buffers())
        was_training = m.training
        orig_device = tensors[0].device if tensors else None
        floating = [t.dtype for t in tensors if t.is_floating_point()]
        if floating:
            self.dtype = floating[0]
        try:
            m.eval()
            if orig_device is not None and orig_device != self.device:
                m.to(self.device)
            yield self
        finally:
            m.train(was_training)
            if orig_device is not None and orig_device != self.device:
                m.to(orig_device)

    def __call__(self, x: torch.Tensor, what: str = "") -> torch.Tensor:
        B, _, h, w = x.shape
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                out = self.model(x.to(self.dtype))
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:
            raise ModelError(
                f"the model {model_name(self.model)} raised {type(exc).__name__} when called on a {tuple(x.shape)} "
                f"{self.dtype} tensor on {self.device}{what}: {exc}. The model must map (B, 3, h, w) float in [0, 1] "
                "to (B, 3, H, W); check its input channels and device."
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
        C, H, W = self.expected_chw
        if out.shape != (B, C, H, W):
            hint = ""
            if out.ndim == 4 and out.shape[-1] % w == 0 and out.shape[-1] // w != self.scale:
                hint = f" The model seems to upscale by {out.shape[-1] // w}; use a task with that scale."
            elif out.ndim == 4 and out.shape[1] != C:
                hint = f" The model returns {out.shape[1]} channels; RGB models with {C} channels are expected."
            raise ModelError(
                f"the model {model_name(self.model)} returned shape {tuple(out.shape)} for an input of shape "
                f"{tuple(x.shape)}; task {self.task_name} (scale {self.scale}) expects {(B, C, H, W)}.{hint}"
            )
        if not torch.isfinite(out).all():
            bad = int((~torch.isfinite(out)).sum())
            raise ModelError(
                f"the model {model_name(self.model)} produced {bad} NaN/inf values for an input of shape "
                f"{tuple(x.shape)}{what}; a causal effect map needs finite outputs. Check the weights and the input range."
            )
        return out.float()


class _Outcome:
    """ROI extraction and the PSNR outcome against the clean ROI, on 8-bit levels as for uint8 images."""

    def __init__(self, clean: torch.Tensor, roi: ROI):
        self.sl = (slice(None), slice(None), slice(roi.y, roi.y + roi.size), slice(roi.x, roi.x + roi.size))
        self.gt = torch.round(clean[self.sl].double().clamp(0.0, 1.0) * 255.0)

    def roi(self, out: torch.Tensor) -> torch.Tensor:
        return out[self.sl]

    def psnr(self, roi_out: torch.Tensor) -> torch.Tensor:
        """(B,) PSNR in dB of (B, 3, S, S) ROI outputs: both sides clamped to [0, 1] and rounded to 8 bits."""
        q = torch.round(roi_out.double().clamp(0.0, 1.0) * 255.0)
        mse = ((q - self.gt) ** 2).mean(dim=(1, 2, 3)) / (255.0**2)
        return -10.0 * torch.log10(mse.clamp_min(10.0 ** (-MAX_PSNR_DB / 10.0)))


def _auto_batch_size(runner: ModelRunner, degraded: torch.Tensor) -> int:
    if runner.device.type != "cuda":
        return CPU_BATCH
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(runner.device)
    before = torch.cuda.memory_allocated(runner.device)
    runner(degraded.clone(), " (measuring memory for batch_size='auto')")
    per_image = max(1, torch.cuda.max_memory_allocated(runner.device) - before)
    free, _ = torch.cuda.mem_get_info(runner.device)
    return int(max(1, min(CHUNK, (0.5 * free) // per_image)))


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False, file=sys.stderr)


def compute_cem(
    model: Callable,
    image: Any,
    *,
    task: Any,
    roi: Any,
    block_size: int | None = None,
    patches: Any = None,
    mode: str = "paper",
    coarse: int = 3,
    fine: int = 50,
    tol_db: float = 0.01,
    seed: int = 0,
    device: Any = "auto",
    batch_size: int | str = "auto",
    progress: bool | None = None,
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
        block_size: block side in input px; default ``max(1, 8 // scale)`` (8 output px).
        patches: the natural patch bank (see :func:`cem_checks.patches.load_patches`); default bundled.
        mode: ``"paper"``: the published coarse-to-fine procedure.
        coarse: draws per block in the coarse pass. fine: draws per flagged block in the fine pass.
        tol_db: threshold in dB: flags blocks in the coarse pass and zeroes ``|effect| < tol_db``.
        seed: seeds every random draw of the map. device: ``"auto"``, ``"cpu"``, ``"cuda[:N]"``, ``"mps"``.
        batch_size: images per forward, or ``"auto"`` (8 on CPU; on CUDA sized from free memory).
        progress: show a progress bar; default: when stderr is a terminal.

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
    show = sys.stderr.isatty() if progress is None else progress

    dev = resolve_device(device)
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
    trimmed = (H, W) != (H0, W0)
    try:
        roi.validate((H, W), s)
    except ROIError as exc:
        if trimmed:
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
    distance = grid.distance(roi.footprint(s))
    tops_np, lefts_np = grid.tops_lefts()
    tops = torch.as_tensor(tops_np, device=dev)
    lefts = torch.as_tensor(lefts_np, device=dev)

    bank = load_patches(patches)
    bank_blocks = task.patch_to_block(bank.as_float(dev), b).contiguous()
    if tuple(bank_blocks.shape) != (len(bank), 3, b, b):
        raise CEMInputError(
            f"task {task.name!r} turned the patch bank into shape {tuple(bank_blocks.shape)}; expected "
            f"{(len(bank), 3, b, b)} (patches at the block size)."
        )

    outcome = _Outcome(clean, roi)
    runner = ModelRunner(model, dev, (3, H, W), task.name, s)
    patch_gen = torch.Generator().manual_seed(_derive_seed(seed, "patches"))
    noise_gen = torch.Generator(device=dev).manual_seed(_derive_seed(seed, "noise"))

    with runner.prepared():
        # Validation and determinism: two identical forwards of x must agree bit for bit.
        first = runner(degraded.clone(), " (validating the model on the degraded input)")
        second = runner(degraded.clone(), " (determinism check)")
        if not torch.equal(first, second):
            diff = float((first - second).abs().max())
            warnings.warn(
                f"two identical forward passes of {model_name(model)} differ (max |diff| = {diff:.3g}); the model is "
                "not deterministic, so `support` will mark blocks that cannot reach the ROI as supported and the "
                "effects carry extra noise. Disable dropout or stochastic layers, or call "
                "torch.use_deterministic_algorithms(True).",
                NondeterministicModelWarning,
                stacklevel=2,
            )
        B = _auto_batch_size(runner, degraded) if batch_size == "auto" else int(batch_size)
        B = min(B, CHUNK)

        baselines: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def baseline(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            if n not in baselines:
                out = runner(degraded.expand(n, -1, -1, -1).clone(), f" (baseline batch of {n})")
                r = outcome.roi(out).clone()
                baselines[n] = (r, outcome.psnr(r))
            return baselines[n]

        ar = torch.arange(b, device=dev)
        chans = torch.arange(3, device=dev)[None, :, None, None]

        def run_draws(block_ids: torch.Tensor, patch_ids: torch.Tensor, bar) -> tuple[np.ndarray, np.ndarray]:
            J = int(block_ids.numel())
            drops = torch.empty(J, dtype=torch.float64, device=dev)
            changed = torch.empty(J, dtype=torch.bool, device=dev)
            for c0 in range(0, J, CHUNK):
                ids = block_ids[c0 : c0 + CHUNK].to(dev)
                top, left = tops[ids], lefts[ids]
                content = task.intervene(
                    bank_blocks[patch_ids[c0 : c0 + CHUNK].to(dev)],
                    top=top,
                    left=left,
                    clean=clean,
                    degraded=degraded,
                    generator=noise_gen,
                )
                if tuple(content.shape) != (ids.numel(), 3, b, b):
                    raise CEMInputError(
                        f"task {task.name!r}.intervene returned shape {tuple(content.shape)}; expected "
                        f"{(ids.numel(), 3, b, b)}."
                    )
                for s0 in range(0, ids.numel(), B):
                    sl = slice(s0, min(s0 + B, ids.numel()))
                    n = sl.stop - sl.start
                    x = degraded.expand(n, -1, -1, -1).clone()
                    rows = (top[sl, None] + ar)[:, None, :, None]
                    cols = (left[sl, None] + ar)[:, None, None, :]
                    x[torch.arange(n, device=dev)[:, None, None, None], chans, rows, cols] = content[sl]
                    r = outcome.roi(runner(x))
                    base_r, base_p = baseline(n)
                    changed[c0 + sl.start : c0 + sl.stop] = (r != base_r).flatten(1).any(1)
                    drops[c0 + sl.start : c0 + sl.stop] = base_p - outcome.psnr(r)
                    bar.update(n)
            return drops.cpu().numpy(), changed.cpu().numpy()

        nb = grid.n_blocks
        base_psnr = float(baseline(B if B <= nb * coarse else nb * coarse)[1][0])
        # Coarse pass: every block, `coarse` draws.
        coarse_ids = torch.arange(nb).repeat_interleave(coarse)
        coarse_patches = torch.randint(len(bank), (nb * coarse,), generator=patch_gen)
        with _progress(nb * coarse, "CEM coarse", show) as bar:
            c_drops, c_changed = run_draws(coarse_ids, coarse_patches, bar)
        c_drops = c_drops.reshape(nb, coarse)
        support = c_changed.reshape(nb, coarse).any(1)
        flagged = (np.abs(c_drops) >= tol_db).any(1)

        # Fine pass: flagged blocks, `fine` fresh draws each.
        fl = np.flatnonzero(flagged)
        samples = np.full((nb, max(coarse, fine if fl.size else coarse)), np.nan)
        samples[:, :coarse] = c_drops
        counts = np.full(nb, coarse, dtype=np.int64)
        if fl.size:
            fine_ids = torch.as_tensor(fl).repeat_interleave(fine)
            fine_patches = torch.randint(len(bank), (fl.size * fine,), generator=patch_gen)
            with _progress(fl.size * fine, "CEM fine", show) as bar:
                f_drops, f_changed = run_draws(fine_ids, fine_patches, bar)
            samples[fl] = np.nan
            samples[fl, :fine] = f_drops.reshape(fl.size, fine)
            counts[fl] = fine
            support[fl] |= f_changed.reshape(fl.size, fine).any(1)

    mean, stderr, ci_low, ci_high = summarize_draws(samples, counts)
    effect = np.where(np.abs(mean) >= tol_db, mean, 0.0)
    shape = (grid.rows, grid.cols)
    return CEMResult(
        effect=effect.reshape(shape),
        raw_effect=mean.reshape(shape),
        stderr=stderr.reshape(shape),
        n_samples=counts.reshape(shape),
        ci_low=ci_low.reshape(shape),
        ci_high=ci_high.reshape(shape),
        support=support.reshape(shape),
        flagged=flagged.reshape(shape),
        roi_mask=(distance == 0),
        distance=distance,
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
        meta={"model_seconds": runner.seconds, "torch": torch.__version__, "image_shape": list(loaded.shape[-2:])},
    )
