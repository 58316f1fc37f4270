"""Dependency boxes of a captured graph: for every element of every tensor the graph computes, the box of input
pixels its value can depend on, found by running the graph on boxes instead of values (an abstract interpretation).

A tensor's boxes are one float tensor ``P`` of shape ``(4, *shape)``: ``P[0] = y0``, ``P[1] = -y1``, ``P[2] = x0``,
``P[3] = -x1`` (the box ``[y0, y1) x [x0, x1)`` of input pixels), with the high ends negated so that the union of
boxes is an element-wise minimum everywhere and the empty box (no dependency) is ``+inf`` in all four. Each operation
maps its arguments' boxes to its result's:

- data movement (views, reshapes, permutations, ``roll``, indexing with constants, ``cat``, padding, pixel
  shuffles, nearest resampling) runs on each of the four planes as on values (padding fills the empty box);
- element-wise operations take the union of their arguments' boxes, broadcast as the operation broadcasts;
- operations that mix along dims (softmax, layer norms, ``F.normalize``, reductions, ``linear`` over the last
  dim, matrix products, attention) take the union along those dims;
- convolutions and pooling take the union over their window (and over channels, for a convolution);
- any other operation is taken to mix everything: each element of its result gets the union of all its
  arguments' boxes.

Every rule gives a superset of the true dependency, so the boxes are exact or larger, never smaller.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .capture import Refused, _attr
from .geometry import _pair

INF = float("inf")

_MOVE = {"view", "reshape", "flatten", "unflatten", "permute", "transpose", "contiguous", "clone", "roll",
         "squeeze", "unsqueeze", "expand", "expand_as", "view_as", "reshape_as", "repeat", "tile", "flip", "narrow",
         "split", "chunk", "unbind", "movedim", "moveaxis", "swapaxes", "swapdims", "getitem", "select",
         "index_select", "t", "detach", "pixel_shuffle", "pixel_unshuffle", "split_with_sizes", "tensor_split"}
_CONCAT = {"cat", "concat", "concatenate", "stack"}
_POINT = {"add", "sub", "mul", "truediv", "div", "neg", "pos", "pow", "iadd", "isub", "imul", "itruediv", "relu",
          "gelu", "silu", "sigmoid", "tanh", "leaky_relu", "elu", "hardtanh", "softplus", "mish", "hardswish",
          "hardsigmoid", "relu6", "dropout", "clamp", "clip", "clamp_min", "clamp_max", "where", "masked_fill",
          "exp", "log", "sqrt", "rsqrt", "abs", "sign", "float", "half", "to", "type", "type_as", "sin", "cos",
          "erf", "reciprocal", "square", "maximum", "minimum", "lerp", "addcmul", "prelu", "floordiv", "mod",
          "floor_divide", "batch_norm", "copy"}
_SHAPE_ONLY = {"ones_like", "zeros_like", "full_like", "empty_like", "new_zeros", "new_ones", "new_full",
               "new_empty", "size", "dim", "numel"}
_SOFTMAX = {"softmax", "log_softmax", "normalize", "cumsum"}
_REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "var", "std", "norm", "prod", "logsumexp", "argmax",
           "argmin", "all", "any"}
_POINT_MODULES = (nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
                  nn.Mish, nn.Hardswish, nn.Softplus, nn.ELU, nn.Dropout, nn.Dropout2d, nn.BatchNorm2d)


#: Data movements that read their second argument for its shape only.
_AS = {"expand_as", "view_as", "reshape_as"}


class _Mixes(Exception):
    """A data movement whose positions depend on the input (an index computed from it)."""


def _inplace(n, name: str) -> bool:
    return (n.op == "call_method" and name.endswith("_") and not name.startswith("_")) or \
        name in ("iadd", "isub", "imul", "itruediv")


def _viewed(x) -> bool:
    """``x`` may share memory with another node: it is a data movement's result, or one reads it."""
    return (x.op in ("call_method", "call_function") and _name(x) in _MOVE) or \
        any(u.op != "output" and _name(u) in _MOVE for u in x.users)


def _name(n) -> str:
    if n.op == "call_method":
        return str(n.target)
    return getattr(n.target, "__name__", str(n.target)).lstrip("_")


def _shape(n) -> tuple[int, ...] | None:
    v = n.meta.get("example_value") if isinstance(n, torch.fx.Node) else None
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def empty(shape) -> torch.Tensor:
    return torch.full((4,) + tuple(shape), INF)


def pixels(shape) -> torch.Tensor:
    """The boxes of an image (..., H, W) of input pixels: each element depends on its own pixel."""
    H, W = shape[-2], shape[-1]
    y = torch.arange(H, dtype=torch.float32).view(H, 1).expand(H, W)
    x = torch.arange(W, dtype=torch.float32).view(1, W).expand(H, W)
    return torch.stack([y, -(y + 1), x, -(x + 1)]).view((4,) + (1,) * (len(shape) - 2) + (H, W)) \
        .expand((4,) + tuple(shape)).contiguous()


def _bcast(p: torch.Tensor, shape) -> torch.Tensor:
    extra = len(shape) - (p.ndim - 1)
    if extra > 0:
        p = p.reshape((4,) + (1,) * extra + tuple(p.shape[1:]))
    return p.expand((4,) + tuple(shape))


def union(ps: list[torch.Tensor], shape) -> torch.Tensor:
    out = _bcast(ps[0], shape)
    for p in ps[1:]:
        out = torch.minimum(out, _bcast(p, shape))
    return out.contiguous()


def _along(p: torch.Tensor, dims, shape) -> torch.Tensor:
    """The union of ``p`` along ``dims`` (of the tensor, not counting the plane dim), broadcast back to ``shape``."""
    nd = p.ndim - 1
    dims = [d % nd + 1 for d in dims]
    return _bcast(p.amin(dim=dims, keepdim=True) if dims else p, shape).contiguous()


def _everything(ps: list[torch.Tensor], shape) -> torch.Tensor:
    lo = torch.stack([p.reshape(4, -1).amin(dim=1) for p in ps]).amin(dim=0)
    return lo.view((4,) + (1,) * len(shape)).expand((4,) + tuple(shape)).contiguous()


class BoxInterpreter:
    """Runs graph module ``gm`` on boxes. ``values``: the real values of its constant placeholders (by name);
    ``boxes``: the boxes of its spatial placeholders (by name; absent ones depend on nothing). :meth:`run` returns
    the boxes of the graph's output, and sets ``first_full``, the first node every element of which depends on the
    whole input of shape ``hw`` (or None)."""

    def __init__(self, gm, boxes: dict[str, torch.Tensor], values: dict[str, Any], hw: tuple[int, int]):
        self.gm, self.boxes, self.values, self.hw = gm, boxes, values, hw
        self.first_full: str | None = None

    def run(self) -> torch.Tensor | None:
        nodes = list(self.gm.graph.nodes)
        last = {}
        for k, n in enumerate(nodes):
            for a in n.all_input_nodes:
                last[a] = k
        box: dict[Any, Any] = {}
        val: dict[Any, Any] = {}
        for k, n in enumerate(nodes):
            if n.op == "placeholder":
                box[n] = self.boxes.get(n.name)
                val[n] = self.values.get(n.name)
            elif n.op == "get_attr":
                box[n], val[n] = None, _attr(self.gm, n.target)
            elif n.op == "output":
                return box[n.args[0]]
            elif all(box.get(a) is None for a in n.all_input_nodes):
                box[n], val[n] = None, self._value(n, val)
            else:
                try:
                    box[n] = self._rule(n, box, val)
                except Refused:
                    raise
                except Exception as exc:  # noqa: BLE001 - arguments no rule reads: refused, naming the node
                    raise Refused(f"{n.name} ({_name(n)}): its dependency boxes cannot be computed "
                                  f"({type(exc).__name__}: {exc})") from exc
                val[n] = None
                self._check_full(n, box[n])
            for a in n.all_input_nodes:  # free what no later node reads
                if last.get(a) == k:
                    box.pop(a, None)
                    val.pop(a, None)
        return None

    def _value(self, n, val):
        """The real value of a node that depends on no input pixel (a mask, a bias, a table lookup)."""
        if any(val.get(a) is None and _shape(a) is not None for a in n.all_input_nodes):
            return None  # made from the shape of a spatial tensor (ones_like(x)): its value is not needed here
        args = torch.fx.node.map_aggregate(n.args, lambda a: val.get(a) if isinstance(a, torch.fx.Node) else a)
        kwargs = torch.fx.node.map_aggregate(n.kwargs, lambda a: val.get(a) if isinstance(a, torch.fx.Node) else a)
        if n.op == "call_module":
            return self.gm.get_submodule(n.target)(*args, **kwargs)
        if n.op == "call_method":
            return getattr(args[0], n.target)(*args[1:], **kwargs)
        return n.target(*args, **kwargs)

    def _check_full(self, n, p) -> None:
        if self.first_full is not None or not isinstance(p, torch.Tensor) or p.numel() == 0:
            return
        H, W = self.hw
        if p[0].max() <= 0 and p[1].max() <= -H and p[2].max() <= 0 and p[3].max() <= -W:
            what = n.target if n.op == "call_module" else _name(n)
            self.first_full = f"{n.name} ({what})"

    # ------------------------------------------------------------------------------------------------ rules
    def _rule(self, n, box, val) -> Any:
        name = _name(n)
        shape = _shape(n)
        x = self._arg(n, 0, "input")
        x = x if isinstance(x, torch.fx.Node) else None
        spatial = [box[a] for a in n.all_input_nodes if box.get(a) is not None]
        planes = [p for p in spatial if isinstance(p, torch.Tensor)]
        if name in _SHAPE_ONLY:
            return None
        if n.op == "call_function" and n.target is operator.getitem and isinstance(box.get(x), (tuple, list)):
            return box[x][n.args[1]]
        if n.op == "call_module":
            return self._module(n, box, val, shape, planes)
        if shape is None and not (name in _MOVE or name == "max" or name == "min"):
            return self._everything_of(n, planes)
        if name in _MOVE or name in _CONCAT or (name == "pad" and n.op == "call_function") or \
                (name == "interpolate" and self._arg(n, 3, "mode", "nearest") in ("nearest", "nearest-exact")):
            try:
                return self._per_plane(n, box, val, name)
            except _Mixes:
                return self._everything_of(n, planes)
        if name == "setitem":
            return self._setitem(n, box, val)
        if _inplace(n, name):
            raise Refused(f"{n.name}: in-place {name} inside a region of tokens")
        if name.rstrip("_") in _POINT:  # (in-place methods are refused above; torch.relu_(x) keeps x's boxes)
            return union(planes, shape)
        if name in _SOFTMAX:
            return _along(box[x], [self._arg(n, 1, "dim", 1 if name == "normalize" else -1)], shape)
        if name == "layer_norm" or name == "rms_norm":
            ns = self._arg(n, 1, "normalized_shape")
            k = len(ns) if isinstance(ns, (tuple, list, torch.Size)) else 1
            return _along(box[x], list(range(-k, 0)), shape)
        if name in ("group_norm", "instance_norm"):
            p = box[x]
            return _along(p, list(range(1, p.ndim - 1)), shape)
        if name in _REDUCE and box.get(x) is not None:
            return self._reduce(n, box[x])
        if name == "linear" and box.get(x) is not None and len(spatial) == 1:
            return _along(box[x], [-1], shape)
        if name in ("matmul", "bmm") and len(shape) >= 2 and len(n.args) == 2 and \
                all(isinstance(a, torch.fx.Node) and len(_shape(a) or ()) >= 2 for a in n.args):
            a, b = box.get(x), box.get(n.args[1])  # row i of a and column j of b make element (i, j)
            ps = ([a.amin(dim=-1, keepdim=True)] if a is not None else []) + \
                 ([b.amin(dim=-2, keepdim=True)] if b is not None else [])
            return union(ps, shape)
        if name == "scaled_dot_product_attention":  # query row i, every key and value, mask row i
            q, k_, v = (box.get(a) if isinstance(a, torch.fx.Node) else None for a in n.args[:3])
            ps = ([q.amin(dim=-1, keepdim=True)] if q is not None else []) + \
                 [p.amin(dim=(-1, -2), keepdim=True) for p in (k_, v) if p is not None]
            mask = n.kwargs.get("attn_mask", n.args[3] if len(n.args) > 3 else None)
            if isinstance(mask, torch.fx.Node) and box.get(mask) is not None:
                ps.append(box[mask].amin(dim=-1, keepdim=True))
            return union(ps, shape)
        if name in ("conv2d", "avg_pool2d", "max_pool2d") and box.get(x) is not None and len(spatial) == 1:
            return self._window(n, name, box[x], shape)
        return self._everything_of(n, planes)

    def _everything_of(self, n, planes):
        shape = _shape(n)
        if not planes:
            return None
        if shape is None:  # a tuple of tensors: each gets everything
            v = n.meta.get("example_value")
            if isinstance(v, (tuple, list)):
                return type(v)(_everything(planes, t.shape) if isinstance(t, torch.Tensor) else None for t in v)
            return None
        return _everything(planes, shape)

    def _arg(self, n, pos: int, key: str, default=None):
        return n.args[pos] if len(n.args) > pos else n.kwargs.get(key, default)

    def _module(self, n, box, val, shape, planes):
        m = self.gm.get_submodule(n.target)
        p = box.get(n.args[0]) if n.args else None
        if isinstance(m, _POINT_MODULES) and not (getattr(m, "training", False) and isinstance(m, nn.BatchNorm2d)):
            return union(planes, shape)
        if p is not None and len(planes) == 1:
            if isinstance(m, nn.Linear):
                return _along(p, [-1], shape)
            if isinstance(m, nn.LayerNorm):
                return _along(p, list(range(-len(m.normalized_shape), 0)), shape)
            if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
                return _along(p, [m.dim if m.dim is not None else -1], shape)
            if isinstance(m, nn.Conv2d) and type(m).forward is nn.Conv2d.forward and m.padding != "same":
                return self._conv_window(p, shape, m.kernel_size, m.stride, m.padding, m.dilation,
                                         "zeros" if m.padding_mode == "zeros" else m.padding_mode, True)
        return self._everything_of(n, planes)

    def _per_plane(self, n, box, val, name) -> Any:
        """A data-movement operation run on each of the four planes; constants padded in (``cat`` with a constant,
        ``F.pad``) are the empty box."""
        concat = name in _CONCAT

        def data(a):
            if isinstance(a, torch.fx.Node):
                return box[a] if box.get(a) is not None else empty(_shape(a))
            return a

        def other(a):
            if isinstance(a, torch.fx.Node):
                if box.get(a) is not None:
                    if name not in _AS:  # an index computed from the input: its values are not known here
                        raise _Mixes()
                    return torch.empty(_shape(a))  # read for its shape only (expand_as)
                return val.get(a)
            return a

        if concat:
            items = n.args[0] if n.args else n.kwargs["tensors"]
            parts = [data(a) for a in items]
            rest_args = tuple(other(a) for a in n.args[1:])
            kwargs = {k: other(v) for k, v in n.kwargs.items() if k != "tensors"}
            out = [n.target([p[k] for p in parts], *rest_args, **kwargs) for k in range(4)]
        else:
            x = data(self._arg(n, 0, "input"))
            rest_args = torch.fx.node.map_aggregate(n.args[1:], other)
            kwargs = torch.fx.node.map_aggregate(dict(n.kwargs), other)
            if name == "pad" and self._arg(n, 2, "mode", "constant") == "constant":  # the padding is no pixel
                pads = rest_args[0] if rest_args else kwargs["pad"]
                return torch.stack([F.pad(x[k], pads, mode="constant", value=INF) for k in range(4)])
            if n.op == "call_method":
                out = [getattr(x[k], n.target)(*rest_args, **kwargs) for k in range(4)]
            else:
                out = [n.target(x[k], *rest_args, **kwargs) for k in range(4)]
        if isinstance(out[0], (tuple, list)):
            return type(out[0])(torch.stack([o[i] for o in out]) for i in range(len(out[0])))
        if not isinstance(out[0], torch.Tensor):
            raise Refused(f"{n.name}: {name} gives {type(out[0]).__name__}")
        return torch.stack(out)

    def _setitem(self, n, box, val) -> None:
        """``x[key] = v``: the boxes of ``x`` (the node itself, read by every later reader) get ``v``'s at ``key``."""
        x, key, v = n.args
        if _viewed(x):
            raise Refused(f"{n.name}: an assignment into {x.name}, which may share memory with another tensor")
        if isinstance(key, torch.fx.Node) or (isinstance(key, tuple) and any(
                isinstance(k, torch.fx.Node) and box.get(k) is not None for k in key)):
            raise Refused(f"{n.name}: an assignment at positions computed from the input")
        key = torch.fx.node.map_aggregate(key, lambda a: val.get(a) if isinstance(a, torch.fx.Node) else a)
        xp = (box[x] if box.get(x) is not None else empty(_shape(x))).clone()
        src = box.get(v) if isinstance(v, torch.fx.Node) else None
        for k in range(4):
            xp[k][key] = src[k] if src is not None else INF
        box[x] = xp
        return None

    def _reduce(self, n, p) -> Any:
        dim = self._arg(n, 1, "dim", None)
        dims = list(range(p.ndim - 1)) if dim is None else list(dim) if isinstance(dim, (tuple, list)) else [dim]
        if not all(isinstance(d, int) for d in dims):
            return self._everything_of(n, [p])
        nd = p.ndim - 1
        r = p.amin(dim=[d % nd + 1 for d in dims], keepdim=True)
        v = n.meta.get("example_value")
        if isinstance(v, (tuple, list)):  # (values, indices)
            return type(v)(r.reshape((4,) + tuple(t.shape)) for t in v)
        return r.reshape((4,) + tuple(v.shape))

    def _window(self, n, name, p, shape) -> torch.Tensor:
        if name == "conv2d":
            w = self._arg(n, 1, "weight")
            w = _attr(self.gm, w.target) if isinstance(w, torch.fx.Node) and w.op == "get_attr" else None
            if w is None:
                raise Refused(f"{n.name}: conv2d with a weight that is not a constant")
            pad = self._arg(n, 4, "padding", 0)
            if isinstance(pad, str):
                raise Refused(f"{n.name}: conv2d with padding {pad!r}")
            return self._conv_window(p, shape, tuple(w.shape[-2:]), self._arg(n, 3, "stride", 1), pad,
                                     self._arg(n, 5, "dilation", 1), "zeros", True)
        k = self._arg(n, 1, "kernel_size")
        stride = self._arg(n, 2, "stride", None) or k
        dil = self._arg(n, 4, "dilation", 1) if name == "max_pool2d" else 1
        ceil = self._arg(n, 5 if name == "max_pool2d" else 4, "ceil_mode", False)
        return self._conv_window(p, shape, k, stride, self._arg(n, 3, "padding", 0), dil, "zeros", False, ceil)

    @staticmethod
    def _conv_window(p, shape, kernel, stride, padding, dilation, mode, mix_channels, ceil=False) -> torch.Tensor:
        """A sliding window over the last two dims: the union over the window (and the channels), padding read as
        the empty box (zeros) or as the positions a padding mode copies."""
        if mix_channels:
            p = p.amin(dim=-3, keepdim=True)
        lead = p.shape[:-2]
        q = p.reshape((-1, 1) + tuple(p.shape[-2:]))
        ph, pw = _pair(padding)
        if ph or pw:
            q = F.pad(q, (pw, pw, ph, ph), value=INF) if mode == "zeros" else F.pad(q, (pw, pw, ph, ph), mode=mode)
        q = -F.max_pool2d(-q, _pair(kernel), _pair(stride), 0, _pair(dilation), ceil_mode=bool(ceil))
        q = q.reshape(tuple(lead) + tuple(q.shape[-2:]))
        return _bcast(q, shape).contiguous()
