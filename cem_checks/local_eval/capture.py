"""Capturing a model as a ``torch.fx`` graph: the trace itself, run under the engine's guard (:func:`trace`), the
reading of the graph's attributes, and :class:`Refused`, raised with the reason when a model or one of its
operations cannot be evaluated locally.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.fx
from torch import nn


class Refused(Exception):
    """The model has an operation that local evaluation does not support (the message says which and why)."""



def trace(model: Any) -> torch.fx.GraphModule:
    """The ``torch.fx`` graph of ``model``, traced symbolically. Raises :class:`Refused` (saying why) when ``model`` is
    not an ``nn.Module`` or the trace fails."""
    if not isinstance(model, nn.Module):
        raise Refused(f"not an nn.Module ({type(model).__name__})")
    from ..engine.guard import preserved

    try:  # a symbolic trace writes its proxies into attributes that forward assigns: restored after
        with warnings.catch_warnings(), preserved(model):
            warnings.simplefilter("ignore")
            return torch.fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: not supported
        raise Refused(f"torch.fx cannot trace the model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") \
            from exc


def _attr(gm, target: str) -> Any:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
