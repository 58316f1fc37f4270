"""Boxes and the geometry of each kind of operation: how an output box maps to the input box it reads (a
convolution's halo, a stride, a pixel shuffle, a padding mode's reflected positions) and back, per axis, and how the
operation computes its output on a box from its inputs assembled on the boxes it reads.

:class:`Geometry` and its kinds (:class:`Pointwise`, :class:`Window`, :class:`Transposed`, :class:`Shuffle`,
:class:`Gather`, :class:`Resample`); :mod:`.ops` says which operation of a traced graph gets which.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), half-open, in the node's own pixels
Range = tuple[int, int]
EMPTY: Box = (0, 0, 0, 0)


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

    def fwd_box(self, j: int, b: Box, hw_in: tuple[int, int], hw_out: tuple[int, int]) -> Box:
        """The output box that a change of input ``j`` on box ``b`` can change (per axis by default)."""
        ry = self.fwd(j, (b[0], b[1]), hw_in[0], hw_out[0], 0)
        rx = self.fwd(j, (b[2], b[3]), hw_in[1], hw_out[1], 1)
        return (ry[0], ry[1], rx[0], rx[1])

    def bwd_box(self, j: int, b: Box, hw_in: tuple[int, int], hw_out: tuple[int, int]) -> Box:
        """The box of input ``j`` that the output on box ``b`` depends on (per axis by default)."""
        ry = self.bwd(j, (b[0], b[1]), hw_in[0], hw_out[0], 0)
        rx = self.bwd(j, (b[2], b[3]), hw_in[1], hw_out[1], 1)
        return (ry[0], ry[1], rx[0], rx[1])

    def read_box(self, j: int, b: Box, hw_in: tuple[int, int], hw_out: tuple[int, int]) -> Box:
        """The box of input ``j`` that :meth:`run` reads to compute the output on box ``b``: the box it depends on,
        unless the operation needs more of its input to run (a region runs on its whole input)."""
        return self.bwd_box(j, b, hw_in, hw_out)

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
