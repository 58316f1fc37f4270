"""Rewrites of a traced graph, before its plan is built, that turn three common ways of writing a local layer into
pointwise operations on NCHW images (the form the plan's geometries know):

- **channel parts**: ``a, b = x.chunk(2, dim=1)`` or ``torch.split(x, sizes, dim=1)`` (NAFNet's simple gate, gated
  convolutions): each part taken is one node, the channels of ``x`` it keeps;
- **channel assignment**: ``x[:, :k] = conv(x[:, :k])`` (partial convolutions): an out-of-place copy of ``x`` with
  those channels replaced, which every later reader of ``x`` reads instead;
- **channels-last regions**: ``x.permute(0, 2, 3, 1)``, then per-pixel operations over the last dim (``nn.Linear``,
  ``nn.LayerNorm`` over channels, activations, arithmetic with per-channel constants, a softmax or mean over
  channels, channel parts), then ``.permute(0, 3, 1, 2)`` back (ConvNeXt-style blocks): every node of the region is
  kept as its NCHW image, and each operation runs on its inputs permuted to channels-last and permutes its result
  back, which is the operation itself.

A channels-last region where anything else reads a channels-last node (a reshape to tokens, a mix with an NCHW
image, a spatial index) is not rewritten: its permutation is left for a region of tokens (:mod:`.region`) to take,
and nothing in it is left for the geometries to misread as NCHW.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .capture import Refused, _attr

_NHWC = (0, 2, 3, 1)
_NCHW = (0, 3, 1, 2)


class Lifted:
    """A pointwise operation made by a rewrite (called with the node's arguments, spatial ones as NCHW images)."""

    __name__ = "lifted"

    def __call__(self, *args, **kwargs):  # pragma: no cover - subclasses
        raise NotImplementedError


class Identity(Lifted):
    """A layout change that the NCHW form of its input already is (entering or leaving a channels-last region)."""

    __name__ = "identity"

    def __call__(self, x):
        return x


class Part(Lifted):
    """Part ``i`` of ``x.chunk(arg, dim)`` or ``x.split(arg, dim)``; ``dim`` a channel dim."""

    def __init__(self, how: str, arg: Any, dim: int, i: int):
        self.how, self.arg, self.dim, self.i = how, arg, dim, i
        self.__name__ = f"{how}_part_{i}"

    def __call__(self, x):
        return getattr(torch, self.how)(x, self.arg, self.dim)[self.i]


class SetChannels(Lifted):
    """``x`` with ``x[key] = v`` done on a copy (``key`` selects channels only)."""

    __name__ = "set_channels"

    def __init__(self, key: Any):
        self.key = key

    def __call__(self, x, v):
        y = x.clone()
        y[self.key] = v
        return y


class ChannelsLast(Lifted):
    """Operation ``fn`` of a channels-last region, on NCHW images: the arguments at ``spatial`` (positions of
    ``args`` and names of ``kwargs``) are permuted to channels-last, ``fn`` runs, and its result is permuted back."""

    def __init__(self, fn: Any, spatial: set, name: str):
        self.fn, self.spatial = fn, spatial
        self.__name__ = f"channels_last_{name}"

    def __call__(self, *args, **kwargs):
        args = [a.permute(*_NHWC) if k in self.spatial else a for k, a in enumerate(args)]
        kwargs = {k: a.permute(*_NHWC) if k in self.spatial else a for k, a in kwargs.items()}
        return self.fn(*args, **kwargs).permute(*_NCHW)


def _method(name: str):
    return lambda self_, *a, **k: getattr(self_, name)(*a, **k)


# ------------------------------------------------------------------------------------------------ reading nodes
def _perm(n) -> tuple | None:
    """The permutation of a ``permute`` node, or None."""
    if n.op == "call_method" and n.target == "permute":
        dims = n.args[1:] if len(n.args) > 2 else (n.args[1] if len(n.args) > 1 else n.kwargs.get("dims"))
    elif n.op == "call_function" and n.target is torch.permute:
        dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dims")
    else:
        return None
    dims = tuple(dims) if isinstance(dims, (tuple, list)) else None
    return tuple(d % 4 for d in dims) if dims is not None and len(dims) == 4 and all(isinstance(d, int) for d in dims) \
        else None


def _dim(n, pos: int, default: Any = None) -> Any:
    return n.args[pos] if len(n.args) > pos else n.kwargs.get("dim", default)


def reduced_dim(n) -> tuple[Any, bool]:
    """``(dim, keepdim)`` of a reduction method node (``x.mean(dim, keepdim=...)``): ``dim`` the one dim reduced,
    None when it reduces several or all."""
    dim = _dim(n, 1)
    keep = n.args[2] if len(n.args) > 2 and isinstance(n.args[2], bool) else n.kwargs.get("keepdim", False)
    dims = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
    return (dims[0] if len(dims) == 1 else None), keep is True


def _split_args(n) -> tuple[str, Any, Any] | None:
    """``(how, arg, dim)`` of a chunk / split node, or None."""
    if n.op == "call_method" and n.target in ("chunk", "split"):
        how = n.target
    elif n.op == "call_function" and n.target in (torch.chunk, torch.split):
        how = n.target.__name__
    else:
        return None
    key = "chunks" if how == "chunk" else "split_size_or_sections"
    arg = n.args[1] if len(n.args) > 1 else n.kwargs.get(key, n.kwargs.get("split_size"))
    return how, arg, _dim(n, 2, 0)


def _node_in(a: Any, nodes: set) -> bool:
    return isinstance(a, torch.fx.Node) and a in nodes


def _example(n) -> Any:
    return n.meta.get("example_value") if isinstance(n, torch.fx.Node) else None


def _channel_key(key: Any, nhwc: bool) -> bool:
    """Index ``key`` of a 4-D image selects (a slice of) channels only."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is None or isinstance(k, (torch.fx.Node, torch.Tensor, list)) for k in key) or key.count(Ellipsis) > 1:
        return False
    if Ellipsis in key:
        k = key.index(Ellipsis)
        key = key[:k] + (slice(None),) * (4 - len(key) + 1) + key[k + 1:]
    key = key + (slice(None),) * (4 - len(key))
    if len(key) != 4:
        return False
    chan = 3 if nhwc else 1
    return all(k == slice(None) for d, k in enumerate(key) if d != chan) and isinstance(key[chan], slice)


def _constant_ok(gm, a: Any) -> bool:
    """Argument ``a`` of a channels-last operation has no spatial extent (a number, or a tensor whose H and W dims,
    counted from the right as in broadcasting, are 1): it broadcasts over pixels as it does in the model."""
    v = a
    if isinstance(a, torch.fx.Node):
        v = _attr(gm, a.target) if a.op == "get_attr" else _example(a)
        if v is None:
            return False
    return not isinstance(v, torch.Tensor) or v.ndim < 3 or (v.shape[-3] == 1 and v.shape[-2] == 1)


# ------------------------------------------------------------------------------- per-pixel channels-last ops
_PIXEL_MODULES = (nn.Linear, nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
                  nn.Mish, nn.Hardswish, nn.Softplus, nn.ELU)
_PIXEL_FUNCS = {
    F.linear, F.gelu, F.relu, F.silu, F.leaky_relu, F.sigmoid, torch.sigmoid, torch.tanh, torch.relu, F.mish,
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pow, torch.add, torch.sub,
    torch.mul, torch.div, torch.sqrt, torch.rsqrt, torch.exp, torch.abs, torch.clamp,
}
_PIXEL_METHODS = {"add", "sub", "mul", "div", "neg", "sqrt", "rsqrt", "exp", "abs", "pow", "clamp", "sigmoid",
                  "tanh", "relu", "contiguous", "clone", "float", "type_as"}
_LAST_DIM_METHODS = {"mean", "sum", "var", "std", "amax", "amin", "softmax", "log_softmax"}


def _pixel_op(gm, n) -> tuple[Any, str] | None:
    """``(callable, name)`` of node ``n`` when it is a per-pixel operation on channels-last inputs, else None."""
    if n.op == "call_module":
        m = gm.get_submodule(n.target)
        if type(m) in _PIXEL_MODULES or (isinstance(m, nn.Dropout) and not m.training):
            return m, type(m).__name__
        if type(m) is nn.LayerNorm and len(m.normalized_shape) == 1:
            return m, "LayerNorm"
        return None
    if n.op == "call_function":
        fn = n.target
        if fn in _PIXEL_FUNCS:
            return fn, getattr(fn, "__name__", "op")
        if fn is F.layer_norm:
            shape = n.args[1] if len(n.args) > 1 else n.kwargs.get("normalized_shape")
            return (fn, "layer_norm") if isinstance(shape, (tuple, list)) and len(shape) == 1 else None
        if fn in (torch.softmax, F.softmax) and _dim(n, 1) in (-1, 3):
            return fn, "softmax"
        return None
    if n.op == "call_method":
        name = str(n.target)
        if name in _PIXEL_METHODS:
            return _method(name), name
        if name in _LAST_DIM_METHODS:
            dim, keep = reduced_dim(n)
            if dim in (-1, 3) and (keep or name.endswith("softmax")):
                return _method(name), name
    return None


# ------------------------------------------------------------------------------------------------- the passes
def _replace(graph, n, target, args, kwargs=None) -> torch.fx.Node:
    """A ``call_function`` of ``target`` in place of node ``n``, which every reader of ``n`` reads instead."""
    with graph.inserting_before(n):
        new = graph.call_function(target, tuple(args), dict(kwargs or {}))
    new.meta = dict(n.meta)
    n.replace_all_uses_with(new)
    graph.erase_node(n)
    return new


def _unlifted(gm) -> set[str]:
    """The permutations to channels-last whose region holds an operation that is not per pixel (a reshape to
    tokens, window attention): they are left as they are, for a region of tokens (:mod:`.region`) to take."""
    skip: set[str] = set()
    while True:
        bad = _probe(gm, skip)
        if bad <= skip:
            return skip
        skip |= bad


def _probe(gm, skip: set[str]) -> set[str]:
    """One pass of :func:`lift`'s reading of channels-last regions, changing nothing: the entering permutations
    (not in ``skip``) of the regions it would refuse."""
    spatial: set = set()
    origin: dict = {}  # a channels-last node: the permutations its region entered by
    bad: set[str] = set()
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            spatial.add(n)
            continue
        ins = [a for a in n.all_input_nodes if a in spatial]
        if not ins or n.op == "output":
            if n.op == "output":
                bad |= set().union(*(origin[a] for a in ins if a in origin))
            continue
        last = [a for a in ins if a in origin]
        spatial.add(n)
        perm = _perm(n)
        if perm == _NHWC and not last and n.name not in skip:
            origin[n] = {n.name}
            continue
        if not last or (perm == _NCHW and last == ins == [n.args[0]]):
            continue
        where = set().union(*(origin[a] for a in last))
        split = _split_args(n)
        ok = len(last) == len(ins) and (
            (split is not None and split[2] in (3, -1) and all(
                u.op == "call_function" and u.target is operator.getitem and isinstance(u.args[1], int)
                for u in n.users))
            or (n.op == "call_function" and n.target is operator.getitem and isinstance(n.args[1], int)
                and _split_args(n.args[0]) is not None)
            or (n.op == "call_function" and n.target is operator.getitem and _channel_key(n.args[1], nhwc=True))
            or _pixel_op(gm, n) is not None)
        if ok:
            leaves: list = []
            torch.fx.node.map_aggregate((n.args, n.kwargs), lambda a: leaves.append(a) or a)
            ok = all(_node_in(a, origin) or _constant_ok(gm, a) for a in leaves) or split is not None
        if ok:
            origin[n] = where
        else:
            bad |= where
    return bad


def lift(gm) -> None:
    """Apply the rewrites of this module to ``gm``'s graph in place (see the module docstring). A channels-last
    region with an operation that is not per pixel is left as it is (see :func:`_unlifted`)."""
    graph = gm.graph
    spatial: set = set()
    nhwc: set = set()
    skip = _unlifted(gm)

    for n in list(graph.nodes):
        if n.op == "placeholder":
            spatial.add(n)
            continue
        ins = [a for a in n.all_input_nodes if a in spatial]
        if not ins or n.op == "output":
            if n.op == "output" and any(a in nhwc for a in ins):
                raise Refused("the model returns a channels-last tensor; an NCHW image output is supported")
            continue
        last = [a for a in ins if a in nhwc]
        perm = _perm(n)
        if perm == _NHWC and not last and n.name not in skip:  # entering a channels-last region
            new = _replace(graph, n, Identity(), [n.args[0]])
            spatial.add(new)
            nhwc.add(new)
            continue
        if perm == _NCHW and last == ins == [n.args[0]]:  # leaving it
            spatial.add(_replace(graph, n, Identity(), [n.args[0]]))
            continue
        split = _split_args(n)
        if split is not None and ins == [n.args[0]]:
            how, arg, dim = split
            x = n.args[0]
            chan = (3, -1) if x in nhwc else (1, -3)
            users = list(n.users)
            if dim in chan and users and all(u.op == "call_function" and u.target is operator.getitem
                                              and isinstance(u.args[1], int) for u in users):
                for u in users:  # a part of channels-last x is taken along its last dim, by the wrapper
                    fn = Part(how, arg, -1 if x in nhwc else 1, u.args[1])
                    new = _replace(graph, u, ChannelsLast(fn, {0}, fn.__name__) if x in nhwc else fn, [x])
                    spatial.add(new)
                    if x in nhwc:
                        nhwc.add(new)
                graph.erase_node(n)
                continue
        if n.op == "call_function" and n.target is operator.setitem and n.args[0] in spatial:
            _set_channels(gm, n, spatial, nhwc)
            continue
        if last:
            _channels_last(gm, n, ins, last, spatial, nhwc)
            continue
        spatial.add(n)
    graph.lint()


def _channels_last(gm, n, ins, last, spatial, nhwc) -> None:
    """Node ``n`` reads the channels-last nodes ``last``: lifted when per pixel, else refused."""
    what = n.target if n.op == "call_module" else getattr(n.target, "__name__", str(n.target))
    if len(last) != len(ins):
        raise Refused(f"{n.name}: {what} mixes a channels-last tensor with an NCHW image")
    op = _pixel_op(gm, n)
    if n.op == "call_function" and n.target is operator.getitem and _channel_key(n.args[1], nhwc=True):
        op = (operator.getitem, "getitem")
    if op is None:
        raise Refused(f"{n.name}: {what} on a channels-last tensor is not a per-pixel operation this plan knows")
    leaves: list = []
    torch.fx.node.map_aggregate((n.args, n.kwargs), lambda a: leaves.append(a) or a)
    if not all(_node_in(a, nhwc) or _constant_ok(gm, a) for a in leaves):
        raise Refused(f"{n.name}: {what} on a channels-last tensor with an argument that varies over pixels")
    positions = {k for k, a in enumerate(n.args) if _node_in(a, nhwc)} | \
        {k for k, a in n.kwargs.items() if _node_in(a, nhwc)}
    if sum(1 for a in leaves if _node_in(a, nhwc)) != len(positions):  # one nested in a list would not be permuted
        raise Refused(f"{n.name}: {what} with a channels-last tensor inside a list or tuple")
    fn, name = op
    if n.op == "call_module":
        fn = lambda *a, m=fn, **k: m(*a, **k)  # noqa: E731
    new = _replace(gm.graph, n, ChannelsLast(fn, positions, name), n.args, n.kwargs)
    spatial.add(new)
    nhwc.add(new)


#: Operations whose result owns its memory (is no view of an argument): the only tensors a channel assignment is
#: rewritten on, so that no other node sees the assignment through shared memory.
_FRESH_FUNCS = {torch.conv2d, F.conv2d, torch.cat, operator.add, operator.sub, operator.mul, operator.truediv,
                torch.add, torch.sub, torch.mul, torch.div, F.gelu, F.silu, F.pixel_shuffle, torch.pixel_shuffle}


def _fresh(gm, x) -> bool:
    if x.op == "call_module":
        m = gm.get_submodule(x.target)
        return isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) or isinstance(m, (nn.GELU, nn.SiLU, nn.Mish)) or \
            (isinstance(m, (nn.ReLU, nn.LeakyReLU)) and not m.inplace)
    return x.op == "call_function" and (x.target in _FRESH_FUNCS or isinstance(x.target, SetChannels))


def _set_channels(gm, n, spatial, nhwc) -> None:
    """``x[key] = v`` (node ``n``) on a spatial ``x``: rewritten to a copy that later readers of ``x`` read."""
    graph = gm.graph
    x, key, v = n.args
    if x in nhwc or (isinstance(v, torch.fx.Node) and v in nhwc):
        raise Refused(f"{n.name}: an assignment into a channels-last tensor")
    if not _channel_key(key, nhwc=False):
        raise Refused(f"{n.name}: an assignment to {key!r} of an image (channels only are supported)")
    if not _fresh(gm, x):
        raise Refused(f"{n.name}: an assignment into {x.name}, which may share memory with another tensor")
    order = {m: k for k, m in enumerate(graph.nodes)}
    for u in x.users:  # a view taken before the assignment and read after it would see the assignment
        if u is not n and order[u] < order[n] and any(order[w] > order[n] for w in u.users):
            if not _fresh(gm, u):
                raise Refused(f"{n.name}: {u.name} reads {x.name} before the assignment and is read after it")
    with graph.inserting_before(n):
        new = graph.call_function(SetChannels(key), (x, v))
    later = [u for u in x.users if u is not n and u is not new and order[u] > order[n]]
    for u in later:
        u.replace_input_with(x, new)
    graph.erase_node(n)
    spatial.add(new)
