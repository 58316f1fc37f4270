"""The operations local evaluation supports, and the geometry each gets: :func:`_geometry` reads a traced node (a
module call, a function or a method with its arguments) and returns its :class:`~.geometry.Geometry`, or raises
:class:`~.capture.Refused` naming the node and why (a global operation, an argument computed in the graph, an option
the geometry does not cover). The tables list the supported pointwise operations, the in-place ones and those refused
as global, with the reason.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .capture import GlobalOp, Refused, _attr
from .region import Region, RegionGeometry
from .rewrite import Lifted, reduced_dim
from .geometry import (
    _PADDING_MODES, Gather, Geometry, Pointwise, Resample, Shuffle, Transposed, Window, _Bound, _pad_index, _pair,
)


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
#: Methods whose refusal in a symbolic trace comes from shape code, which a capture at a fixed shape resolves, or
#: that may be part of a region of tokens (window attention), which a capture reads (:mod:`.region`).
_SHAPE_METHODS = {"size", "view", "reshape", "expand", "repeat", "flatten", "permute", "transpose", "softmax",
                  "matmul", "bmm"}
#: Modules and functions that may be part of a region of tokens: refused in a symbolic trace, read in a capture.
_TOKEN_MODULES = (nn.LayerNorm, nn.MultiheadAttention, nn.Softmax, nn.Linear, nn.Flatten)
_TOKEN_FUNCS = {torch.softmax, F.softmax, torch.matmul, torch.bmm, torch.einsum, F.layer_norm, operator.matmul,
                F.scaled_dot_product_attention, F.linear, torch.flatten}
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
#: Reductions that are local when taken over the channel dim only (a LayerNorm over channels: ``x.mean(1)``).
_CHANNEL_REDUCTIONS = {"mean", "sum", "var", "std", "amax", "amin"}


def _over_channels(n) -> bool:
    """Node ``n`` (a reduction method) reduces over the channel dim of an NCHW tensor only, keeping it."""
    dim, keep = reduced_dim(n)
    return keep and dim in (1, -3)


_INPLACE_METHODS = {"add_", "sub_", "mul_", "div_", "clamp_", "relu_", "clamp_min_", "clamp_max_"}
_LIKE = {torch.ones_like, torch.zeros_like, torch.full_like}


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
                kind = Refused if isinstance(m, _TOKEN_MODULES) else GlobalOp
                raise kind(f"{n.target}: {type(m).__name__} is not a local operation ({reason})")
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
        if name == "type_as":  # called on the input (on a constant it is a constant: see plan._ops)
            return pointwise(lambda self_, other: self_.type_as(other)), False
        if name in _CHANNEL_REDUCTIONS and _over_channels(n):  # per pixel, across channels: local
            return pointwise(lambda self_, *a, **k: getattr(self_, name)(*a, **k)), False
        if name in _GLOBAL_METHODS:
            kind = Refused if name in _SHAPE_METHODS else GlobalOp
            raise kind(f"{n.name}: .{name}() is {_GLOBAL_METHODS[name]}")
        if name not in _POINTWISE_METHODS and name not in _INPLACE_METHODS:
            raise Refused(f"{n.name}: method .{name}() is not a supported local operation")
        method = name[:-1] if name in _INPLACE_METHODS else name
        return pointwise(lambda self_, *a, **k: getattr(self_, method)(*a, **k)), False

    fn = n.target
    name = getattr(fn, "__name__", str(fn))
    if isinstance(fn, Lifted):  # made pointwise by a rewrite (channel parts, channels-last regions)
        return pointwise(fn), False
    if isinstance(fn, Region):  # a region of tokens, run whole
        return RegionGeometry(n, deps, fn), True
    if fn in _GLOBAL_FUNCS:
        raise (Refused if fn in _TOKEN_FUNCS else GlobalOp)(f"{n.name}: {name} is {_GLOBAL_FUNCS[fn]}")
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
    if fn is F.batch_norm:  # a BatchNorm2d as a capture gives it: per channel with running statistics
        if arg(5, "training", False) or any(a in deps for a in args[1:] + list(kw.values())):
            raise Refused(f"{n.name}: batch_norm with batch statistics (training mode) is global")
        return pointwise(fn), False
    if fn in _LIKE:
        return pointwise(fn, depends=False), False
    if fn is torch.repeat_interleave and arg(2, "dim") in (1, -3) and isinstance(arg(1, "repeats"), int):
        return pointwise(fn), False  # every channel repeated in place (PLKSR's residual to the sub-pixels)
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
