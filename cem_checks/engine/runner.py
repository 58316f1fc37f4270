"""Calling the model: :class:`ModelRunner` (eval mode, device, counting, output validation) and the checks the
engine makes of a model before its draws (output range, determinism, batch independence), and the automatic
batch size."""

from __future__ import annotations

import os
import time
import warnings
from contextlib import contextmanager, nullcontext
from typing import Any, Callable

import torch

from ..errors import CEMError, CEMInputError, ModelError, NondeterministicModelWarning, OutputRangeWarning, describe_value
from .options import CHUNK, CPU_BATCH

__all__ = ["ModelRunner", "auto_batch_size", "torch_threads", "usable_cores", "xdist_threads", "validate_model", "validate_output_range", "is_oom", "model_name"]


def model_name(model: Any) -> str:
    """A readable name for a model or callable."""
    if isinstance(model, torch.nn.Module):
        return type(model).__name__
    return getattr(model, "__qualname__", None) or getattr(model, "__name__", None) or type(model).__name__


def is_oom(exc: BaseException) -> bool:
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
            if is_oom(exc):
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




#: The output is taken to be on another scale than [0, 1] (e.g. 0-255) when some value's magnitude exceeds
#: ``RANGE_LIMIT``, or more than ``RANGE_SHARE`` of its values lie outside ``RANGE_SLACK``. (Models with
#: untrained weights overshoot [0, 1] by a few units; a 0-255 model's output of any but a black image does not.)
RANGE_LIMIT = 16.0
RANGE_SLACK = (-0.5, 1.5)
RANGE_SHARE = 0.5


def validate_output_range(out: torch.Tensor, model: Any) -> None:
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


#: Sides (px) of the windows of the input that the model checks try in turn (:func:`validate_model`): a model with
#: size requirements (a multiple of 32, a minimum size) that refuses the first gets the next, then the input.
CHECK_WINDOWS_PX = (16, 64)


def _verdict(runner: "ModelRunner", x: torch.Tensor, batched: bool) -> tuple[float, float]:
    """(max |diff| of two identical calls, max |diff| of an image's output when its batch mate changes; 0 when
    not ``batched``): the image next to a copy of itself (twice) and next to a different image (the same at half
    brightness)."""
    x = x.contiguous()
    if not batched:
        a = runner(x.clone(), " (determinism check)")
        c = runner(x.clone(), " (determinism check)")
        return float((a - c).abs().max()), 0.0
    a = runner(x.expand(2, -1, -1, -1).clone(), " (determinism and batch-independence check)")
    b = runner(torch.cat([x, x * 0.5]), " (batch-independence check)")
    c = runner(x.expand(2, -1, -1, -1).clone(), " (determinism check)")
    return float((a - c).abs().max()), float((a[0] - b[0]).abs().max())


def validate_model(runner: "ModelRunner", x: torch.Tensor, cache, batched: bool) -> bool:
    """Check, on a small window of the input ``x`` (:data:`CHECK_WINDOWS_PX`; the whole input when the model
    runs on no window), that the model is deterministic (else a
    :class:`~cem_checks.errors.NondeterministicModelWarning`; returns False) and, when the engine batches images
    (``batched``), that an image's output does not depend on the other images of its batch (else a
    :class:`ModelError` naming the cause and the fix).

    The engine compares each intervened image's ROI output bit for bit with a baseline, so a nondeterministic
    model marks blocks that cannot reach the ROI as supported, and a model that couples the images of a batch
    (BatchNorm in training mode, batch statistics) gives a wrong support and wrong effects. A window shows both
    as well as the whole input does, for a fraction of the cost. A passing verdict is cached in ``cache`` (a
    :class:`~cem_checks.cache.ChunkCache`) with the run's other checks.
    """
    record = cache.get_record("check-model")
    if record is not None and record.get("deterministic") is True and (record.get("batch_independent") or not batched):
        return True
    windows = [x[..., : min(x.shape[-2], s), : min(x.shape[-1], s)] for s in CHECK_WINDOWS_PX]
    for window in [w for w in windows if w.shape != x.shape] + [x]:
        try:
            nondet, coupled = _verdict(runner, window, batched)
            break
        except ModelError:
            if window is x:
                raise
    if nondet != 0.0:
        warnings.warn(
            f"two identical forward passes of {model_name(runner.model)} differ (max |diff| = {nondet:.3g}); the model "
            "is not deterministic, so `support` will mark blocks that cannot reach the ROI as supported and the "
            "effects carry extra noise. Disable dropout or stochastic layers, or call "
            "torch.use_deterministic_algorithms(True).",
            NondeterministicModelWarning,
            stacklevel=5,
        )
        return False
    if coupled != 0.0:
        raise ModelError(
            f"the output of {model_name(runner.model)} for an image depends on the other images of its batch: the "
            f"output of an image changed by up to {coupled:.3g} when the second image of a batch of 2 was replaced. "
            "Batched interventions would then give a wrong support and wrong effects. Typical cause: BatchNorm (or "
            "another layer using batch statistics) in training mode, e.g. an nn.Module wrapped in a function, which "
            "the engine cannot put in eval mode. Fix: call model.eval() before wrapping it (or pass the nn.Module "
            "itself), or pass batch_size=1."
        )
    cache.put_record("check-model", {"deterministic": True, "batch_independent": batched or None})
    return True


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity set where the platform has one, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # platforms without affinity
        return os.cpu_count() or 1


def xdist_threads() -> int | None:
    """The intra-op threads of a pytest-xdist worker: ``max(1, cores // workers)`` (cores: the CPUs this process
    may run on), or None outside xdist. Workers that each took every core would oversubscribe them; many small
    operations (local evaluation) suffer most."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not os.environ.get("PYTEST_XDIST_WORKER") or not workers or not workers.isdigit() or int(workers) < 1:
        return None
    return max(1, usable_cores() // int(workers))


@contextmanager
def torch_threads(threads: int | None):
    """Run with ``threads`` intra-op threads (restored after); None: :func:`xdist_threads` under pytest-xdist,
    else torch's setting as it is."""
    n = threads if threads is not None else xdist_threads()
    if n is None or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def auto_batch_size(runner: ModelRunner, x: torch.Tensor) -> int:
    if runner.device.type != "cuda":
        return CPU_BATCH
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(runner.device)
    before = torch.cuda.memory_allocated(runner.device)
    runner(x.clone(), " (measuring memory for batch_size='auto')")
    per_image = max(1, torch.cuda.max_memory_allocated(runner.device) - before)
    free, _ = torch.cuda.mem_get_info(runner.device)
    return int(max(1, min(CHUNK, (0.5 * free) // per_image)))


