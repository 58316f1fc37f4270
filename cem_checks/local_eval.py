"""Local evaluation of single-block interventions: each layer is computed only where the intervention can
change it and only where the ROI output needs it.

For models that are chains or DAGs of local, stride-1, same-resolution operations (3x3 convolutions,
pointwise activations, batch norm in eval mode, residual additions/subtractions: e.g. DnCNN), an
intervention on an input box ``B`` can only change node ``n`` inside ``chg(n)`` (the union of its inputs'
changed boxes grown by the node's halo, ``dilation * (k // 2)`` for a convolution, 0 for a pointwise op),
and the ROI output ``R`` only reads node ``n`` inside ``need(n)`` (the union over its consumers ``u`` of
``compute(u)`` grown by ``u``'s halo; ``R`` for the output). Node ``n`` is recomputed on
``compute(n) = need(n) ∩ chg(n)`` only; everywhere else it keeps its value for the baseline input, computed
once per frame. A convolution on a sub-box takes its inputs on the box grown by its halo (baseline values
with the inputs' recomputed sub-boxes written over them, zeros outside the map: exactly what the
convolution's zero padding sees) and runs with ``padding=0``. In exact arithmetic this is the full forward;
in floating point the kernels may round differently on other sizes, so the engine verifies the plan
against the normal forward on real interventions before using it (``crop_atol``).

:func:`build_plan` traces the model with ``torch.fx`` and returns ``(None, reason)`` for anything outside
the supported set: global pooling or attention, pixel shuffle, resampling, strided or non-"same"
convolutions, shape-dependent code, in-place updates of a tensor that is read elsewhere, parameters used
as tensors (``get_attr``), several outputs.
"""

from __future__ import annotations

import inspect
import operator
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), half-open, in frame px
EMPTY: Box = (0, 0, 0, 0)
#: Refuse a plan whose baseline activations would take more memory than this.
MAX_BASELINE_BYTES = 2 * 1024**3


def _empty(b: Box) -> bool:
    return b[1] <= b[0] or b[3] <= b[2]


def _union(a: Box, b: Box) -> Box:
    if _empty(a):
        return b
    if _empty(b):
        return a
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def _inter(a: Box, b: Box) -> Box:
    r = (max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3]))
    return EMPTY if _empty(r) else r


def _grow(a: Box, h: tuple[int, int]) -> Box:
    if _empty(a):
        return EMPTY
    return (a[0] - h[0], a[1] + h[0], a[2] - h[1], a[3] + h[1])


def _area(b: Box) -> int:
    return 0 if _empty(b) else (b[1] - b[0]) * (b[3] - b[2])


# ------------------------------------------------------------------------------------- supported ops
def _pointwise_module(m: nn.Module) -> Callable | None:
    """A non-in-place function equal to the pointwise module ``m`` (in eval mode), or None."""
    if isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout2d)):
        return (lambda t: t) if not m.training else None
    if isinstance(m, nn.ReLU):
        return torch.relu
    if isinstance(m, nn.LeakyReLU):
        return lambda t: F.leaky_relu(t, m.negative_slope)
    if isinstance(m, nn.PReLU):
        return lambda t: F.prelu(t, m.weight)
    if isinstance(m, nn.Sigmoid):
        return torch.sigmoid
    if isinstance(m, nn.Tanh):
        return torch.tanh
    if isinstance(m, nn.SiLU):
        return F.silu
    if isinstance(m, nn.GELU):
        return lambda t: F.gelu(t, approximate=m.approximate)
    if isinstance(m, nn.ELU):
        return lambda t: F.elu(t, m.alpha)
    if isinstance(m, nn.BatchNorm2d):
        if m.training or not m.track_running_stats or m.running_mean is None:
            return None  # batch statistics: global
        return lambda t: F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)
    return None


_FUNCS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg,
    torch.add, torch.sub, torch.mul, torch.neg, torch.relu, torch.clamp, torch.sigmoid, torch.tanh,
    F.relu, F.leaky_relu, F.gelu, F.silu, F.elu,
}
_METHODS = {"add", "sub", "mul", "div", "neg", "relu", "clamp", "clamp_min", "clamp_max", "sigmoid", "tanh"}


def _method(name: str) -> Callable:
    def call(self, *args, **kwargs):
        return getattr(self, name)(*args, **kwargs)

    return call


def _inplace_flag(fn: Callable, args: tuple, kwargs: dict) -> tuple[bool, Callable]:
    """(whether this call is in place, a function computing the same call out of place)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False, fn
    if "inplace" not in sig.parameters:
        return False, fn
    bound = sig.bind_partial(*args, **kwargs)
    inplace = bool(bound.arguments.get("inplace", False))

    def out_of_place(*a, **k):
        b = sig.bind(*a, **k)
        b.arguments["inplace"] = False
        return fn(*b.args, **b.kwargs)

    return inplace, out_of_place


@dataclass
class _Op:
    node: Any  # torch.fx.Node
    kind: str  # "input", "conv", "pointwise", "output"
    inputs: list[int] = field(default_factory=list)  # indices of tensor input ops
    halo: tuple[int, int] = (0, 0)
    fn: Callable | None = None  # pointwise: fn(*args, **kwargs) with tensors substituted
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    conv: nn.Conv2d | None = None


class LocalPlan:
    """A traced model ready for local evaluation (see the module docstring). Build with :func:`build_plan`."""

    def __init__(self, gm, ops: list[_Op]):
        self.gm = gm
        self.ops = ops
        self.index = {op.node: i for i, op in enumerate(ops)}
        self.n_conv = sum(op.kind == "conv" for op in ops)

    # --------------------------------------------------------------------------- baseline activations
    def baseline(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every node's value for the (1, C, H, W) input ``x``, from one forward through the traced graph
        with the model's own modules (values cloned, so in-place modules cannot alter stored ones).

        Raises ``ValueError`` when a node is not a same-resolution (1, C, H, W) tensor."""
        H, W = x.shape[-2:]
        env: dict[Any, Any] = {}
        vals: list[torch.Tensor] = []
        total = 0
        for op in self.ops:
            n = op.node
            def load(a):
                return env[a] if isinstance(a, torch.fx.Node) else a

            args = torch.fx.node.map_aggregate(n.args, load)
            kwargs = torch.fx.node.map_aggregate(n.kwargs, load)
            if n.op == "placeholder":
                v = x.clone()
            elif n.op == "output":
                v = args[0]
            elif n.op == "call_module":
                v = self.gm.get_submodule(n.target)(*args, **kwargs)
            elif n.op == "call_function":
                v = n.target(*args, **kwargs)
            else:  # call_method
                v = getattr(args[0], n.target)(*args[1:], **kwargs)
            if not isinstance(v, torch.Tensor) or v.ndim != 4 or v.shape[0] != 1 or tuple(v.shape[-2:]) != (H, W):
                shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise ValueError(f"node {n.name} gives {shape}, not a same-resolution (1, C, {H}, {W}) tensor")
            env[n] = v
            vals.append(v.detach().clone())
            total += v.numel() * v.element_size()
            if total > MAX_BASELINE_BYTES:
                raise ValueError(f"the baseline activations exceed {MAX_BASELINE_BYTES >> 30} GiB")
        return vals

    # --------------------------------------------------------------------------------- schedules
    def schedule(self, block: Box, roi: Box, hw: tuple[int, int]) -> list[Box]:
        """The compute box of every node for an intervention on ``block`` (frame px) read at ``roi``."""
        H, W = hw
        full = (0, H, 0, W)
        chg: list[Box] = []
        for op in self.ops:
            if op.kind == "input":
                c = _inter(block, full)
            else:
                c = EMPTY
                for i in op.inputs:
                    c = _union(c, chg[i])
                c = _inter(_grow(c, op.halo), full)
            chg.append(c)
        comp: list[Box] = [EMPTY] * len(self.ops)
        need: list[Box] = [EMPTY] * len(self.ops)
        for k in range(len(self.ops) - 1, -1, -1):
            op = self.ops[k]
            if op.kind == "output":
                need[k] = _inter(roi, full)
            comp[k] = _inter(need[k], chg[k])
            if op.kind == "output":
                comp[k] = need[k]  # the output is read on the whole ROI
            reach = _inter(_grow(comp[k], op.halo), full)
            for i in op.inputs:
                need[i] = _union(need[i], reach)
        return comp

    def conv_pixels(self, comp: list[Box]) -> float:
        """Output pixels computed per image, averaged over the convolutions (all ops when there are none):
        a full forward on an H x W frame counts H * W."""
        kinds = ("conv",) if self.n_conv else ("conv", "pointwise")
        areas = [_area(b) for op, b in zip(self.ops, comp) if op.kind in kinds]
        return float(sum(areas)) / max(1, len(areas))

    # --------------------------------------------------------------------------------- evaluation
    def evaluate(self, base: list[torch.Tensor], comp: list[Box], block: Box, content: torch.Tensor) -> torch.Tensor:
        """ROI output (n, C, rh, rw) of ``n`` interventions whose input differs from the baseline input only
        on ``block`` (frame px), where it holds ``content`` (n, C, bh, bw); ``comp`` from :meth:`schedule`
        for the same block."""
        n = content.shape[0]
        vals: list[torch.Tensor | None] = [None] * len(self.ops)
        H, W = base[0].shape[-2:]
        for k, op in enumerate(self.ops):
            K = comp[k]
            if op.kind == "input":
                if not _empty(K):
                    vals[k] = content[:, :, K[0] - block[0] : K[1] - block[0], K[2] - block[2] : K[3] - block[2]]
                continue
            if _empty(K) and op.kind != "output":
                continue
            if op.kind == "output":
                vals[k] = self._assemble(base, vals, comp, op.inputs[0], K, n, (H, W))
                continue
            G = _grow(K, op.halo)
            ins = {i: self._assemble(base, vals, comp, i, G, n, (H, W)) for i in op.inputs}
            if op.kind == "conv":
                m = op.conv
                vals[k] = F.conv2d(ins[op.inputs[0]], m.weight, m.bias, 1, 0, m.dilation, m.groups)
            else:
                def sub(a, ins=ins):
                    return ins[self.index[a]] if isinstance(a, torch.fx.Node) else a

                args = torch.fx.node.map_aggregate(op.args, sub)
                kwargs = torch.fx.node.map_aggregate(op.kwargs, sub)
                vals[k] = op.fn(*args, **kwargs)
        return vals[-1]

    def _assemble(self, base, vals, comp, i: int, G: Box, n: int, hw: tuple[int, int]) -> torch.Tensor:
        """Node ``i``'s values on box ``G`` (may leave the map: zeros there) for the ``n`` interventions."""
        H, W = hw
        C = comp[i]
        v = vals[i]
        if v is not None and C == G:
            return v
        inner = _inter(G, (0, H, 0, W))
        b = base[i]
        out = torch.zeros((n, b.shape[1], G[1] - G[0], G[3] - G[2]), dtype=b.dtype, device=b.device)
        if not _empty(inner):
            out[:, :, inner[0] - G[0] : inner[1] - G[0], inner[2] - G[2] : inner[3] - G[2]] = \
                b[:, :, inner[0] : inner[1], inner[2] : inner[3]]
        if v is not None:
            ov = _inter(C, G)
            if not _empty(ov):
                out[:, :, ov[0] - G[0] : ov[1] - G[0], ov[2] - G[2] : ov[3] - G[2]] = \
                    v[:, :, ov[0] - C[0] : ov[1] - C[0], ov[2] - C[2] : ov[3] - C[2]]
        return out


def build_plan(model: Any) -> tuple[LocalPlan | None, str]:
    """Trace ``model`` and check that every node is supported. Returns ``(plan, "ok")`` or ``(None, reason)``."""
    if not isinstance(model, nn.Module):
        return None, f"not an nn.Module ({type(model).__name__})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: not supported
        return None, f"torch.fx cannot trace the model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    nodes = list(gm.graph.nodes)
    ops: list[_Op] = []
    index: dict[Any, int] = {}
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return None, f"the traced graph has {len(placeholders)} inputs; one image input is supported"
    for n in nodes:
        tensor_inputs = [a for a in n.all_input_nodes]
        if any(a not in index for a in tensor_inputs):
            return None, f"node {n.name} reads a node that is not supported"
        ins = [index[a] for a in tensor_inputs]
        if n.op == "placeholder":
            op = _Op(n, "input")
        elif n.op == "output":
            if not (len(n.args) == 1 and isinstance(n.args[0], torch.fx.Node)):
                return None, "the model returns several values; one output tensor is supported"
            op = _Op(n, "output", ins)
        elif n.op == "call_module":
            m = gm.get_submodule(n.target)
            if isinstance(m, nn.Conv2d) and type(m).forward is nn.Conv2d.forward:
                k, d = m.kernel_size, m.dilation
                if m.stride != (1, 1):
                    return None, f"{n.target}: strided convolution (stride {m.stride})"
                if m.padding_mode != "zeros":
                    return None, f"{n.target}: padding_mode {m.padding_mode!r} (only zero padding is supported)"
                if any(kk % 2 == 0 for kk in k):
                    return None, f"{n.target}: even kernel size {k}"
                pad = tuple(dd * (kk - 1) // 2 for kk, dd in zip(k, d))
                if not (m.padding == "same" or tuple(m.padding) == pad):
                    return None, f"{n.target}: padding {m.padding} does not keep the resolution (expected {pad})"
                if len(n.args) != 1 or n.kwargs or not isinstance(n.args[0], torch.fx.Node):
                    return None, f"{n.target}: unexpected call arguments"
                op = _Op(n, "conv", ins, halo=pad, conv=m)
            else:
                fn = _pointwise_module(m)
                if fn is None:
                    return None, f"{n.target}: {type(m).__name__} is not a local same-resolution operation"
                if len(n.args) != 1 or n.kwargs or not isinstance(n.args[0], torch.fx.Node):
                    return None, f"{n.target}: unexpected call arguments"
                if getattr(m, "inplace", False) and len(n.args[0].users) > 1:
                    return None, f"{n.target}: in-place {type(m).__name__} on a tensor that is read elsewhere"
                op = _Op(n, "pointwise", ins, fn=fn, args=n.args)
        elif n.op == "call_function":
            if n.target not in _FUNCS:
                name = getattr(n.target, "__name__", str(n.target))
                return None, f"{n.name}: function {name} is not a supported pointwise operation"
            inplace, fn = _inplace_flag(n.target, n.args, n.kwargs)
            if inplace and any(len(a.users) > 1 for a in tensor_inputs):
                return None, f"{n.name}: in-place operation on a tensor that is read elsewhere"
            op = _Op(n, "pointwise", ins, fn=fn, args=n.args, kwargs=dict(n.kwargs))
        elif n.op == "call_method":
            if n.target not in _METHODS:
                return None, f"{n.name}: method .{n.target}() is not a supported pointwise operation"
            op = _Op(n, "pointwise", ins, fn=_method(n.target), args=n.args, kwargs=dict(n.kwargs))
        else:
            return None, f"{n.name}: {n.op} {n.target} is not supported (parameters used as tensors)"
        index[n] = len(ops)
        ops.append(op)
    if ops[-1].kind != "output" or ops[0].kind != "input":
        return None, "unexpected graph layout"
    return LocalPlan(gm, ops), "ok"


def traced_reach(model: Any, hw: tuple[int, int], roi: Box) -> tuple[Box | None, str]:
    """The box of the (h, w) input that the ROI output (box ``roi``, input px of a same-resolution model) can
    depend on at all, from the traced graph: every input pixel outside it is beyond the reach of every path to
    the ROI (the halos of the convolutions, clipped to the map), so it cannot change the ROI output. Returns
    ``(box, "ok")``, or ``(None, reason)`` when :func:`build_plan` refuses the model."""
    plan, why = build_plan(model)
    if plan is None:
        return None, why
    H, W = hw
    return plan.schedule((0, H, 0, W), roi, hw)[0], "ok"


class FrameEvaluator:
    """Local evaluation of single-block interventions in one frame (a window of the model input).

    ``x`` is the frame's baseline input (1, C, h, w) in the model's dtype, ``roi`` the ROI box in frame px.
    Counts the images evaluated (``draws``) and the pixels computed (see :meth:`LocalPlan.conv_pixels`)."""

    def __init__(self, plan: LocalPlan, x: torch.Tensor, roi: Box):
        self.plan = plan
        self.roi = roi
        self.hw = tuple(x.shape[-2:])
        self.base = plan.baseline(x)
        self.roi_base = self.base[-1][:, :, roi[0] : roi[1], roi[2] : roi[3]]
        self._schedules: dict[Box, tuple[list[Box], float]] = {}
        self.draws = 0
        self.pixels = 0

    def schedule(self, block: Box) -> tuple[list[Box], float]:
        if block not in self._schedules:
            comp = self.plan.schedule(block, self.roi, self.hw)
            self._schedules[block] = (comp, self.plan.conv_pixels(comp))
        return self._schedules[block]

    def roi_outputs(self, block: Box, content: torch.Tensor) -> torch.Tensor:
        """(n, C, rh, rw) ROI outputs of the inputs equal to the baseline except ``content`` on ``block``."""
        comp, px = self.schedule(block)
        out = self.plan.evaluate(self.base, comp, block, content.to(self.base[0].dtype))
        n = content.shape[0]
        self.draws += n
        self.pixels += round(n * px)
        return out.float()
