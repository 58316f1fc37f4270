"""The trace at a shape (:func:`shaped_trace`): ``torch.fx``'s symbolic trace, with every traced value also
computed on the job's input as the trace goes. Sizes are then plain numbers: ``n, c, h, w = x.shape``, padding
to a multiple, a noise map built at ``(n, 1, h // 2, w // 2)``, ``F.interpolate(size=(2 * h, 2 * w))`` and
branches on sizes trace as the model runs them at that shape, and every node knows its value's shape (what the
regions of tokens read). It costs one forward pass and no compiler; TorchDynamo (:func:`~.capture.capture`)
remains for what it cannot read.

Only sizes become numbers: a traced value that reads the input's content into Python (``.item()``, ``.tolist()``,
a branch on a tensor) is refused. The trace runs the modules' ``forward`` and not the hooks of the modules it
traces through, so the plan it makes is used only once its output has been found equal to the model's
(:func:`~.plan.build_plan`).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any

import torch
import torch.fx

from .capture import Refused, _attr

#: Attributes of a tensor that read its shape, type or place, not its values.
_SHAPE_ATTRS = {"shape", "ndim", "dtype", "device", "is_cuda", "layout", "is_sparse", "is_quantized"}
#: Methods of a tensor that return its shape, type or place.
_SHAPE_METHODS = {"size", "dim", "ndimension", "numel", "nelement", "element_size", "get_device", "is_contiguous",
                  "stride", "is_floating_point", "is_complex", "type"}


@contextmanager
def _untraced():
    """While tracing, ``nn.Module.__call__`` and ``__getattr__`` record into the graph: the real ones, to compute
    values."""
    from torch.fx import _symbolic_trace

    call, getattr_ = torch.nn.Module.__call__, torch.nn.Module.__getattr__
    torch.nn.Module.__call__ = _symbolic_trace._orig_module_call
    torch.nn.Module.__getattr__ = _symbolic_trace._orig_module_getattr
    try:
        yield
    finally:
        torch.nn.Module.__call__, torch.nn.Module.__getattr__ = call, getattr_


def _tensors_in(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return True
    return isinstance(v, (tuple, list)) and any(_tensors_in(u) for u in v)


def _meta(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return torch.empty(v.shape, dtype=v.dtype, device="meta")
    if isinstance(v, (tuple, list)):
        return type(v)(_meta(u) for u in v)
    return v


class _ValueProxy(torch.fx.Proxy):
    """A proxy whose shape, type, length and items are those of its value."""

    def _value(self) -> Any:
        return self.__dict__["tracer"].values.get(self.__dict__["node"])

    def __getattr__(self, k):
        if k in _SHAPE_ATTRS and "node" in self.__dict__ and isinstance(self._value(), torch.Tensor):
            return getattr(self._value(), k)
        return super().__getattr__(k)

    def __len__(self):
        return len(self._value())

    def __iter__(self):
        return iter([self[i] for i in range(len(self._value()))])


class _ShapedTracer(torch.fx.Tracer):
    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.x = x
        self.values: dict[Any, Any] = {}
        self.placeholders = 0

    def proxy(self, node):
        return _ValueProxy(node, self)

    def _of(self, a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            if a in self.values:
                return self.values[a]
            if a.op == "get_attr":  # a constant the trace made (create_arg), or a parameter
                with _untraced():
                    return _attr(self.root, a.target)
            raise Refused(f"{a.name}: no value")
        return a

    def _run(self, kind, target, node) -> Any:
        if kind == "get_attr":
            return _attr(self.root, target)
        a = torch.fx.node.map_aggregate(node.args, self._of)
        k = torch.fx.node.map_aggregate(node.kwargs, self._of)
        if kind == "call_module":  # the module called as the model calls it (hooks and all)
            return self.root.get_submodule(target)(*a, **k)
        if kind == "call_method":
            return getattr(a[0], target)(*a[1:], **k)
        return target(*a, **k)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        node = proxy.node
        if kind == "placeholder":
            self.placeholders += 1
            if self.placeholders > 1:
                raise Refused("the model's forward takes more than the image")
            v = self.x
        else:
            with _untraced():
                v = self._run(kind, target, node)
        if not _tensors_in(v) and kind != "get_attr":
            if not (kind == "call_method" and target in _SHAPE_METHODS) and \
                    not (kind == "call_function" and target is getattr and node.args[1] in _SHAPE_ATTRS):
                what = target if isinstance(target, str) else getattr(target, "__name__", str(target))
                raise Refused(f"{node.name}: {what} reads the input's values into Python ({type(v).__name__})")
            self.graph.erase_node(node)
            return v  # a size: a number from now on
        self.values[node] = v
        node.meta["example_value"] = _meta(v)
        return proxy


def shaped_trace(model: Any, x: torch.Tensor) -> tuple[Any, str]:
    """The graph of ``model`` traced at the shape of ``x`` (see the module docstring): ``(graph module, "ok")``,
    whose constants are those the model held while tracing, or ``(None, reason)``. Runs under the engine's guard:
    the model is left as it was."""
    from ..engine.guard import preserved

    if not isinstance(model, torch.nn.Module):
        return None, f"not an nn.Module ({type(model).__name__})"
    tracer = _ShapedTracer(x.detach().clone())
    try:
        with warnings.catch_warnings(), preserved(model), torch.no_grad():
            warnings.simplefilter("ignore")
            graph = tracer.trace(model)
            # the attributes the graph reads, as they were when read (forward may rebind them afterwards)
            attrs: dict[str, Any] = {}
            for n in graph.nodes:
                if n.op == "get_attr":
                    attrs[n.target] = tracer.values.get(n, None)
                    if attrs[n.target] is None:
                        with _untraced():
                            attrs[n.target] = _attr(tracer.root, n.target)
                elif n.op == "call_module":
                    attrs[n.target] = tracer.root.get_submodule(n.target)
            gm = torch.fx.GraphModule(attrs, graph)
    except Refused as exc:
        return None, f"traced at {tuple(x.shape)}: {exc}"
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: not read this way
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return None, f"traced at {tuple(x.shape)}: {type(exc).__name__}: {first}"
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm, "ok"
