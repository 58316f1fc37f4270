"""Local evaluation of single-block interventions: each layer is computed only where the intervention can change it
and only where the ROI output needs it.

For models traced by ``torch.fx`` into *local* operations, an intervention on an input box can change node ``n``
only inside ``chg(n)``, and the ROI output reads node ``n`` only inside ``need(n)``. Every node has its own pixel
grid (a strided convolution halves it, a pixel shuffle doubles it): boxes are kept per node, in that node's
pixels, and each operation maps them between its inputs' grids and its output grid, per axis:

- ``fwd``: the output range an input range can change (a superset is safe);
- ``bwd``: the input range that the output on a range reads (positions outside the map are filled as the
  operation's padding fills them: zeros, -inf for max pooling, or reflected/replicated/circular positions).

Node ``n`` is recomputed on ``compute(n) = need(n) ∩ chg(n)`` only; everywhere else it keeps its value for the
baseline input, computed once per frame. An operation on a sub-box takes its inputs assembled on the ranges it
reads (baseline values with the inputs' recomputed sub-boxes written over them) and runs without padding. In
exact arithmetic this is the full forward; in floating point the kernels may round differently on other sizes,
so the engine verifies a plan against the normal forward on real interventions before using it.

Interventions on several blocks are evaluated together in groups (:meth:`FrameEvaluator.roi_outputs_many`): a
group computes every node on the union of its blocks' boxes, and every operation runs once on the stacked
windows of all its interventions.

Supported (:func:`build_plan` refuses anything else and says which operation and why):

- convolutions (``nn.Conv2d``, ``F.conv2d``): any kernel, stride, dilation and groups, zero, reflect, replicate
  or circular padding; transposed convolutions (``nn.ConvTranspose2d``, ``F.conv_transpose2d``);
- ``pixel_shuffle`` / ``pixel_unshuffle`` (modules and functions); ``F.interpolate`` / ``nn.Upsample`` by an
  integer factor (nearest, bilinear, bicubic; ``align_corners`` False); average and max pooling with a stride
  (no ``ceil_mode``); ``F.pad`` and the padding modules; spatial slicing (``x[..., :h, :w]``);
- pointwise operations: activations, batch norm in eval mode, arithmetic with tensors or broadcast constants
  (parameters, buffers), ``torch.cat`` / ``torch.stack`` along non-spatial dims, channel indexing,
  ``ones_like`` / ``zeros_like`` / ``full_like`` (e.g. noise-level maps), in-place arithmetic on a tensor that
  nothing else reads;
- outputs larger than the input (SR at any integer scale): the ROI is a box of the output grid.

Refused as *global* (any block may change the ROI): global or adaptive pooling, reductions over the image
(mean, sum, softmax), matrix products (attention), normalisations over the spatial dims (layer, group and
instance norm), batch norm with batch statistics; and anything the trace cannot follow (shape-dependent code).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import operator
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), half-open, in the node's own pixels
Range = tuple[int, int]
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


def _area(b: Box) -> int:
    return 0 if _empty(b) else (b[1] - b[0]) * (b[3] - b[2])


def _ceildiv(a: int, b: int) -> int:
    return -((-a) // b)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


class Refused(Exception):
    """The model has an operation that local evaluation does not support (the message says which and why)."""


class GlobalOp(Refused):
    """An operation that is global whatever the input's shape (a reduction, attention, a normalisation over the
    image): capturing the model at the job's shape would refuse it too."""


#: Methods whose refusal in a symbolic trace comes from shape code, which a capture at a fixed shape resolves.
_SHAPE_METHODS = {"size", "view", "reshape", "expand", "repeat", "flatten", "permute", "transpose"}


# ------------------------------------------------------------------------------------------ geometries
class Geometry:
    """How one operation maps ranges between an input's grid and its output grid (per axis: 0 rows, 1 columns),
    and computes its output on a box from its inputs assembled on the boxes it reads."""

    fill = 0.0  #: what the operation reads outside its input's map (its padding)

    def bind(self, in_hws: list[tuple[int, int]], resolve: Callable[[Any], Any]) -> None:
        """Learn the traced sizes of the inputs and the values of the constants (called once per frame)."""

    def fwd(self, j: int, r: Range, n_in: int, n_out: int, axis: int) -> Range:
        raise NotImplementedError

    def bwd(self, j: int, r: Range, n_in: int, n_out: int, axis: int) -> Range:
        raise NotImplementedError

    def index_map(self, j: int, r: Range, n_in: int, axis: int) -> np.ndarray | None:
        """For padding modes that read inside the map: the input index of each read position (-1: the fill
        value); None when positions outside the map read the fill value."""
        return None

    def run(self, ins: list[torch.Tensor], out: Box, reads: list[Box]) -> torch.Tensor:
        raise NotImplementedError


class Pointwise(Geometry):
    """Same grid in and out (inputs of spatial size 1 broadcast): the node's own call on the assembled inputs.
    ``depends=False``: the output does not depend on its inputs' values, only their shapes (``ones_like``)."""

    def __init__(self, call: Callable, depends: bool = True):
        self.call, self.depends = call, depends

    def fwd(self, j, r, n_in, n_out, axis):
        if not self.depends:
            return (0, 0)
        return (0, n_out) if n_in == 1 and n_out > 1 else r

    def bwd(self, j, r, n_in, n_out, axis):
        return (0, 1) if n_in == 1 and n_out > 1 else r

    def run(self, ins, out, reads):
        return self.call(ins)


_PADDING_MODES = ("reflect", "replicate", "circular")


def _pad_index(q: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Input indices of padded positions ``q`` of an axis of size ``n`` (-1: the fill value)."""
    if mode == "reflect":
        period = 2 * (n - 1) if n > 1 else 1
        m = np.mod(q, period)
        return np.where(m < n, m, period - m)
    if mode == "replicate":
        return np.clip(q, 0, n - 1)
    if mode == "circular":
        return np.mod(q, n)
    return np.where((q >= 0) & (q < n), q, -1)


class Window(Geometry):
    """A sliding window (convolution, pooling): output ``o`` reads input ``[o*s - p, o*s - p + extent)``;
    ``fn`` computes the operation without padding. ``mode``: the padding (``zeros``, ``reflect``, ``replicate``,
    ``circular``, or ``-inf`` for max pooling)."""

    def __init__(self, fn: Callable, stride, pad, extent, mode: str = "zeros"):
        self.fn, self.stride, self.pad, self.extent, self.mode = fn, stride, pad, extent, mode
        self.fill = float("-inf") if mode == "-inf" else 0.0

    def fwd(self, j, r, n_in, n_out, axis):
        s, p, e = self.stride[axis], self.pad[axis], self.extent[axis]
        if self.mode in _PADDING_MODES:  # padded positions that copy the changed input positions
            q = np.arange(-p, n_in + p)
            src = _pad_index(q, n_in, self.mode)
            hit = q[(src >= r[0]) & (src < r[1])]
            if not hit.size:
                return (0, 0)
            r = (int(hit.min()), int(hit.max()) + 1)
        return (max(0, _ceildiv(r[0] + p - e + 1, s)), min(n_out, (r[1] - 1 + p) // s + 1))

    def bwd(self, j, r, n_in, n_out, axis):
        s, p, e = self.stride[axis], self.pad[axis], self.extent[axis]
        return (r[0] * s - p, (r[1] - 1) * s - p + e)

    def index_map(self, j, r, n_in, axis):
        return _pad_index(np.arange(r[0], r[1]), n_in, self.mode) if self.mode in _PADDING_MODES else None

    def run(self, ins, out, reads):
        return self.fn(ins[0])


class Transposed(Geometry):
    """A transposed convolution: input ``i`` writes output ``[i*s - p, i*s - p + extent)``; ``fn`` runs it with no
    padding, so its output on inputs read from ``G0`` starts at ``G0*s - p``."""

    def __init__(self, fn: Callable, stride, pad, extent):
        self.fn, self.stride, self.pad, self.extent = fn, stride, pad, extent

    def fwd(self, j, r, n_in, n_out, axis):
        s, p, e = self.stride[axis], self.pad[axis], self.extent[axis]
        return (max(0, r[0] * s - p), min(n_out, (r[1] - 1) * s - p + e))

    def bwd(self, j, r, n_in, n_out, axis):
        s, p, e = self.stride[axis], self.pad[axis], self.extent[axis]
        return (_ceildiv(r[0] + p - e + 1, s), (r[1] - 1 + p) // s + 1)

    def run(self, ins, out, reads):
        y = self.fn(ins[0])
        (sy, sx), (py, px), g = self.stride, self.pad, reads[0]
        oy, ox = g[0] * sy - py, g[2] * sx - px
        return y[..., out[0] - oy: out[1] - oy, out[2] - ox: out[3] - ox]


class Shuffle(Geometry):
    """``pixel_shuffle`` (``up``: output ``u`` reads input ``u // r``) or ``pixel_unshuffle`` (output ``u`` reads
    input ``[u*r, u*r + r)``)."""

    def __init__(self, r: int, up: bool):
        self.r, self.up = int(r), up

    def fwd(self, j, rg, n_in, n_out, axis):
        r = self.r
        return (rg[0] * r, rg[1] * r) if self.up else (rg[0] // r, _ceildiv(rg[1], r))

    def bwd(self, j, rg, n_in, n_out, axis):
        r = self.r
        return (rg[0] // r, _ceildiv(rg[1], r)) if self.up else (rg[0] * r, rg[1] * r)

    def run(self, ins, out, reads):
        if not self.up:
            return F.pixel_unshuffle(ins[0], self.r)
        y = F.pixel_shuffle(ins[0], self.r)
        g = reads[0]
        oy, ox = g[0] * self.r, g[2] * self.r
        return y[..., out[0] - oy: out[1] - oy, out[2] - ox: out[3] - ox]


class Gather(Geometry):
    """Output position ``u`` of an axis copies input position ``maps[axis][u]`` (-1: the fill value): padding,
    spatial slicing, nearest resampling. ``make_maps(in_hw)`` gives the maps for the traced input size."""

    def __init__(self, make_maps: Callable[[tuple[int, int]], tuple[np.ndarray, np.ndarray]], fill: float = 0.0,
                 select: tuple = ()):
        self.make_maps, self.fill, self.select = make_maps, fill, select
        self.maps: tuple[np.ndarray, np.ndarray] | None = None

    def bind(self, in_hws, resolve):
        self.maps = self.make_maps(in_hws[0])

    def fwd(self, j, r, n_in, n_out, axis):
        m = self.maps[axis]
        hit = np.flatnonzero((m >= r[0]) & (m < r[1]))
        return (int(hit.min()), int(hit.max()) + 1) if hit.size else (0, 0)

    def bwd(self, j, r, n_in, n_out, axis):
        m = self.maps[axis][r[0]: r[1]]
        m = m[m >= 0]
        return (int(m.min()), int(m.max()) + 1) if m.size else (0, 0)

    def run(self, ins, out, reads):
        x, g = ins[0], reads[0]
        if self.select:
            x = x[self.select + (slice(None), slice(None))]
        for axis, (lo, hi) in enumerate(((out[0], out[1]), (out[2], out[3]))):
            m = self.maps[axis][lo:hi]
            size = x.shape[-2 + axis]
            idx = torch.as_tensor(np.where(m >= 0, m - g[2 * axis], size), device=x.device)
            x = torch.index_select(F.pad(x, [0, 0, 0, 1] if axis == 0 else [0, 1], value=self.fill), x.ndim - 2 + axis, idx)
        return x


class Resample(Geometry):
    """Bilinear or bicubic resampling by an integer factor (``align_corners`` False): the output on a box is the
    resampling of the input on the range it reads grown by ``margin`` taps (clipped to the map, where the
    resampling clamps exactly as on the whole map), cut to the box."""

    def __init__(self, fn: Callable, factor: tuple[int, int], margin: int):
        self.fn, self.factor, self.margin = fn, factor, margin

    def fwd(self, j, r, n_in, n_out, axis):
        f, m = self.factor[axis], self.margin + 1
        return (max(0, (r[0] - m) * f), min(n_out, (r[1] + m) * f))

    def bwd(self, j, r, n_in, n_out, axis):
        f, m = self.factor[axis], self.margin + 1
        lo = math.floor((r[0] + 0.5) / f - 0.5) - m
        hi = math.floor((r[1] - 0.5) / f - 0.5) + 1 + m
        return (max(0, lo), min(n_in, hi))

    def run(self, ins, out, reads):
        y = self.fn(ins[0])
        g = reads[0]
        oy, ox = g[0] * self.factor[0], g[2] * self.factor[1]
        return y[..., out[0] - oy: out[1] - oy, out[2] - ox: out[3] - ox]


# ------------------------------------------------------------------------------------- supported ops
_POINTWISE_MODULES: dict[type, Callable[[nn.Module], Callable]] = {
    nn.Identity: lambda m: (lambda t: t),
    nn.ReLU: lambda m: torch.relu,
    nn.ReLU6: lambda m: F.relu6,
    nn.LeakyReLU: lambda m: (lambda t: F.leaky_relu(t, m.negative_slope)),
    nn.PReLU: lambda m: (lambda t: F.prelu(t, m.weight)),
    nn.Sigmoid: lambda m: torch.sigmoid,
    nn.Tanh: lambda m: torch.tanh,
    nn.SiLU: lambda m: F.silu,
    nn.Mish: lambda m: F.mish,
    nn.Hardswish: lambda m: F.hardswish,
    nn.Hardtanh: lambda m: (lambda t: F.hardtanh(t, m.min_val, m.max_val)),
    nn.Softplus: lambda m: (lambda t: F.softplus(t, m.beta, m.threshold)),
    nn.GELU: lambda m: (lambda t: F.gelu(t, approximate=m.approximate)),
    nn.ELU: lambda m: (lambda t: F.elu(t, m.alpha)),
}
#: Modules and functions refused because they are global, with the reason recorded.
_GLOBAL_MODULES = {
    nn.AdaptiveAvgPool2d: "global pooling", nn.AdaptiveMaxPool2d: "global pooling",
    nn.LayerNorm: "a normalisation over the last dims (spatial in NCHW)", nn.GroupNorm: "a normalisation over the spatial dims",
    nn.InstanceNorm2d: "a normalisation over the spatial dims", nn.MultiheadAttention: "attention",
    nn.Softmax: "a softmax", nn.Linear: "a linear layer over the last (spatial) dim", nn.Flatten: "a reshape of the image",
}
_GLOBAL_FUNCS = {
    F.adaptive_avg_pool2d: "global pooling", F.adaptive_max_pool2d: "global pooling", torch.mean: "a reduction",
    torch.sum: "a reduction", torch.amax: "a reduction", torch.softmax: "a softmax", F.softmax: "a softmax",
    torch.matmul: "a matrix product (attention)", torch.bmm: "a matrix product (attention)",
    torch.einsum: "a tensor contraction (attention)", F.layer_norm: "a normalisation over the last dims",
    F.group_norm: "a normalisation over the spatial dims", F.instance_norm: "a normalisation over the spatial dims",
    operator.matmul: "a matrix product (attention)", F.scaled_dot_product_attention: "attention",
    F.linear: "a linear layer over the last (spatial) dim", torch.flatten: "a reshape of the image",
}
_GLOBAL_METHODS = {"mean": "a reduction", "sum": "a reduction", "amax": "a reduction", "max": "a reduction",
                   "min": "a reduction", "softmax": "a softmax", "matmul": "a matrix product", "bmm": "a matrix product",
                   "view": "a reshape", "reshape": "a reshape", "flatten": "a reshape", "permute": "a permutation",
                   "transpose": "a permutation", "size": "shape-dependent code", "expand": "shape-dependent code",
                   "repeat": "shape-dependent code"}
_POINTWISE_FUNCS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pos,
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.relu, torch.clamp, torch.clip, torch.sigmoid,
    torch.tanh, torch.abs, torch.exp, torch.sqrt, torch.where, torch.minimum, torch.maximum, torch.pow,
    F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, F.hardtanh, F.prelu, F.mish, F.hardswish, F.softplus,
    F.sigmoid, F.tanh,
}
_INPLACE_FUNCS = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                  operator.itruediv: operator.truediv}
_POINTWISE_METHODS = {"add", "sub", "mul", "div", "neg", "relu", "clamp", "clamp_min", "clamp_max", "sigmoid",
                      "tanh", "abs", "exp", "sqrt", "pow", "contiguous", "clone", "float"}
_INPLACE_METHODS = {"add_", "sub_", "mul_", "div_", "clamp_", "relu_", "clamp_min_", "clamp_max_"}
_LIKE = {torch.ones_like, torch.zeros_like, torch.full_like}


@dataclass
class _Op:
    node: Any  # torch.fx.Node
    kind: str  # "input", "const", "op", "output"
    inputs: list[int] = field(default_factory=list)  # indices of the spatial nodes it reads, in argument order
    geo: Geometry | None = None
    conv_like: bool = False


class LocalPlan:
    """A traced model ready for local evaluation (see the module docstring). Build with :func:`build_plan`."""

    def __init__(self, gm, ops: list[_Op], shape: tuple[int, ...] | None = None):
        self.gm = gm
        self.ops = ops
        self.shape = shape  # the one input shape of a captured plan; None: a symbolic trace, any shape
        self.index = {op.node: i for i, op in enumerate(ops)}
        self.n_conv = sum(op.conv_like for op in ops)

    # --------------------------------------------------------------------------- baseline activations
    def baseline(self, x: torch.Tensor) -> list[Any]:
        """Every node's value for the (1, C, h, w) input ``x``, from one pass through the traced graph with the
        model's own modules (values cloned, so in-place modules cannot alter stored ones). Raises
        :class:`Refused` when a node that depends on the input is not a batch-1 image tensor (..., h, w)."""
        env: dict[Any, Any] = {}
        vals: list[Any] = []
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
            elif n.op == "get_attr":
                v = _attr(self.gm, n.target)
            elif n.op == "call_module":
                v = self.gm.get_submodule(n.target)(*args, **kwargs)
            elif n.op == "call_function":
                v = _INPLACE_FUNCS.get(n.target, n.target)(*args, **kwargs)
            else:  # call_method; in-place methods out of place
                name = n.target[:-1] if n.target in _INPLACE_METHODS else n.target
                v = getattr(args[0], name)(*args[1:], **kwargs)
            if op.kind != "const" and (not isinstance(v, torch.Tensor) or v.ndim < 3 or v.shape[0] != 1):
                shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise Refused(f"node {n.name} gives {shape}, not a batch of one image (1, ..., h, w)")
            env[n] = v
            vals.append(v.detach().clone() if isinstance(v, torch.Tensor) else v)
            total += v.numel() * v.element_size() if isinstance(v, torch.Tensor) else 0
            if total > MAX_BASELINE_BYTES:
                raise Refused(f"the baseline activations exceed {MAX_BASELINE_BYTES >> 30} GiB")
        return vals

    # --------------------------------------------------------------------------------- schedules
    def schedule(self, block: Box, roi: Box, hws: list[tuple[int, int]]) -> list[Box]:
        """The compute box of every node (its own pixels) for an intervention on ``block`` (input pixels) read at
        ``roi`` (output pixels); ``hws`` are the nodes' spatial sizes."""
        chg: list[Box] = []
        for op, (H, W) in zip(self.ops, hws):
            if op.kind == "input":
                c = _inter(block, (0, H, 0, W))
            elif op.kind == "output":
                c = chg[op.inputs[0]]
            elif op.kind == "const":
                c = EMPTY
            else:
                c = EMPTY
                for j, i in enumerate(op.inputs):
                    if _empty(chg[i]):
                        continue
                    hi, wi = hws[i]
                    ry = op.geo.fwd(j, (chg[i][0], chg[i][1]), hi, H, 0)
                    rx = op.geo.fwd(j, (chg[i][2], chg[i][3]), wi, W, 1)
                    c = _union(c, _inter((ry[0], ry[1], rx[0], rx[1]), (0, H, 0, W)))
            chg.append(c)
        comp: list[Box] = [EMPTY] * len(self.ops)
        need: list[Box] = [EMPTY] * len(self.ops)
        for k in range(len(self.ops) - 1, -1, -1):
            op = self.ops[k]
            H, W = hws[k]
            if op.kind == "output":
                comp[k] = _inter(roi, (0, H, 0, W))
                need[op.inputs[0]] = _union(need[op.inputs[0]], comp[k])
                continue
            comp[k] = _inter(need[k], chg[k])
            if op.kind != "op" or _empty(comp[k]):
                continue
            for j, i in enumerate(op.inputs):
                G = self._read(op, j, comp[k], hws[k], hws[i])
                need[i] = _union(need[i], _inter(self._hull(op, j, G, hws[i]), (0, hws[i][0], 0, hws[i][1])))
        return comp

    @staticmethod
    def _read(op: _Op, j: int, K: Box, hw: tuple[int, int], hw_in: tuple[int, int]) -> Box:
        ry = op.geo.bwd(j, (K[0], K[1]), hw_in[0], hw[0], 0)
        rx = op.geo.bwd(j, (K[2], K[3]), hw_in[1], hw[1], 1)
        return (ry[0], ry[1], rx[0], rx[1])

    @staticmethod
    def _hull(op: _Op, j: int, G: Box, hw_in: tuple[int, int]) -> Box:
        """The in-map box the read ``G`` takes its values from (through a padding mode's index map)."""
        my = op.geo.index_map(j, (G[0], G[1]), hw_in[0], 0)
        if my is None:
            return G
        mx = op.geo.index_map(j, (G[2], G[3]), hw_in[1], 1)
        vy, vx = my[my >= 0], mx[mx >= 0]
        return (int(vy.min()), int(vy.max()) + 1, int(vx.min()), int(vx.max()) + 1) if vy.size and vx.size else EMPTY

    def conv_pixels(self, comp: list[Box]) -> float:
        """Output pixels computed per image, averaged over the convolution-like operations (all operations when
        there are none): a full forward of a same-resolution model on an h x w frame counts h * w."""
        ops = [k for k, op in enumerate(self.ops) if op.kind == "op" and (op.conv_like or not self.n_conv)]
        return float(sum(_area(comp[k]) for k in ops)) / max(1, len(ops))

    # --------------------------------------------------------------------------------- evaluation
    def evaluate(self, base: list[Any], hws, comp: list[Box], x0: torch.Tensor) -> torch.Tensor:
        """ROI outputs (n, C, rh, rw) of ``n`` interventions computed on the boxes ``comp`` (one per node, e.g. the
        union of several blocks' schedules from :meth:`schedule`), given their input on ``comp[0]``:
        ``x0`` (n, C, h, w), the baseline input there with each intervention's content written in."""
        n = x0.shape[0]
        vals: list[torch.Tensor | None] = [None] * len(self.ops)
        for k, op in enumerate(self.ops):
            K = comp[k]
            if op.kind == "input":
                vals[k] = x0 if not _empty(K) else None
                continue
            if op.kind == "output":
                i = op.inputs[0]
                vals[k] = self._assemble(base[i], hws[i], vals[i], comp[i], K, n, None, 0.0, None)
                continue
            if op.kind == "const" or _empty(K):
                continue
            ins, reads = [], []
            for j, i in enumerate(op.inputs):
                G = self._read(op, j, K, hws[k], hws[i])
                reads.append(G)
                ins.append(self._assemble(base[i], hws[i], vals[i], comp[i], G, n, op.geo, op.geo.fill, j))
            vals[k] = op.geo.run(ins, K, reads)
        return vals[-1]

    @staticmethod
    def _assemble(b: torch.Tensor, hw: tuple[int, int], v: torch.Tensor | None, C: Box, G: Box, n: int, geo,
                  fill: float, j) -> torch.Tensor:
        """A node's values on box ``G`` (its pixels; may leave the map) for ``n`` interventions: the baseline ``b``
        with the recomputed values ``v`` (on box ``C``) written over it; outside the map ``fill``, or, for a padding
        mode of ``geo``, the positions it maps there."""
        maps = None
        if geo is not None:
            my = geo.index_map(j, (G[0], G[1]), hw[0], 0)
            if my is not None:
                maps = (my, geo.index_map(j, (G[2], G[3]), hw[1], 1))
        if maps is None and v is not None and C == G:
            return v
        if maps is not None:
            vy, vx = maps[0][maps[0] >= 0], maps[1][maps[1] >= 0]
            inner = (int(vy.min()), int(vy.max()) + 1, int(vx.min()), int(vx.max()) + 1)
        else:
            inner = _inter(G, (0, hw[0], 0, hw[1]))
        lead = (n,) + tuple(b.shape[1:-2])
        if _empty(inner):
            src = b.new_zeros(lead + (0, 0))
        else:
            src = b[..., inner[0]: inner[1], inner[2]: inner[3]].expand(lead + (inner[1] - inner[0], inner[3] - inner[2]))
            ov = _inter(C, inner) if v is not None else EMPTY
            if not _empty(ov):
                if ov == inner and C == inner:
                    src = v
                else:
                    src = src.clone()
                    src[..., ov[0] - inner[0]: ov[1] - inner[0], ov[2] - inner[2]: ov[3] - inner[2]] = \
                        v[..., ov[0] - C[0]: ov[1] - C[0], ov[2] - C[2]: ov[3] - C[2]]
        if maps is not None:
            x = src
            for axis, m in enumerate(maps):
                size = x.shape[-2 + axis]
                idx = torch.as_tensor(np.where(m >= 0, m - inner[2 * axis], size), device=x.device)
                x = torch.index_select(F.pad(x, [0, 0, 0, 1] if axis == 0 else [0, 1], value=fill), x.ndim - 2 + axis, idx)
            return x
        if inner == G:
            return src
        out = torch.full(lead + (G[1] - G[0], G[3] - G[2]), fill, dtype=b.dtype, device=b.device)
        if not _empty(inner):
            out[..., inner[0] - G[0]: inner[1] - G[0], inner[2] - G[2]: inner[3] - G[2]] = src
        return out


def _attr(gm, target: str) -> Any:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


# ------------------------------------------------------------------------------------------ the trace
def build_plan(model: Any, x: torch.Tensor | None = None) -> tuple[LocalPlan | None, str]:
    """Trace ``model`` and check that every operation that depends on the input is supported. Returns
    ``(plan, "ok")`` or ``(None, reason)``. Shapes are checked when the plan meets an input (:class:`FrameEvaluator`).

    First the symbolic trace (``torch.fx``), valid at any input shape. A model that it cannot read (shape code such
    as ``n, c, h, w = x.shape``, padding to a multiple, control flow on sizes, a plain function wrapping a model)
    is captured instead as it really runs at the shape of ``x`` (:func:`capture`, when ``x`` is given): every
    size is then a constant, and the plan is valid at that shape only (``plan.shape``). A model refused for a
    global operation is not captured (the capture would refuse it too)."""
    from .engine.guard import preserved

    if isinstance(model, nn.Module):
        try:  # a symbolic trace writes its proxies into attributes that forward assigns: restored after
            with warnings.catch_warnings(), preserved(model):
                warnings.simplefilter("ignore")
                gm = torch.fx.symbolic_trace(model)
        except Exception as exc:  # noqa: BLE001 - any tracing failure means: not supported
            why = f"torch.fx cannot trace the model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        else:
            try:
                return LocalPlan(gm, _ops(gm)), "ok"
            except GlobalOp as exc:
                return None, str(exc)
            except Refused as exc:
                why = str(exc)
    else:
        why = f"not an nn.Module ({type(model).__name__})"
    if x is None:
        return None, why
    gm, cwhy = capture(model, x)
    if gm is None:
        return None, f"{why}; {cwhy}"
    try:
        plan = LocalPlan(gm, _ops(gm))
    except Refused as exc:
        return None, f"{why}; captured at {tuple(x.shape)}: {exc}"
    plan.shape = tuple(x.shape)
    return plan, "ok"


#: Functions a capture names by their internal aliases, mapped to the public ones the geometries know.
_CAPTURE_ALIASES = {torch._C._nn.pad: F.pad}


def capture(model: Any, x: torch.Tensor) -> tuple[Any, str]:
    """The graph ``model`` really runs on an input of the shape of ``x``, captured by ``torch.compile``
    (TorchDynamo, ``fullgraph=True``, static shapes): sizes, shape code and data-independent control flow become
    constants; forward hooks, in-place updates and attribute writes are seen as they run. Returns ``(graph module,
    "ok")`` with one input (the image) and every other value (parameters, buffers, constants) as attributes, or
    ``(None, reason)`` when the model cannot be captured as one graph. The model is left as it was (the capture
    runs it once: whatever its forward writes is restored)."""
    from .engine.guard import preserved

    graphs: list = []

    def backend(gm, example_inputs):
        graphs.append((gm, list(example_inputs)))
        return gm.forward

    x = x.detach().clone()  # a plain tensor (not an inference tensor) of the job's shape
    # torch's structured trace log records every step of the capture at DEBUG level, which a handler on the root
    # logger (pytest's log capture) would receive and format: silenced while capturing, then restored
    trace_log = logging.getLogger("torch.__trace")
    level = trace_log.level
    try:
        import torch._dynamo  # noqa: F401 - torch.compile's capture

        trace_log.setLevel(logging.WARNING)
        with warnings.catch_warnings(), preserved(model), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.compile(model, backend=backend, fullgraph=True, dynamic=False)(x)
    except Exception as exc:  # noqa: BLE001 - any capture failure means: not supported
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return None, f"torch.compile cannot capture it as one graph at {tuple(x.shape)} ({type(exc).__name__}: {first})"
    finally:
        trace_log.setLevel(level)
    if not graphs:
        return None, f"torch.compile ran the model without capturing a graph at {tuple(x.shape)}"
    gm, examples = graphs[-1]
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    image = [n for n, e in zip(inputs, examples) if e is x]
    if len(image) != 1 or len(inputs) != len(examples):
        return None, "the captured graph does not take the image as one of its inputs"
    for k, (n, e) in enumerate(zip(inputs, examples)):
        if e is x:
            continue
        if not isinstance(e, torch.Tensor):
            return None, f"the captured graph takes a non-tensor input {n.name} ({type(e).__name__})"
        name = f"_captured{k}"
        gm.register_buffer(name, e.detach())
        with gm.graph.inserting_before(n):
            const = gm.graph.get_attr(name)
        n.replace_all_uses_with(const)
        gm.graph.erase_node(n)
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target in _CAPTURE_ALIASES:
            n.target = _CAPTURE_ALIASES[n.target]
        if n.op == "output" and isinstance(n.args[0], (tuple, list)) and len(n.args[0]) == 1:
            n.args = (n.args[0][0],)
    gm.graph.lint()
    gm.recompile()
    return gm, "ok"


def _ops(gm) -> list[_Op]:
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise Refused(f"the traced graph has {len(placeholders)} inputs; one image input is supported")
    ops: list[_Op] = []
    index: dict[Any, int] = {}
    spatial: set = set()  # nodes that depend on the input
    for n in nodes:
        deps = [a for a in n.all_input_nodes if a in spatial]
        if n.op == "placeholder":
            op = _Op(n, "input")
            spatial.add(n)
        elif n.op == "output":
            if not (len(n.args) == 1 and isinstance(n.args[0], torch.fx.Node) and n.args[0] in spatial):
                raise Refused("the model returns several values, or one that does not depend on its input; one "
                              "output image is supported")
            op = _Op(n, "output", [index[n.args[0]]])
        elif not deps:
            op = _Op(n, "const")
        else:
            try:
                geo, conv_like = _geometry(gm, n, deps, index)
            except Refused:
                raise
            except Exception as exc:  # an argument this plan cannot read: refused, naming the node
                where = n.target if n.op == "call_module" else n.name
                raise Refused(f"{where}: its arguments cannot be read as constants ({type(exc).__name__}: {exc})") from exc
            op = _Op(n, "op", [index[a] for a in deps], geo=geo, conv_like=conv_like)
            spatial.add(n)
        index[n] = len(ops)
        ops.append(op)
    for n in nodes:  # an in-place update of a tensor that something else reads would change what that reads
        inplace = (n.op == "call_function" and n.target in _INPLACE_FUNCS) or \
            (n.op == "call_method" and n.target in _INPLACE_METHODS) or \
            (n.op == "call_module" and getattr(gm.get_submodule(n.target), "inplace", False))
        target = n.args[0] if n.args else None
        if inplace and isinstance(target, torch.fx.Node) and len(target.users) > 1:
            what = type(gm.get_submodule(n.target)).__name__ if n.op == "call_module" else \
                getattr(n.target, "__name__", str(n.target))
            raise Refused(f"{n.name}: in-place {what} on a tensor that is read elsewhere")
    return ops


class _Bound(Pointwise):
    """A pointwise operation called with node ``n``'s own arguments: spatial nodes from the assembled inputs (in
    ``deps`` order), constant nodes from the frame's baseline values (bound per frame), literals as traced."""

    def __init__(self, n, deps: list, fn: Callable, depends: bool = True):
        super().__init__(None, depends)
        self.n, self.fn, self.pos = n, fn, {a: i for i, a in enumerate(deps)}
        self.resolve: Callable[[Any], Any] | None = None
        self.hw: tuple[int, int] = (1, 1)  # the node's grid in this frame

    def bind(self, in_hws, resolve):
        self.resolve = resolve
        self.hw = max(in_hws, key=lambda hw: hw[0] * hw[1]) if in_hws else (1, 1)

    def run(self, ins, out, reads):  # a method of its own (a copy per frame binds its own constants)
        return self._call(ins, out)

    def _call(self, ins, out=None):
        def sub(a):
            if isinstance(a, torch.fx.Node):
                if a in self.pos:
                    return ins[self.pos[a]]
                v = self.resolve(a)
                # a constant image of the node's grid (e.g. a noise-level map made at a captured shape) is read on
                # the box computed, as the inputs are
                if (out is not None and isinstance(v, torch.Tensor) and v.ndim >= 2 and self.hw != (1, 1)
                        and tuple(v.shape[-2:]) == self.hw):
                    v = v[..., out[0]: out[1], out[2]: out[3]]
                return v
            return a

        return self.fn(*torch.fx.node.map_aggregate(self.n.args, sub), **torch.fx.node.map_aggregate(self.n.kwargs, sub))


def _geometry(gm, n, deps: list, index: dict) -> tuple[Geometry, bool]:
    """The geometry of node ``n`` (which reads the spatial nodes ``deps``) and whether it is convolution-like."""

    def literal(a):
        if isinstance(a, torch.fx.Node):
            if a.op == "get_attr":
                return _attr(gm, a.target)
            raise Refused(f"{n.name}: an argument computed in the graph ({a.name}) where a constant is expected")
        return a

    def pointwise(fn, depends=True) -> Geometry:
        return _Bound(n, deps, fn, depends)

    if n.op == "call_module":
        m = gm.get_submodule(n.target)
        if len(n.args) != 1 or n.kwargs or deps != [n.args[0]]:
            raise Refused(f"{n.target}: unexpected call arguments")
        for t, reason in _GLOBAL_MODULES.items():
            if isinstance(m, t):
                raise GlobalOp(f"{n.target}: {type(m).__name__} is not a local operation ({reason})")
        if isinstance(m, nn.Conv2d) and type(m).forward is nn.Conv2d.forward:
            return _conv(m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups, m.padding_mode, m.kernel_size,
                         n.target), True
        if isinstance(m, nn.ConvTranspose2d) and type(m).forward is nn.ConvTranspose2d.forward:
            return _tconv(m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups, m.kernel_size, n.target), True
        if isinstance(m, nn.PixelShuffle):
            return Shuffle(m.upscale_factor, True), False
        if isinstance(m, nn.PixelUnshuffle):
            return Shuffle(m.downscale_factor, False), False
        if isinstance(m, nn.Upsample):
            return _upsample(m.scale_factor, m.size, m.mode, m.align_corners, n.target), False
        if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)):
            return _pool(m, n.target), True
        if isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.CircularPad2d)):
            mode = {nn.ReflectionPad2d: "reflect", nn.ReplicationPad2d: "replicate", nn.CircularPad2d: "circular"}
            return _pad(m.padding, mode.get(type(m), "constant"), float(getattr(m, "value", 0.0)), n.target), False
        if isinstance(m, nn.BatchNorm2d):
            if m.training or not m.track_running_stats or m.running_mean is None:
                raise Refused(f"{n.target}: BatchNorm2d with batch statistics (training mode) is global")
            return Pointwise(lambda ins, m=m: F.batch_norm(ins[0], m.running_mean, m.running_var, m.weight, m.bias,
                                                           False, 0.0, m.eps)), False
        if isinstance(m, (nn.Dropout, nn.Dropout2d)):
            if m.training:
                raise Refused(f"{n.target}: dropout in training mode is random")
            return Pointwise(lambda ins: ins[0]), False
        make = _POINTWISE_MODULES.get(type(m))
        if make is not None:
            fn = make(m)
            return Pointwise(lambda ins, fn=fn: fn(ins[0])), False
        raise Refused(f"{n.target}: {type(m).__name__} is not a local operation this plan knows")

    if n.op == "call_method":
        name = str(n.target)
        if name in _GLOBAL_METHODS:
            kind = Refused if name in _SHAPE_METHODS else GlobalOp
            raise kind(f"{n.name}: .{name}() is {_GLOBAL_METHODS[name]}")
        if name not in _POINTWISE_METHODS and name not in _INPLACE_METHODS:
            raise Refused(f"{n.name}: method .{name}() is not a supported local operation")
        method = name[:-1] if name in _INPLACE_METHODS else name
        return pointwise(lambda self_, *a, **k: getattr(self_, method)(*a, **k)), False

    fn = n.target
    name = getattr(fn, "__name__", str(fn))
    if fn in _GLOBAL_FUNCS:
        raise (Refused if fn is torch.flatten else GlobalOp)(f"{n.name}: {name} is {_GLOBAL_FUNCS[fn]}")
    args = list(n.args)
    kw = dict(n.kwargs)

    def constant(v):
        """An argument where a constant is expected: a parameter or buffer read as its value (a 0-d tensor as a
        number, e.g. ``F.pixel_shuffle(y, self.scale)`` with a buffer ``scale``); a value computed in the graph
        is refused."""
        if isinstance(v, (list, tuple)):
            return type(v)(constant(u) for u in v)
        if isinstance(v, torch.fx.Node) and v not in deps:
            v = literal(v)
        if isinstance(v, torch.Tensor) and v.ndim == 0:
            return v.item()
        return v

    def arg(i, key, default=None):
        return constant(kw[key] if key in kw else (args[i] if len(args) > i else default))

    if fn is F.conv2d or fn is F.conv_transpose2d:
        if deps != [n.args[0]]:
            raise Refused(f"{n.name}: {name} with a weight computed from the input")
        w, b = literal(arg(1, "weight")), literal(arg(2, "bias"))
        if fn is F.conv2d:
            return _conv(w, b, arg(3, "stride", 1), arg(4, "padding", 0), arg(5, "dilation", 1), arg(6, "groups", 1),
                         "zeros", tuple(w.shape[-2:]), n.name), True
        return _tconv(w, b, arg(3, "stride", 1), arg(4, "padding", 0), arg(7, "dilation", 1), arg(6, "groups", 1),
                      tuple(w.shape[-2:]), n.name, arg(5, "output_padding", 0)), True
    if fn in (F.pixel_shuffle, torch.pixel_shuffle):
        return Shuffle(int(arg(1, "upscale_factor")), True), False
    if fn in (F.pixel_unshuffle, torch.pixel_unshuffle):
        return Shuffle(int(arg(1, "downscale_factor")), False), False
    if fn in (F.interpolate, F.upsample):
        if bool(kw.get("antialias", False)):
            raise Refused(f"{n.name}: antialiased resampling")
        scale, size = arg(2, "scale_factor"), arg(1, "size")
        if size is not None and scale is None:  # a size, from a captured graph whose shapes are known: a factor
            scale = _factor_of_size(size, args[0] if args else kw.get("input"))
            size = None if scale is not None else size
        return _upsample(scale, size, arg(3, "mode", "nearest"), arg(4, "align_corners"), n.name), False
    if fn in (F.avg_pool2d, F.max_pool2d):
        cls = nn.AvgPool2d if fn is F.avg_pool2d else nn.MaxPool2d
        return _pool(cls(*[constant(a) for a in args[1:]], **{k: constant(v) for k, v in kw.items()}), n.name), True
    if fn is F.pad:
        value = arg(3, "value", None)
        return _pad(tuple(arg(1, "pad")), arg(2, "mode", "constant"), float(value or 0.0), n.name), False
    if fn in (torch.cat, torch.concat, torch.stack):
        dim = arg(1, "dim", 0)
        if dim in (-1, -2) or dim >= 2 + (fn is torch.stack) and fn is not torch.stack and dim >= 2:
            raise Refused(f"{n.name}: {name} along a spatial dim (dim={dim})")
        if fn is torch.stack and dim in (3, 4):
            raise Refused(f"{n.name}: {name} along a spatial dim (dim={dim})")
        return pointwise(lambda items, dim=dim, fn=fn: fn([_batched(t, items) for t in items], dim=dim)), False
    if fn in _LIKE:
        return pointwise(fn, depends=False), False
    if fn is operator.getitem:
        return _getitem(n, deps, index), False
    if fn in _POINTWISE_FUNCS or fn in _INPLACE_FUNCS:
        return pointwise(_INPLACE_FUNCS.get(fn, fn)), False
    raise Refused(f"{n.name}: function {name} is not a supported local operation")


def _batched(t: Any, items: list) -> Any:
    """A constant taking part in ``torch.cat`` next to a batch of interventions: expanded over that batch."""
    lead = next((x.shape[0] for x in items if isinstance(x, torch.Tensor) and x.shape[0] != 1), 1)
    if isinstance(t, torch.Tensor) and t.ndim >= 3 and t.shape[0] == 1 and lead != 1:
        return t.expand((lead,) + tuple(t.shape[1:]))
    return t


def _conv(w, b, stride, padding, dilation, groups, padding_mode, kernel_size, where) -> Geometry:
    s, d, k = _pair(stride), _pair(dilation), _pair(kernel_size)
    extent = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
    if padding == "same":
        if s != (1, 1) or (extent[0] - 1) % 2 or (extent[1] - 1) % 2:
            raise Refused(f"{where}: padding 'same' that pads asymmetrically")
        p = ((extent[0] - 1) // 2, (extent[1] - 1) // 2)
    elif padding == "valid":
        p = (0, 0)
    else:
        p = _pair(padding)
    if padding_mode not in ("zeros",) + _PADDING_MODES:
        raise Refused(f"{where}: padding_mode {padding_mode!r}")
    fn = lambda t, w=w, b=b, s=s, d=d, g=groups: F.conv2d(t, w, b, s, 0, d, g)  # noqa: E731
    return Window(fn, s, p, extent, padding_mode)


def _tconv(w, b, stride, padding, dilation, groups, kernel_size, where, output_padding=0) -> Geometry:
    s, p, d, k = _pair(stride), _pair(padding), _pair(dilation), _pair(kernel_size)
    extent = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
    fn = lambda t, w=w, b=b, s=s, d=d, g=groups: F.conv_transpose2d(t, w, b, s, 0, 0, g, d)  # noqa: E731
    return Transposed(fn, s, p, extent)


def _factor_of_size(size: Any, source: Any) -> tuple[int, int] | None:
    """The integer factors that resample ``source`` (a node of a captured graph, whose example value has a shape)
    to ``size``; None when its shape is unknown or a factor is not an integer."""
    value = source.meta.get("example_value") if isinstance(source, torch.fx.Node) else None
    if not isinstance(value, torch.Tensor) or value.ndim < 2:
        return None
    size = (size, size) if isinstance(size, int) else tuple(size)
    if len(size) != 2:
        return None
    h, w = int(value.shape[-2]), int(value.shape[-1])
    if h < 1 or w < 1 or size[0] % h or size[1] % w:
        return None
    return size[0] // h, size[1] // w


def _upsample(scale, size, mode, align_corners, where) -> Geometry:
    if size is not None or scale is None:
        raise Refused(f"{where}: resampling to a size (an integer scale factor is supported)")
    f = tuple(scale) if isinstance(scale, (tuple, list)) else (scale, scale)
    if any(float(v) != int(v) or int(v) < 1 for v in f):
        raise Refused(f"{where}: resampling by a non-integer factor {scale}")
    f = (int(f[0]), int(f[1]))
    if mode in ("nearest", "nearest-exact"):
        # the index maps are those of the operation itself, applied to pixel coordinates
        def maps(hw, f=f, mode=mode):
            def axis(n, fy, fx):
                coord = torch.arange(n, dtype=torch.float64).view(1, 1, n, 1) if fy else \
                    torch.arange(n, dtype=torch.float64).view(1, 1, 1, n)
                out = F.interpolate(coord, scale_factor=(fy or 1, fx or 1), mode=mode)
                return out.flatten().round().long().numpy()
            return axis(hw[0], f[0], 0), axis(hw[1], 0, f[1])
        return Gather(maps)
    if mode in ("bilinear", "bicubic"):
        if align_corners:
            raise Refused(f"{where}: align_corners=True resampling (its grid depends on the image size)")
        fn = lambda t, m=mode, f=f: F.interpolate(t, scale_factor=f, mode=m, align_corners=False)  # noqa: E731
        return Resample(fn, f, 1 if mode == "bilinear" else 2)
    raise Refused(f"{where}: resampling mode {mode!r}")


def _pool(m: nn.Module, where: str) -> Geometry:
    if m.ceil_mode:
        raise Refused(f"{where}: pooling with ceil_mode=True")
    k = _pair(m.kernel_size)
    s = _pair(m.stride if m.stride is not None else m.kernel_size)
    p = _pair(m.padding)
    if isinstance(m, nn.AvgPool2d):
        if (not m.count_include_pad and p != (0, 0)) or m.divisor_override is not None:
            raise Refused(f"{where}: average pooling that leaves the padding out of its count")
        return Window(lambda t, k=k, s=s: F.avg_pool2d(t, k, s, 0), s, p, k, "zeros")
    d = _pair(m.dilation)
    extent = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
    return Window(lambda t, k=k, s=s, d=d: F.max_pool2d(t, k, s, 0, d), s, p, extent, "-inf")


def _pad(pads, mode: str, value: float, where: str) -> Geometry:
    pads = tuple(int(p) for p in (pads if isinstance(pads, (tuple, list)) else (pads,) * 4))
    if len(pads) == 2:
        pads = pads + (0, 0)
    if len(pads) != 4 or min(pads) < 0:
        raise Refused(f"{where}: padding {pads} (four non-negative sizes of the last two dims are supported)")
    if mode not in ("constant",) + _PADDING_MODES:
        raise Refused(f"{where}: padding mode {mode!r}")
    left, right, top, bottom = pads
    how = "zeros" if mode == "constant" else mode

    def maps(hw):
        return (_pad_index(np.arange(-top, hw[0] + bottom), hw[0], how),
                _pad_index(np.arange(-left, hw[1] + right), hw[1], how))

    return Gather(maps, fill=value)


def _getitem(n, deps, index) -> Geometry:
    key = n.args[1]
    key = key if isinstance(key, tuple) else (key,)
    if any(isinstance(i, (torch.fx.Node, list, torch.Tensor)) or i is None for i in key):
        raise Refused(f"{n.name}: indexing with tensors, lists or None ({key!r})")
    if Ellipsis in key:
        k = key.index(Ellipsis)
        rest = key[k + 1:]
        if Ellipsis in rest or len(rest) > 2:
            raise Refused(f"{n.name}: indexing {key!r}")
        key = key[:k] + (slice(None),) * (4 - k - len(rest)) + rest
    if len(key) > 4:
        raise Refused(f"{n.name}: indexing {key!r} (4-D image batches are supported)")
    key = key + (slice(None),) * (4 - len(key))
    if not isinstance(key[0], slice) or key[0] != slice(None):
        raise Refused(f"{n.name}: indexing the batch dim ({key!r})")
    if not isinstance(key[1], (slice, int)) or not all(isinstance(i, slice) for i in key[2:]):
        raise Refused(f"{n.name}: integer indexing of a spatial dim ({key!r})")
    select = (slice(None), key[1] if isinstance(key[1], slice) else slice(key[1], key[1] + 1 or None))
    if isinstance(key[1], int):
        raise Refused(f"{n.name}: integer indexing of the channel dim drops it ({key!r}); use a slice")
    if key[2] == slice(None) and key[3] == slice(None):
        return Pointwise(lambda ins, sel=select: ins[0][sel])

    def maps(hw, sy=key[2], sx=key[3]):
        return np.arange(hw[0])[sy], np.arange(hw[1])[sx]

    return Gather(maps, select=select)


# ------------------------------------------------------------------------------------------ evaluation
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
        plan = LocalPlan(plan.gm, [dataclasses.replace(op, geo=copy.copy(op.geo)) for op in plan.ops], plan.shape)
        self.plan = plan
        self.roi = roi
        self.base = plan.baseline(x)
        self.hws = [tuple(v.shape[-2:]) if isinstance(v, torch.Tensor) and v.ndim >= 2 else (1, 1) for v in self.base]
        index, base = plan.index, self.base
        for op in plan.ops:
            if op.kind == "op":
                op.geo.bind([self.hws[i] for i in op.inputs], lambda node: base[index[node]])
        self.roi_base = self.base[-1][:, :, roi[0]: roi[1], roi[2]: roi[3]]
        self._schedules: dict[Box, tuple[list[Box], float]] = {}
        self.draws = 0
        self.pixels = 0
        self.last_groups = 0  # groups of blocks evaluated together by the last roi_outputs_many call

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

    def roi_outputs_many(self, blocks: list[Box], contents: list[torch.Tensor],
                         slack: float | None = None) -> list[torch.Tensor]:
        """:meth:`roi_outputs` of several blocks (all of one size), in groups that run together: a group computes
        every node on the union of its blocks' boxes, once for all its interventions stacked. Blocks join a group
        while the union costs at most ``slack`` more than their own boxes (default :data:`GROUP_SLACK` for the
        input's device: neighbouring blocks, and blocks near the ROI, whose boxes are its whole neighbourhood)."""
        if slack is None:
            slack = GROUP_SLACK.get(self.base[0].device.type, GROUP_SLACK_ACCELERATOR)
        order = sorted(range(len(blocks)), key=lambda g: (blocks[g][0], blocks[g][2]))
        groups: list[list[int]] = []
        union: list[Box] = []
        own = 0.0
        for g in order:
            comp, _ = self.schedule(blocks[g])
            work = float(sum(_area(c) for c in comp)) * contents[g].shape[0]
            if groups:
                merged = [_union(a, c) for a, c in zip(union, comp)]
                n = sum(contents[m].shape[0] for m in groups[-1]) + contents[g].shape[0]
                if float(sum(_area(c) for c in merged)) * n <= (1.0 + slack) * (own + work):
                    groups[-1].append(g)
                    union, own = merged, own + work
                    continue
            groups.append([g])
            union, own = list(comp), work
        self.last_groups = len(groups)
        out: list[torch.Tensor | None] = [None] * len(blocks)
        dtype = self.base[0].dtype
        for members in groups:
            comp = [EMPTY] * len(self.plan.ops)
            for g in members:
                comp = [_union(a, c) for a, c in zip(comp, self.schedule(blocks[g])[0])]
            x0 = self._inputs(comp[0], [blocks[g] for g in members], [contents[g].to(dtype) for g in members])
            y = self.plan.evaluate(self.base, self.hws, comp, x0)
            px = self.plan.conv_pixels(comp)
            start = 0
            for g in members:
                n = contents[g].shape[0]
                out[g] = y[start: start + n]
                start += n
                self.draws += n
                self.pixels += round(n * px)
        return out

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


#: How much more work (pixels computed, summed over the nodes) a group of blocks evaluated together may do than its
#: blocks alone, the price of running every operation once for the whole group: on the CPU the work itself
#: dominates, on a GPU the number of kernel launches.
GROUP_SLACK = {"cpu": 0.15}
GROUP_SLACK_ACCELERATOR = 1.0


def traced_reach(model: Any, x: torch.Tensor, roi: Box) -> tuple[Box | None, str, torch.Tensor | None]:
    """The box of the input ``x`` (1, C, h, w) that the ROI output (box ``roi`` of the output) can depend on at
    all, from the traced graph: every input pixel outside it lies beyond the reach of every path of the graph to
    the ROI. Returns ``(box, "ok", roi_base)`` with the traced graph's own baseline ROI output (to compare with the
    model's: a trace may miss what the model runs), or ``(None, reason, None)`` when the model is refused."""
    from .engine.runner import is_oom

    plan, why = build_plan(model, x)
    if plan is None:
        return None, why, None
    try:
        with torch.inference_mode():
            ev = FrameEvaluator(plan, x, roi)
            return ev.reach(), "ok", ev.roi_base
    except Exception as exc:  # noqa: BLE001 - a graph the plan cannot evaluate: not traced
        if is_oom(exc):
            raise
        return None, str(exc) if isinstance(exc, Refused) else f"{type(exc).__name__}: {exc}", None
