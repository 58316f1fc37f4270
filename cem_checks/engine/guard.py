"""The engine never changes the user's model: :func:`preserved` restores every attribute the engine's work touched.

A map runs the user's model many times, puts it in eval mode, moves it to the device, and traces or captures it
for local evaluation. Real models write attributes in ``forward`` (``self.mean = self.mean.type_as(x)``,
``self.feat = y``, a mask cached for the last input size), and a symbolic trace writes its proxies there. Inside
:func:`preserved`, all of that may happen; on exit every module reachable from the model is as it was:

- each module's ``__dict__`` holds the same keys bound to the same objects (attributes written in ``forward``
  removed or rebound), and the containers a module keeps there (its parameters, buffers, submodules, hooks: any
  dict, set or list value) hold what they held;
- every parameter, buffer and tensor attribute holds its values bit for bit: a tensor modified in place (its
  version counter moved) gets its values back from a copy taken on entry (on the CPU: the model's own device
  memory is not doubled), on its own device and dtype; one whose ``.data`` was rebound (re-parameterised
  convolutions write ``self.eval_conv.weight.data = ...`` in ``forward``, which moves no version counter) gets
  its own storage back.

The modules are those of an ``nn.Module``, or those a plain callable reaches: a bound method's object,
``functools.partial`` arguments, closure cells, the module-level names its code reads, and the attributes of a
callable object (one level deep).
"""

from __future__ import annotations

import functools
import types
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["preserved", "reachable_modules"]


def reachable_modules(model: Any) -> list[nn.Module]:
    """Every ``nn.Module`` (with its submodules) that ``model`` is or reaches (see the module docstring)."""
    roots: list[nn.Module] = []
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if id(obj) in seen or depth > 2:
            return
        seen.add(id(obj))
        if isinstance(obj, nn.Module):
            roots.append(obj)
            return
        if isinstance(obj, types.MethodType):
            visit(obj.__self__, depth)
            visit(obj.__func__, depth)
            return
        if isinstance(obj, functools.partial):
            for v in (obj.func, *obj.args, *obj.keywords.values()):
                visit(v, depth + 1)
            return
        if isinstance(obj, types.FunctionType):
            for cell in obj.__closure__ or ():
                try:
                    visit(cell.cell_contents, depth + 1)
                except ValueError:  # an empty cell
                    pass
            names = obj.__code__.co_names
            for name in names:
                if name in obj.__globals__:
                    v = obj.__globals__[name]
                    if isinstance(v, (nn.Module, types.FunctionType, functools.partial)):
                        visit(v, depth + 1)
            return
        if callable(obj) and hasattr(obj, "__dict__") and not isinstance(obj, type):
            for v in vars(obj).values():
                if isinstance(v, (nn.Module, types.FunctionType, types.MethodType, functools.partial)):
                    visit(v, depth + 1)

    visit(model, 0)
    modules: list[nn.Module] = []
    known: set[int] = set()
    for root in roots:
        for m in root.modules():
            if id(m) not in known:
                known.add(id(m))
                modules.append(m)
    return modules


def _copy_container(v: Any) -> Any:
    """A shallow copy of a dict, set or list value (None for anything else)."""
    if isinstance(v, dict):
        return list(v.items())
    if isinstance(v, (set, list)):
        return list(v)
    return None


def _same_items(v: Any, saved: list) -> bool:
    """Whether the container ``v`` holds the very objects ``saved`` listed (identity, in order for dicts/lists)."""
    items = list(v.items()) if isinstance(v, dict) else list(v)
    if len(items) != len(saved):
        return False
    if isinstance(v, set):
        return {id(x) for x in items} == {id(x) for x in saved}
    if isinstance(v, dict):
        return all(a[0] == b[0] and a[1] is b[1] for a, b in zip(items, saved))
    return all(a is b for a, b in zip(items, saved))


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # inference tensors keep no version counter
        return None


class _Snapshot:
    """What :func:`preserved` restores: per module, its ``__dict__`` bindings and containers; per tensor, its
    version counter and a CPU copy of its values."""

    def __init__(self, modules: list[nn.Module]):
        self.modules = modules
        self.dicts: list[dict[str, Any]] = []
        self.containers: list[dict[str, Any]] = []
        self.tensors: dict[int, tuple[torch.Tensor, int | None, torch.Tensor, torch.Tensor]] = {}
        for m in modules:
            d = dict(m.__dict__)
            self.dicts.append(d)
            self.containers.append({k: c for k, v in d.items() if (c := _copy_container(v)) is not None})
            for t in self._tensors_of(d):
                if id(t) not in self.tensors and not t.is_meta:
                    with torch.no_grad():  # the values, and the storage itself (an alias: no copy)
                        self.tensors[id(t)] = (t, _version(t), t.detach().to("cpu", copy=True), t.detach())

    @staticmethod
    def _tensors_of(d: dict[str, Any]) -> Iterator[torch.Tensor]:
        for k, v in d.items():
            if isinstance(v, torch.Tensor):
                yield v
            elif k in ("_parameters", "_buffers") and isinstance(v, dict):
                yield from (t for t in v.values() if isinstance(t, torch.Tensor))

    def restore(self) -> None:
        for m, d, containers in zip(self.modules, self.dicts, self.containers):
            now = m.__dict__
            for k in [k for k in now if k not in d]:
                del now[k]
            for k, v in d.items():
                if now.get(k, _MISSING) is not v:
                    now[k] = v
            for k, saved in containers.items():
                v = d[k]
                if not _same_items(v, saved):
                    v.clear()
                    if isinstance(v, dict):
                        v.update(saved)
                    elif isinstance(v, set):
                        v.update(saved)
                    else:
                        v.extend(saved)
        with torch.no_grad():
            for t, version, values, own in self.tensors.values():
                if _rebound(t, own):
                    t.data = own
                    if not torch.equal(own.cpu(), values):
                        own.copy_(values.to(own.device))
                    continue
                now = _version(t)
                if now != version or (now is None and not torch.equal(t.detach().cpu(), values)):
                    t.copy_(values.to(t.device))


def _rebound(t: torch.Tensor, own: torch.Tensor) -> bool:
    """Whether ``t.data`` no longer is the storage ``own`` aliased on entry."""
    if (t.shape, t.dtype, t.device, t.layout) != (own.shape, own.dtype, own.device, own.layout):
        return True
    try:
        return t.data_ptr() != own.data_ptr() or t.stride() != own.stride()
    except (RuntimeError, NotImplementedError):  # no strided storage (sparse layouts): the values decide
        return False


_MISSING = object()


@contextmanager
def preserved(model: Any) -> Iterator[None]:
    """Run the block, then restore every module ``model`` reaches as it was on entry (see the module docstring).
    Nested uses are cheap to reason about: each restores what it saw on entry."""
    snap = _Snapshot(reachable_modules(model))
    try:
        yield
    finally:
        snap.restore()
