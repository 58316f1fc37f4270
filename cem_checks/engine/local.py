"""Local evaluation glue: fast mode's fine draws evaluated with :mod:`cem_checks.local_eval` (each layer computed
only where the intervention can change it and the ROI output needs it), after a check against the model's
forward on real interventions; the verdict is cached per frame and flagged set."""

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
            from ..local_eval import FrameEvaluator

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
        """(drops, changed) like :meth:`Engine._run_chunk`, or None to take the normal path."""
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
        return drops, np.zeros(n, dtype=bool)


def local_setup(eng: Engine, frame: Frame, fl: np.ndarray, opts: FastOptions, tol: float):
    """A verified :class:`LocalDraws` for the fine phase in ``frame``, or None; and the meta summary.

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
    from ..local_eval import build_plan

    plan, why = build_plan(eng.runner.model)
    if plan is None:
        info["check"] = f"unsupported: {why}"
        return None, info
    local = LocalDraws(eng, frame, plan, info)
    key = f"check-local-{digest(frame.box, fl)}"
    verdict = eng.cache.get_record(key)
    if verdict is None or not isinstance(verdict.get("check"), str):
        verdict = local_verdict(eng, local, fl, opts)
        eng.cache.put_record(key, verdict)
    info.update({k: verdict[k] for k in ("used", "check", "check_draws") if k in verdict})
    return (local if info["used"] else None), info


def local_verdict(eng: Engine, local: LocalDraws, fl: np.ndarray, opts: FastOptions) -> dict[str, Any]:
    """Check local evaluation against the model's forward on the baseline and on real interventions: the
    nearest and farthest flagged blocks, one on the frame border, the median. Returns the (cacheable) verdict."""
    frame = local.frame
    try:
        ev = local.ev
    except Exception as exc:  # a graph the plan cannot evaluate: not supported
        if is_oom(exc):
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
    patches = eng.patch_ids(LOCAL_CHECK, (len(blocks),))
    content, top, left = eng.chunk_content(LOCAL_CHECK, 0, blocks, patches)
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
        if is_oom(exc) or isinstance(exc, CEMError):
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
