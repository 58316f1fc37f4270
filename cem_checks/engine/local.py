"""Local evaluation glue: fast mode's coarse and fine draws evaluated with :mod:`cem_checks.local_eval` (each layer
computed only where the intervention can change it and the ROI output needs it), after a check against the
model's forward on real interventions; the verdict is cached per frame and block set.

Support stays exact. Every group of blocks that local evaluation runs together also evaluates the unchanged input,
in the same stacked batch and on the same boxes: the same arithmetic. A draw whose ROI output differs from that bit
for bit changed it (an intervention whose change dies out, outside the block's reach or under a ReLU, leaves the
downstream values identical, so it cannot differ). A block with such a draw, or with a drop of at least
``tol_db`` > 0, is in the support; every other candidate block gets its coarse draws again through the normal
forward, compared bit for bit with the baseline (:mod:`.fast`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..cache import digest
from ..errors import CEMError
from .draws import Engine, Frame
from .options import LOCAL_CHECK, FastOptions
from .runner import is_oom


class LocalDraws:
    """Single-block draws of one frame evaluated locally (:mod:`cem_checks.local_eval`), once verified.

    The evaluator (the frame's baseline activations) is built on first use, so a rerun whose draws are all
    cached builds nothing. Costs go to the runner's counters: each intervened image counts as one forward
    pass, its pixels as the output pixels computed per convolution (a full forward on the frame counts h * w)."""

    def __init__(self, eng: Engine, frame: Frame, plan, info: dict[str, Any]):
        self.eng, self.frame, self.plan, self.info = eng, frame, plan, info
        self.active = True
        self._ev = None

    @property
    def ev(self):
        if self._ev is None:
            with torch.inference_mode():
                self._ev = frame_evaluator(self.eng, self.plan, self.frame)
            self.base_psnr = self.frame.psnr(self._ev.roi_base)
        return self._ev

    def roi_outputs(self, blocks: np.ndarray, top: torch.Tensor, left: torch.Tensor,
                    content: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ROI outputs of single-block interventions (pairs: block, top/left input px, content), the blocks evaluated
        together in groups (:meth:`FrameEvaluator.roi_outputs_and_bases`), and whether each changed the ROI output: it
        differs bit for bit from the unchanged input evaluated in the same pass (its group's)."""
        f, runner, b, ev = self.frame, self.eng.runner, self.eng.b, self.ev
        t0 = time.perf_counter()
        uniq, first, inverse = np.unique(blocks, return_index=True, return_inverse=True)
        boxes, parts, sels = [], [], []
        for u, i0 in enumerate(first):
            sel = torch.as_tensor(np.flatnonzero(inverse == u), device=content.device)
            y, x = int(top[i0]) - f.y0, int(left[i0]) - f.x0
            boxes.append((y, y + b, x, x + b))
            parts.append(content[sel])
            sels.append(sel)
        with torch.inference_mode():
            outs, bases = ev.roi_outputs_and_bases(boxes, parts)
        out = outs[0].new_empty((len(blocks),) + tuple(outs[0].shape[1:]))
        changed = torch.zeros(len(blocks), dtype=torch.bool, device=out.device)
        for sel, r, r0 in zip(sels, outs, bases):
            out[sel] = r
            changed[sel] = (r != r0).flatten(1).any(1)
        runner.calls += ev.last_groups
        if self.eng.device.type == "cuda":
            torch.cuda.synchronize(self.eng.device)
        runner.seconds += time.perf_counter() - t0
        runner.images += len(blocks)
        return out, changed

    def run_chunk(self, frame, phase, ci, items, blocks, patches, n):
        """(drops, changes) of one frame like :meth:`Engine._run_chunk_frames`, or None to take the normal path; a
        change as :meth:`roi_outputs` decides it."""
        if frame is not self.frame or len(blocks) != n or not np.array_equal(items, np.arange(n)):
            return None
        content, top, left = self.eng.chunk_content(phase, ci, blocks, patches)
        px0 = self._ev.pixels if self._ev is not None else 0
        try:
            ev = self.ev
            r, changed = self.roi_outputs(blocks, top, left, content)
        except Exception as exc:  # any failure: the normal path takes over
            if isinstance(exc, CEMError):
                raise
            if is_oom(exc):  # the normal path halves its batch; local evaluation goes on with the next chunk
                torch.cuda.empty_cache()
                return None
            self.active = False
            self.info["check"] += f"; stopped after {self.info['draws']} draws: {type(exc).__name__}: {exc}"
            return None
        self.eng.runner.pixels += ev.pixels - px0
        self.info["draws"] += n
        self.info["pixels"] += ev.pixels - px0
        drops = (self.base_psnr - frame.psnr(r)).cpu().numpy()
        return drops, changed.cpu().numpy()


def frame_evaluator(eng: Engine, plan, frame: Frame):
    """The :class:`~cem_checks.local_eval.FrameEvaluator` of ``plan`` on ``frame`` (its baseline activations),
    built once per job: the traced reach and the frame's locally evaluated draws share it."""
    S = eng.roi.size
    ry, rx = frame.sl[2].start, frame.sl[3].start
    roi = (ry, ry + S, rx, rx + S)
    key = (id(plan), frame.box, roi)
    if key not in eng.evaluators:
        from ..local_eval import FrameEvaluator

        eng.evaluators[key] = (plan, FrameEvaluator(plan, frame.x.to(eng.runner.dtype), roi))
    return eng.evaluators[key][1]


def local_setup(eng: Engine, frame: Frame, blocks: np.ndarray, opts: FastOptions, tol: float):
    """A verified :class:`LocalDraws` for single-block draws of ``blocks`` in ``frame``, or None; and the meta
    summary. The verdict of the check is cached (per frame and block set), so a rerun neither repeats the check's
    forward passes nor decides differently."""
    info: dict[str, Any] = {"used": False, "check": "", "draws": 0, "check_draws": 0, "pixels": 0}
    if not opts.local_eval:
        info["check"] = "off"
    elif blocks.size == 0:
        info["check"] = "not needed: no block to draw"
    elif eng.runner.precision != "fp32":
        info["check"] = f"not used: precision {eng.runner.precision!r} (local evaluation runs in fp32 only)"
    if info["check"]:
        return None, info
    plan, why = local_plan(eng, frame.x)
    if plan is None:
        info["check"] = f"unsupported: {why}"
        return None, info
    local = LocalDraws(eng, frame, plan, info)
    key = f"check-local-{digest(frame.box, blocks)}"
    verdict = eng.cache.get_record(key)
    if verdict is None or not isinstance(verdict.get("check"), str):
        verdict = local_verdict(eng, local, blocks, opts)
        eng.cache.put_record(key, verdict)
    info.update({k: verdict[k] for k in ("used", "check", "check_draws") if k in verdict})
    return (local if info["used"] else None), info


def local_plan(eng: Engine, x: torch.Tensor) -> tuple[Any, str]:
    """``(plan, reason)`` of :func:`cem_checks.local_eval.build_plan` for the model on inputs of the shape of ``x``
    (a frame's input), built once per job: the traced reach and local evaluation share it. A symbolic trace holds at
    every shape; a capture only at its own, so another shape builds its own."""
    if "any shape" in eng.plans:
        return eng.plans["any shape"]
    key = tuple(x.shape)
    if key not in eng.plans:
        from ..local_eval import build_plan

        plan, why = build_plan(eng.runner.model, x.to(eng.runner.dtype))
        eng.plans[key] = (plan, why)
        if plan is not None and plan.shape is None:
            eng.plans["any shape"] = (plan, why)
    return eng.plans[key]


def local_verdict(eng: Engine, local: LocalDraws, blocks: np.ndarray, opts: FastOptions) -> dict[str, Any]:
    """Check local evaluation against the model's forward on the baseline and on real interventions: the
    nearest and farthest of ``blocks``, one on the frame border, the median. The tolerance is ``crop_atol``
    (relative to the output's magnitude where that exceeds 1). Returns the (cacheable) verdict."""
    frame = local.frame
    try:
        ev = local.ev
    except Exception as exc:  # a graph the plan cannot evaluate: not supported
        if is_oom(exc) or isinstance(exc, CEMError):
            raise
        return {"used": False, "check": f"unsupported: {type(exc).__name__}: {exc}"}
    base_ref = frame.baseline(1)[0]
    atol = opts.crop_atol * max(1.0, float(base_ref.abs().max()))
    base_diff = float((ev.roi_base.to(base_ref.device) - base_ref).abs().max())
    if not base_diff <= atol:
        return {"used": False, "check": f"failed: the traced graph's baseline ROI output differs from the model's by {base_diff:.3g}"}

    b = eng.b
    dist = eng.distance.ravel()[blocks]
    r, c = np.divmod(blocks, eng.grid.cols)
    border = (r * b == frame.y0) | ((r + 1) * b == frame.y0 + frame.h) | (c * b == frame.x0) | ((c + 1) * b == frame.x0 + frame.w)
    order = np.argsort(dist, kind="stable")
    pick = [blocks[order[0]], blocks[order[-1]], blocks[order[len(order) // 2]]] + \
        ([blocks[np.flatnonzero(border)[0]]] if border.any() else [])
    pick = np.array(sorted({int(p) for p in pick}))
    checked = np.repeat(pick, 2)
    patches = eng.patch_ids(LOCAL_CHECK, (len(checked),))
    content, top, left = eng.chunk_content(LOCAL_CHECK, 0, checked, patches)
    def intervened(s0: int, s1: int) -> torch.Tensor:
        one_each = torch.arange(s1 - s0, device=eng.device)
        return eng.intervened(frame, s1 - s0, one_each, top[s0:s1], left[s0:s1], content[s0:s1])

    ref = [out[frame.sl] for out in eng.forward_in_batches(len(checked), intervened, " (checking local evaluation)")]
    px0 = ev.pixels
    try:
        loc, _ = local.roi_outputs(checked, top, left, content)
    except Exception as exc:  # the check fails: the normal path is kept
        if is_oom(exc) or isinstance(exc, CEMError):
            raise
        return {"used": False, "check": f"failed: local evaluation raised {type(exc).__name__}: {exc}",
                "check_draws": len(checked)}
    finally:
        eng.runner.pixels += ev.pixels - px0
    diff = float((torch.cat(ref) - loc.to(ref[0].device)).abs().max())
    if diff > atol:
        return {"used": False, "check_draws": len(checked),
                "check": f"failed: max |diff| {diff:.3g} > {atol:.2g} (crop_atol) on {len(checked)} check draws"}
    check = ("bit-exact" if diff == 0 else f"max |diff| {diff:.2e} <= {atol:.2g} (crop_atol)")
    return {"used": True, "check_draws": len(checked), "check": f"{check} on {len(checked)} check draws"}
