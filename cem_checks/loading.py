"""Loading a model from a checkpoint file: :func:`load_model`.

Formats, detected from the file's content (not its suffix):

===========================  ===================================================================================
format                       how it is loaded
===========================  ===================================================================================
TorchScript (``jit.save``)   ``torch.jit.load``: the archive holds the architecture; ``arch`` must be ``None``.
safetensors                  ``safetensors.torch.load_file`` (optional extra ``pytest-cem[safetensors]``), then
                             a state_dict as below.
``torch.save`` of a          ``torch.load(weights_only=True)`` (tensors and containers only: no code runs), then
state_dict                   built with ``arch``, or with spandrel when ``arch`` is ``None`` and spandrel is
                             installed (optional extra ``pytest-cem[spandrel]``).
``torch.save`` of a module   needs full unpickling, which runs whatever code the file names: refused with
(or any other pickle)        :class:`~cem_checks.errors.UntrustedCheckpointError` unless ``trust=True``.
===========================  ===================================================================================

A state_dict may be wrapped in a dict under one of :data:`STATE_DICT_KEYS` (e.g. ``{"params_ema": ...}``), and a
``module.`` prefix on every key (left by ``nn.DataParallel``) is removed.

``arch`` builds the module for a state_dict: a class or object with a ``from_state_dict(state_dict)`` method
(e.g. :class:`cem_checks.models.DnCNN`), an ``nn.Module`` instance to load the weights into, a factory called
without arguments that returns an ``nn.Module``, an import string naming one of these (``"mypkg.nets:PlainSR"``
or ``"path/to/nets.py:build"``, see :func:`resolve_arch`), or the string ``"spandrel"``. Weights are loaded
strictly.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import re
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, UntrustedCheckpointError, describe_value

#: Keys under which training frameworks commonly store the state_dict, in the order they are tried.
STATE_DICT_KEYS = ("params_ema", "params", "state_dict", "model_state_dict", "model", "net", "generator")
#: Formats :func:`detect_format` reports.
FORMATS = ("torchscript", "safetensors", "torch")

__all__ = ["FORMATS", "STATE_DICT_KEYS", "detect_format", "load_model", "load_state_dict", "resolve_arch",
           "spandrel_unavailable"]

_TRUST_HINT = (
    "Only if you trust whoever made the file, pass trust=True to load_model / cem_load_model (or run pytest with "
    "--cem-trust-checkpoints); better, re-save it as a state_dict (torch.save(model.state_dict(), path)), as "
    "safetensors or as TorchScript"
)


def _path(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"checkpoint path {describe_value(path)} must be a str or os.PathLike, e.g. 'model.pth'.")
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"no checkpoint file at {str(p)!r}; pass the path of a .pt/.pth/.safetensors file.")
    return p


def detect_format(path: str | os.PathLike) -> str:
    """``"torchscript"``, ``"safetensors"`` or ``"torch"`` (a ``torch.save`` archive or a legacy pickle), from the
    file's content; raises :class:`CheckpointError` for anything else."""
    p = _path(path)
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        return "torch"
    with open(p, "rb") as fh:
        head = fh.read(9)
    # safetensors: an 8-byte little-endian header length, then a JSON header starting with "{"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":  # a pickle (protocol >= 2): the legacy torch.save format
        return "torch"
    raise CheckpointError(
        f"{str(p)!r} is not a checkpoint this library reads: neither a zip archive (torch.save, torch.jit.save) nor "
        "safetensors nor a pickle; expected a file written by torch.save, torch.jit.save or safetensors."
    )


def _is_tensor_map(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _unwrap(obj: Any, where: str) -> dict[str, torch.Tensor]:
    if not _is_tensor_map(obj) and isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if _is_tensor_map(obj.get(key)):
                obj = obj[key]
                break
    if not _is_tensor_map(obj):
        keys = list(obj)[:8] if isinstance(obj, Mapping) else None
        raise CheckpointError(
            f"{where} holds {type(obj).__name__}{f' with keys {keys}' if keys is not None else ''}, not a state_dict "
            f"(a dict of tensors, possibly under one of {list(STATE_DICT_KEYS)}); save the weights with "
            "torch.save(model.state_dict(), path)."
        )
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state_dict stored at ``path`` (``torch.save`` or safetensors), read without running any code."""
    p = _path(path)
    fmt = detect_format(p)
    if fmt == "torchscript":
        raise CheckpointError(
            f"{str(p)!r} is a TorchScript archive, not a state_dict; load it with load_model({str(p)!r}) and no arch."
        )
    if fmt == "safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(
                f"{str(p)!r} is a safetensors file but the safetensors package is not installed; install it with "
                "pip install 'pytest-cem[safetensors]'."
            ) from None
        try:
            return _unwrap(load_file(str(p), device="cpu"), repr(str(p)))
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"cannot read {str(p)!r} as safetensors: {exc}.") from exc
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f"it names {found.group(1)}" if found else "the safe loader refused it"
        raise UntrustedCheckpointError(
            f"{str(p)!r} is not a plain state_dict: reading it needs full unpickling, which would run code named "
            f"inside the file ({what}). {_TRUST_HINT}."
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read {str(p)!r} as a torch checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]}); expected "
            "a file written by torch.save, torch.jit.save or safetensors."
        ) from exc
    return _unwrap(obj, repr(str(p)))


def spandrel_unavailable() -> str | None:
    """Why the optional spandrel architecture detection cannot be used in this environment, or None when it can:
    spandrel not installed, torchvision (which spandrel imports) missing or built for another torch, or spandrel
    failing to import."""
    if importlib.util.find_spec("spandrel") is None:
        return "spandrel not installed (optional extra pytest-cem[spandrel])"
    if importlib.util.find_spec("torchvision") is None:
        return "spandrel is installed but torchvision, which it imports, is not"
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # a torchvision built for another torch fails with RuntimeError
        return (f"spandrel is installed but torchvision does not import beside torch {torch.__version__} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
    try:
        import spandrel  # noqa: F401
    except Exception as exc:
        return f"spandrel does not import ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return None


def _spandrel(sd: dict, where: str) -> nn.Module:
    try:
        import spandrel
    except ImportError:
        raise CheckpointError(
            f"{where} holds a state_dict but no architecture was given; pass arch= (a class with from_state_dict, e.g. "
            "cem_checks.models.DnCNN, a factory returning an nn.Module, or an nn.Module instance), or install the "
            "optional extra pip install 'pytest-cem[spandrel]' to detect the architecture automatically."
        ) from None
    except Exception as exc:  # installed, but fails to import: typically torchvision built for another torch
        import torch

        raise CheckpointError(
            f"{where} holds a state_dict and spandrel is installed but fails to import beside torch "
            f"{torch.__version__} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); install a "
            "torchvision built for this torch (e.g. torch==2.14.1 with torchvision==0.29.1), or pass arch= (a class "
            "with from_state_dict, a factory returning an nn.Module, or an nn.Module instance)."
        ) from exc
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_state_dict(sd)
    except Exception as exc:  # spandrel.UnsupportedModelError and errors of its architecture detection
        raise CheckpointError(
            f"spandrel does not recognise the architecture of {where} ({type(exc).__name__}: {exc}); pass arch= "
            "(a class with from_state_dict, a factory returning an nn.Module, or an nn.Module instance)."
        ) from exc
    return descriptor.model


def resolve_arch(spec: str | None, option: str = "arch") -> Any:
    """The object named by an architecture string: ``None`` and ``"spandrel"`` are returned as they are;
    ``"MODULE:ATTR"`` (dotted attribute allowed, e.g. ``"mypkg.nets:build"``) or ``"path/to/file.py:ATTR"`` are
    imported (the current folder, and the file's folder, are importable). ``option`` names the argument in
    error messages. Raises :class:`CheckpointError`."""

    if spec is None or spec == "spandrel":
        return spec
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CheckpointError(f"{option}={spec!r}: expected MODULE:CALLABLE, e.g. mypkg.nets:build or nets.py:build.")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise CheckpointError(f"{option}={spec!r}: no file {module_name!r}.")
            folder = str(path.resolve().parent)  # so that the file can import its sibling modules
            if folder not in sys.path:
                sys.path.insert(0, folder)
            mod_spec = importlib.util.spec_from_file_location(f"_cem_arch_{path.stem}", path)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except CheckpointError:
        raise
    except Exception as exc:  # any error raised while importing the user's module
        raise CheckpointError(f"{option}={spec!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc}).") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CheckpointError(f"{option}={spec!r}: {module_name!r} has no attribute {attr!r}.") from None
    return obj



def _build(sd: dict, arch: Any, where: str) -> nn.Module:
    if arch is None or arch == "spandrel":
        return _spandrel(sd, where)
    if isinstance(arch, str):
        arch = resolve_arch(arch)
    if hasattr(arch, "from_state_dict"):
        try:
            model = arch.from_state_dict(sd)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{describe_value(arch)}.from_state_dict failed on {where}: {exc}") from exc
    elif isinstance(arch, nn.Module):
        model = arch
    elif callable(arch):
        model = arch()
    else:
        raise CheckpointError(
            f"arch={describe_value(arch)} is not usable; expected a class with from_state_dict, a factory returning "
            "an nn.Module, an nn.Module instance, 'spandrel' or None."
        )
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"arch={describe_value(arch)} built {type(model).__name__}; it must give an nn.Module.")
    if not hasattr(arch, "from_state_dict"):
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"the weights in {where} do not fit {type(model).__name__}: {exc}. Check that arch builds the same "
                "architecture (channels, width, depth) as the one that was saved."
            ) from exc
    return model


def load_model(path: str | os.PathLike, arch: Any = None, *, trust: bool = False) -> nn.Module:
    """Load the model stored at ``path`` on the CPU, in eval mode (see the module docstring for the formats).

    Args:
        path: a TorchScript archive, a ``torch.save`` file or a safetensors file.
        arch: how to build the module from a state_dict (see the module docstring); ``None`` uses spandrel
            when it is installed.
        trust: allow full unpickling (a ``torch.save`` of a whole module). Unpickling runs code named in the
            file: use it only for files from a source you trust.

    Raises:
        CheckpointError: unreadable file, no architecture for a state_dict, weights that do not fit ``arch``.
        UntrustedCheckpointError: the file needs full unpickling and ``trust`` is False.
    """
    p = _path(path)
    if not isinstance(trust, bool):
        raise CheckpointError(f"trust={trust!r} must be True or False.")
    fmt = detect_format(p)
    if fmt == "torchscript":
        if arch is not None:
            raise CheckpointError(
                f"{str(p)!r} is a TorchScript archive, which holds its own architecture; call without arch."
            )
        try:
            model = torch.jit.load(str(p), map_location="cpu")
        except (RuntimeError, ValueError) as exc:
            raise CheckpointError(f"cannot load the TorchScript archive {str(p)!r}: {exc}") from exc
        return model.eval()
    try:
        sd = load_state_dict(p)
    except UntrustedCheckpointError:
        if not trust:
            raise
        obj = torch.load(p, map_location="cpu", weights_only=False)
        if isinstance(obj, nn.Module):
            if arch is not None:
                raise CheckpointError(f"{str(p)!r} holds a whole module; call without arch.") from None
            return obj.eval()
        sd = _unwrap(obj, repr(str(p)))
    return _build(sd, arch, repr(str(p))).eval()
