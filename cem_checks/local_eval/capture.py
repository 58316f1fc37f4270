"""Capturing a model as a ``torch.fx`` graph: the symbolic trace, valid at any input shape (:func:`trace`), or the
graph the model really runs at one input shape (:func:`capture`, ``torch.compile``), each run under the engine's
guard; the reading of the graph's attributes; and :class:`Refused`, raised with the reason when a model or one of
its operations cannot be evaluated locally (:class:`GlobalOp` for an operation that is global at any shape).
"""

from __future__ import annotations

import logging
import warnings
import weakref
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn


class Refused(Exception):
    """The model has an operation that local evaluation does not support (the message says which and why)."""


class GlobalOp(Refused):
    """An operation that is global whatever the input's shape (a reduction, attention, a normalisation over the
    image): capturing the model at the job's shape would refuse it too."""


def trace(model: Any) -> torch.fx.GraphModule:
    """The ``torch.fx`` graph of ``model``, traced symbolically. Raises :class:`Refused` (saying why) when ``model`` is
    not an ``nn.Module`` or the trace fails."""
    if not isinstance(model, nn.Module):
        raise Refused(f"not an nn.Module ({type(model).__name__})")
    from ..engine.guard import preserved

    try:  # a symbolic trace writes its proxies into attributes that forward assigns: restored after
        with warnings.catch_warnings(), preserved(model):
            warnings.simplefilter("ignore")
            gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: not supported
        raise Refused(f"torch.fx cannot trace the model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") \
            from exc
    # an attribute that forward rebinds (``self.mean = self.mean.type_as(x)``) was copied as the proxy written into
    # it: the graph reads it before forward writes it, which is the model's own value (restored by now)
    for n in gm.graph.nodes:
        if n.op == "get_attr" and isinstance(_attr(gm, n.target), torch.fx.Proxy):
            owner, _, name = n.target.rpartition(".")
            setattr(gm.get_submodule(owner) if owner else gm, name, _attr(model, n.target))
    return gm


#: Functions a capture names by their internal aliases, mapped to the public ones the geometries know.
_CAPTURE_ALIASES = {torch._C._nn.pad: F.pad}


#: The code objects captures have compiled: their TorchDynamo cache entries are dropped after each capture.
_CAPTURED_CODES: "weakref.WeakSet" = weakref.WeakSet()


def _compiled_codes() -> set[int]:
    """The ids of the code objects TorchDynamo has compiled so far in this process (empty if it does not say)."""
    try:
        from torch._dynamo import convert_frame
    except ImportError:  # pragma: no cover - a torch without Dynamo
        return set()
    return set(getattr(convert_frame.input_codes, "seen_ids", ()))


def _forget_compiled(before: set[int]) -> None:
    """Drop TorchDynamo's cache entries of the code objects a capture compiled (new since ``before``, or compiled
    by an earlier capture). Dynamo keeps one entry per input shape and stops compiling a function after its
    recompile limit (8 by default): without this, the ninth capture of one model class in a process would fail,
    and each entry would keep its graph (and the model's weights) alive."""
    try:
        from torch._dynamo import convert_frame
        from torch._dynamo.eval_frame import reset_code
    except ImportError:  # pragma: no cover - a torch without these: entries stay (captures may stop at the limit)
        return
    for ref in list(getattr(convert_frame.input_codes, "seen", ())):
        code = ref()
        if code is not None and (id(code) not in before or code in _CAPTURED_CODES):
            _CAPTURED_CODES.add(code)
            reset_code(code)


def capture(model: Any, x: torch.Tensor) -> tuple[Any, str]:
    """The graph ``model`` really runs on an input of the shape of ``x``, captured by ``torch.compile``
    (TorchDynamo, ``fullgraph=True``, static shapes): sizes, shape code and data-independent control flow become
    constants; forward hooks, in-place updates and attribute writes are seen as they run. Returns ``(graph module,
    "ok")`` with one input (the image) and every other value (parameters, buffers, constants) as attributes, or
    ``(None, reason)`` when the model cannot be captured as one graph. The model is left as it was (the capture
    runs it once: whatever its forward writes is restored), and so is TorchDynamo's cache, except that a function
    both compiled by the user and captured here recompiles on its next compiled call."""
    from ..engine.guard import preserved

    graphs: list = []

    def backend(gm, example_inputs):
        graphs.append((gm, list(example_inputs)))
        return gm.forward

    x = x.detach().clone()  # a plain tensor (not an inference tensor) of the job's shape
    # torch's structured trace log records every step of the capture at DEBUG level, which a handler on the root
    # logger (pytest's log capture) would receive and format: silenced while capturing, then restored
    trace_log = logging.getLogger("torch.__trace")
    level = trace_log.level
    before = _compiled_codes()
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
        _forget_compiled(before)
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
    (out,) = [n for n in gm.graph.nodes if n.op == "output"]
    values = out.args[0] if isinstance(out.args[0], (tuple, list)) else (out.args[0],)
    if len(values) > 1:  # the return value beside what forward wrote (attributes): the one that is the output
        gm.graph.lint()
        gm.recompile()
        with warnings.catch_warnings(), preserved(model), torch.no_grad():
            warnings.simplefilter("ignore")
            want, got = model(x), gm(x)
        same = [k for k, v in enumerate(got) if isinstance(v, torch.Tensor) and isinstance(want, torch.Tensor)
                and v.shape == want.shape and torch.equal(v, want)]
        if len(same) != 1:
            return None, (f"the captured graph returns {len(values)} values, and {len(same)} of them equal the "
                          "model's output; one output image is supported")
        values = (values[same[0]],)
    out.args = (values[0],)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm, "ok"


def _attr(gm, target: str) -> Any:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
