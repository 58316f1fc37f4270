"""Evaluating a plan on the windows of one frame: :class:`FrameEvaluator` (the baseline of a frame, the schedules
of its blocks, interventions evaluated together in groups, :data:`GROUP_COST`) and :func:`traced_reach` (the input
box the ROI output can depend on, from the traced graph).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from .capture import Refused
from .geometry import Box, _area, _empty, _union
from .plan import LocalPlan, build_plan


class FrameEvaluator:
    """Local evaluation of single-block interventions in one frame (a window of the model input).

    ``x`` is the frame's baseline input (1, C, h, w) in the model's dtype, ``roi`` the ROI box in the pixels of
    the model's output of that frame (input pixels times the model's scale). Counts the images evaluated
    (``draws``) and the pixels computed (see :meth:`LocalPlan.conv_pixels`). Raises :class:`Refused` when a node
    is not an image batch."""

    def __init__(self, plan: LocalPlan, x: torch.Tensor, roi: Box):
        # the geometries learn this frame's sizes and constants: a copy of the plan's, so frames do not share them
        if plan.shape is not None and tuple(x.shape) != plan.shape:
            raise Refused(f"the plan was captured for inputs of shape {plan.shape}, not {tuple(x.shape)}")
        built = plan.take_baseline(x)  # the values computed when the plan was read at this input, if it was
        plan = LocalPlan(plan.gm, [dataclasses.replace(op, geo=copy.copy(op.geo)) for op in plan.ops], plan.shape)
        self.plan = plan
        self.roi = roi
        self.base = built if built is not None else plan.baseline(x)
        self.hws = [tuple(v.shape[-2:]) if isinstance(v, torch.Tensor) and v.ndim >= 2 else (1, 1) for v in self.base]
        index, base = plan.index, self.base
        for op in plan.ops:
            if op.kind == "op":
                op.geo.bind([self.hws[i] for i in op.inputs], lambda node: base[index[node]])
        self.roi_base = self.base[-1][:, :, roi[0]: roi[1], roi[2]: roi[3]]
        self.costs = plan.unit_costs(self.base)
        self._schedules: dict[Box, tuple[list[Box], float]] = {}
        self.draws = 0
        self.pixels = 0
        self.last_groups = 0  # groups of blocks evaluated together by the last call of roi_outputs_and_bases

    def schedule(self, block: Box) -> tuple[list[Box], float]:
        if block not in self._schedules:
            comp = self.plan.schedule(block, self.roi, self.hws)
            self._schedules[block] = (comp, self.plan.conv_pixels(comp))
        return self._schedules[block]

    def reach(self) -> Box:
        """The input box (frame pixels) that the ROI output can depend on at all."""
        h, w = self.hws[0]
        return self.plan.schedule((0, h, 0, w), self.roi, self.hws)[0]

    def roi_outputs(self, block: Box, content: torch.Tensor) -> torch.Tensor:
        """(n, C, rh, rw) ROI outputs of the inputs equal to the baseline except ``content`` on ``block``."""
        return self.roi_outputs_many([block], [content])[0]

    def work(self, comp: list[Box]) -> float:
        """The multiply-adds of one image computed on the boxes ``comp`` (see :meth:`LocalPlan.unit_costs`). A
        region of tokens, which computes its whole output, counts its box: its cost per image grows with the
        number of images stacked, so blocks far apart are not stacked for it."""
        return float(sum(c * _area(b) for c, b in zip(self.costs, comp) if c))

    def roi_outputs_many(self, blocks: list[Box], contents: list[torch.Tensor], slack: float | None = None,
                         call: float | None = None) -> list[torch.Tensor]:
        """See :meth:`roi_outputs_and_bases`; the ROI outputs only."""
        return self.roi_outputs_and_bases(blocks, contents, slack, call, bases=False)[0]

    def roi_outputs_and_bases(self, blocks: list[Box], contents: list[torch.Tensor], slack: float | None = None,
                              call: float | None = None, bases: bool = True,
                              ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """:meth:`roi_outputs` of several blocks (all of one size), in groups that run together: a group computes
        every node on the union of its blocks' boxes, once for all its interventions stacked. A block joins a
        group while the union's work (multiply-adds, :meth:`work`) stays within ``slack`` more than the group's
        and the block's own work plus the ``call`` multiply-adds per operation that one call fewer saves
        (defaults: :data:`GROUP_COST` for the input's device). Neighbouring blocks, and blocks near the ROI
        (whose boxes are its whole neighbourhood), join; far apart blocks of a large model do not.

        With ``bases``, each group also evaluates the unchanged input in the same pass (one image more, the same
        boxes and arithmetic as its interventions): the second list holds, per block, its group's ROI output of
        it (1, C, rh, rw); an intervention that differs from it bit for bit changed the ROI output."""
        dslack, dcall = GROUP_COST.get(self.base[0].device.type, GROUP_COST_ACCELERATOR)
        slack = dslack if slack is None else slack
        call = dcall if call is None else call
        order = sorted(range(len(blocks)), key=lambda g: (blocks[g][0], blocks[g][2]))
        groups: list[list[int]] = []
        unions: list[list[Box]] = []  # per group, the union of its blocks' boxes: what it computes
        own = 0.0
        for g in order:
            comp, _ = self.schedule(blocks[g])
            work = self.work(comp) * contents[g].shape[0]
            if groups:
                merged = [_union(a, c) for a, c in zip(unions[-1], comp)]
                n = sum(contents[m].shape[0] for m in groups[-1]) + contents[g].shape[0]
                saved = call * sum(1 for c in comp if not _empty(c))
                if self.work(merged) * n <= (1.0 + slack) * (own + work) + saved:
                    groups[-1].append(g)
                    unions[-1], own = merged, own + work
                    continue
            groups.append([g])
            unions.append(list(comp))
            own = work
        self.last_groups = len(groups)
        out: list[torch.Tensor | None] = [None] * len(blocks)
        base_out: list[torch.Tensor | None] = [None] * len(blocks)
        dtype = self.base[0].dtype
        for members, comp in zip(groups, unions):
            boxes, parts = [blocks[g] for g in members], [contents[g].to(dtype) for g in members]
            if bases:  # the unchanged input: the baseline's own pixels written at a member's block
                b0, b1, c0, c1 = boxes[0]
                boxes.append(boxes[0])
                parts.append(self.base[0][..., b0: b1, c0: c1])
            y = self.plan.evaluate(self.base, self.hws, comp, self._inputs(comp[0], boxes, parts))
            px = self.plan.conv_pixels(comp)
            start = 0
            for g in members:
                n = contents[g].shape[0]
                out[g] = y[start: start + n]
                start += n
                self.draws += n
                self.pixels += round(n * px)
            if bases:
                for g in members:
                    base_out[g] = y[start: start + 1]
                self.pixels += round(px)
        return out, base_out

    def _inputs(self, U: Box, blocks: list[Box], contents: list[torch.Tensor]) -> torch.Tensor:
        """The input on box ``U`` of every intervention (stacked in the order of ``blocks``): the baseline there,
        each block's content written in at its place (the part inside ``U``)."""
        counts = [c.shape[0] for c in contents]
        x0 = self.base[0]
        total = sum(counts)
        if _empty(U):
            return x0.new_zeros((total,) + tuple(x0.shape[1:-2]) + (0, 0))
        b = blocks[0][1] - blocks[0][0]
        # a window of U grown by one block on every side holds every block whole: scatter, then cut to U
        y0, x_0 = U[0] - b, U[2] - b
        h, w = U[1] - U[0] + 2 * b, U[3] - U[2] + 2 * b
        win = x0.new_zeros((total,) + tuple(x0.shape[1:-2]) + (h, w))
        win[..., b: b + U[1] - U[0], b: b + U[3] - U[2]] = x0[..., U[0]: U[1], U[2]: U[3]]
        dev = x0.device
        item = torch.repeat_interleave(torch.arange(len(blocks), device=dev), torch.as_tensor(counts, device=dev))
        tops = torch.as_tensor([bl[0] - y0 for bl in blocks], device=dev)[item]
        lefts = torch.as_tensor([bl[2] - x_0 for bl in blocks], device=dev)[item]
        inside = (tops >= 0) & (lefts >= 0) & (tops + b <= h) & (lefts + b <= w)
        content = torch.cat(contents)
        ar = torch.arange(b, device=dev)
        idx = torch.nonzero(inside).flatten()
        if idx.numel():
            rows = (tops[idx][:, None] + ar)[:, None, :, None]
            cols = (lefts[idx][:, None] + ar)[:, None, None, :]
            chans = torch.arange(win.shape[1], device=dev)[None, :, None, None]
            win[idx[:, None, None, None], chans, rows, cols] = content[idx]
        return win[..., b: b + U[1] - U[0], b: b + U[3] - U[2]]


#: How much more work a group of blocks evaluated together may do than its blocks alone: ``(slack, call)``, a
#: share of the blocks' own work and the multiply-adds that each operation's call costs beyond its arithmetic
#: (the boxes assembled, the call itself), which one call fewer saves. On the CPU the work itself dominates, on
#: a GPU the number of kernel launches.
GROUP_COST = {"cpu": (0.15, 2e6)}
GROUP_COST_ACCELERATOR = (1.0, 0.0)


def traced_reach(model: Any, x: torch.Tensor, roi: Box, built: tuple[LocalPlan | None, str] | None = None,
                  make: Callable[[LocalPlan, torch.Tensor, Box], FrameEvaluator] | None = None,
                  ) -> tuple[Box | None, str, torch.Tensor | None]:
    """The box of the input ``x`` (1, C, h, w) that the ROI output (box ``roi`` of the output) can depend on at
    all, from the traced graph: every input pixel outside it lies beyond the reach of every path of the graph to
    the ROI. Returns ``(box, "ok", roi_base)`` with the traced graph's own baseline ROI output (to compare with the
    model's: a trace may miss what the model runs), or ``(None, reason, None)`` when the model is refused.
    ``built``: the ``(plan, reason)`` of :func:`build_plan` for ``model`` and ``x``, when the caller has it;
    ``make``: what builds the :class:`FrameEvaluator` (e.g. one that keeps it for the frame's later draws)."""
    from ..engine.runner import is_oom

    plan, why = build_plan(model, x) if built is None else built
    if plan is None:
        return None, why, None
    try:
        with torch.inference_mode():
            ev = (make or FrameEvaluator)(plan, x, roi)
            return ev.reach(), "ok", ev.roi_base
    except Exception as exc:  # noqa: BLE001 - a graph the plan cannot evaluate: not traced
        if is_oom(exc):
            raise
        return None, str(exc) if isinstance(exc, Refused) else f"{type(exc).__name__}: {exc}", None
