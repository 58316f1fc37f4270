"""What a model is, to tell whether running the engine on it changed it: per module, its ``__dict__`` bindings
(by identity), the containers held there (parameters, buffers, submodules, hooks, lists: their items by identity),
every tensor there (parameters, buffers, tensor attributes) bit for bit; and its output on a probe input."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def _bits(t: torch.Tensor) -> tuple:
    """The tensor's dtype, shape and raw bytes (NaN payloads and signed zeros included)."""
    flat = t.detach().to("cpu", copy=True).reshape(-1)
    return t.dtype, tuple(t.shape), flat.view(torch.uint8) if flat.element_size() > 1 else flat.to(torch.uint8)


def _items(v) -> list | None:
    if isinstance(v, dict):
        return list(v.items())
    if isinstance(v, (list, set, tuple)):
        return list(v)
    return None


def _same_items(a: list, b: list) -> bool:
    def same(x, y):
        if isinstance(x, tuple) and isinstance(y, tuple) and len(x) == len(y) == 2:  # a dict's (key, value)
            return x[0] == y[0] and x[1] is y[1]
        return x is y

    return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))


@dataclass
class ModelState:
    dicts: dict[str, dict]
    containers: dict[str, dict[str, list]]
    tensors: dict[str, tuple]
    output: torch.Tensor


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, m in model.named_modules(remove_duplicate=False):
        for k, v in m.__dict__.items():
            if isinstance(v, torch.Tensor):
                out[f"{name}.{k}"] = v
            elif k in ("_parameters", "_buffers"):
                out.update({f"{name}.{p}": t for p, t in v.items() if isinstance(t, torch.Tensor)})
    return out


def snapshot(model: nn.Module, probe: torch.Tensor) -> ModelState:
    """The model's state and its output on ``probe`` (run first: what ``forward`` writes is part of the state)."""
    with torch.no_grad():
        output = model(probe.clone())
    modules = dict(model.named_modules(remove_duplicate=False))
    return ModelState(
        dicts={n: dict(m.__dict__) for n, m in modules.items()},
        containers={n: {k: items for k, v in m.__dict__.items() if (items := _items(v)) is not None}
                    for n, m in modules.items()},
        tensors={k: _bits(t) for k, t in _tensors(model).items()},
        output=output.detach().clone(),
    )


def changes(model: nn.Module, before: ModelState, probe: torch.Tensor) -> list[str]:
    """What differs from ``before`` (empty when nothing does), the output on ``probe`` compared last, bit for bit."""
    found = []
    modules = dict(model.named_modules(remove_duplicate=False))
    if modules.keys() != before.dicts.keys():
        found.append(f"modules added or removed: {sorted(modules.keys() ^ before.dicts.keys())}")
    for name, d in before.dicts.items():
        m = modules.get(name)
        if m is None:
            continue
        now = m.__dict__
        if now.keys() != d.keys():
            found.append(f"{name or '<model>'}: attributes added {sorted(now.keys() - d.keys())}, "
                         f"removed {sorted(d.keys() - now.keys())}")
        found += [f"{name or '<model>'}.{k} rebound" for k, v in d.items() if k in now and now[k] is not v]
        for k, items in before.containers[name].items():
            if k in now and not _same_items(_items(now[k]) or [], items):
                found.append(f"{name or '<model>'}.{k} holds other items")
    tensors = _tensors(model)
    for k, bits in before.tensors.items():
        if k in tensors:
            b = _bits(tensors[k])
            if b[:2] != bits[:2] or not torch.equal(b[2], bits[2]):
                found.append(f"tensor {k} changed")
    with torch.no_grad():
        out = model(probe.clone())
    if out.shape != before.output.shape or not torch.equal(_bits(out)[2], _bits(before.output)[2]):
        found.append("the output on the probe changed")
    return found
