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
(or any other pickle)        :class:`~cem_checks.errors.UntrustedCheckpointError` unless ``trust=True`` (then
                             ``torch.load(weights_only=False)``, or ``pickle.load`` for a plain ``pickle.dump``
                             file). The classes it names must be importable.
===========================  ===================================================================================

Damaged files are reported as damage (:class:`~cem_checks.errors.CheckpointError` naming the file and what is
wrong), before anything is unpickled: a zip archive (``torch.save``, ``torch.jit.save``) must have its central
directory and every member must match its CRC-32; the pickles of a legacy (non-zip) ``torch.save`` file must
parse to their end (read by :mod:`pickletools`, which imports and calls nothing) and be followed by every byte of
the tensors they reference; a safetensors file must hold the bytes its header announces. Only an intact file
that the weights-only unpickler refuses is reported as needing ``trust=True``.

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
import io
import json
import os
import pickle
import pickletools
import re
import struct
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, UntrustedCheckpointError, describe_value

#: Keys under which training frameworks commonly store the state_dict, in the order they are tried.
STATE_DICT_KEYS = ("params_ema", "params", "state_dict", "model_state_dict", "model", "net", "generator")
#: Formats :func:`detect_format` reports.
FORMATS = ("torchscript", "safetensors", "torch")

__all__ = ["CLI_OPTIONS", "FORMATS", "PYTHON_OPTIONS", "STATE_DICT_KEYS", "OptionNames", "detect_format", "load_model",
           "load_state_dict", "resolve_arch", "spandrel_unavailable"]


@dataclass(frozen=True)
class OptionNames:
    """How the error messages of :func:`load_model` tell the caller to set its options: as Python keywords
    (:data:`PYTHON_OPTIONS`, the default) or as the flags of a command line (:data:`CLI_OPTIONS`)."""

    #: the instruction that allows full unpickling, e.g. "pass trust=True to load_model"
    trust: str
    #: the instruction that names an architecture for a state_dict
    arch: str
    #: the name of the architecture option, e.g. "arch" or "--arch"
    arch_name: str


PYTHON_OPTIONS = OptionNames(
    trust="pass trust=True to load_model / cem_load_model (or run pytest with --cem-trust-checkpoints)",
    arch="pass arch= (a class with from_state_dict, e.g. cem_checks.models.DnCNN, a factory returning an "
         "nn.Module, or an nn.Module instance)",
    arch_name="arch",
)
CLI_OPTIONS = OptionNames(
    trust="pass --trust",
    arch="pass --arch MODULE:CALLABLE (a class with from_state_dict or a factory returning an nn.Module, e.g. "
         "mypkg.nets:build or path/to/nets.py:build)",
    arch_name="--arch",
)

#: the first pickle of a legacy (non-zip) torch.save file holds this number
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
#: pickles at the start of a legacy torch.save file: magic number, protocol version, system info, the object,
#: the storage keys (the raw storage bytes follow)
_LEGACY_PICKLES = 5
_ZIP_HEADERS = (b"PK\x03\x04", b"PK\x05\x06")


def _trust_hint(options: OptionNames) -> str:
    return (
        f"Only if you trust whoever made the file, {options.trust}; better, re-save it as a state_dict "
        "(torch.save(model.state_dict(), path)), as safetensors or as TorchScript"
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
    file's content; raises :class:`CheckpointError` for anything else, and for a zip archive without its central
    directory (a truncated ``torch.save`` / ``torch.jit.save`` file)."""
    p = _path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(9)
    except OSError as exc:
        raise CheckpointError(f"cannot read the checkpoint file {str(p)!r}: {exc}; check its permissions.") from exc
    if head[:4] in _ZIP_HEADERS or zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise _damaged(
                p, f"the zip archive (the format of torch.save and torch.jit.save) is truncated or damaged: "
                   f"{type(exc).__name__}: {exc} (its central directory, the index at the end of the archive, is "
                   f"missing or unreadable; the file has {p.stat().st_size} bytes)"
            ) from exc
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        return "torch"
    # safetensors: an 8-byte little-endian header length, then a JSON header starting with "{"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":  # a pickle (protocol >= 2): the legacy torch.save format
        return "torch"
    raise CheckpointError(
        f"{str(p)!r} is not a checkpoint this library reads: neither a zip archive (torch.save, torch.jit.save) nor "
        "safetensors nor a pickle; expected a file written by torch.save, torch.jit.save or safetensors."
    )


def _damaged(p: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{str(p)!r} is damaged: {what}. Copy or download the checkpoint again, or re-save it.")


@dataclass
class _PickleScan:
    """What :func:`_scan_pickle` read from one pickle, without running it."""

    #: why the stream does not parse to its STOP opcode (None when it does)
    problem: str | None = None
    #: the classes and functions it names (module.name)
    names: list = field(default_factory=list)
    #: the literal arguments of its opcodes (strings, numbers), in order
    args: list = field(default_factory=list)
    #: the persistent ids it loads (torch's storage references), as tuples of literals
    pids: list = field(default_factory=list)


_MARK = object()  # a MARK on the abstract stack of _scan_pickle
_OBJECT = object()  # any value _scan_pickle does not follow (containers, call results)
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}


def _scan_pickle(fh: Any) -> _PickleScan:
    """Parse one pickle from ``fh`` with :func:`pickletools.genops` and follow its stack abstractly: literals,
    memo entries, globals and tuples are tracked, nothing is imported or called."""
    out = _PickleScan()
    stack: list[Any] = []
    memo: dict[Any, Any] = {}
    try:
        for op, arg, _ in pickletools.genops(fh):
            name = op.name
            if name in _PUT_OPS:
                memo[arg] = stack[-1] if stack else _OBJECT
                continue
            if name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else _OBJECT
                continue
            if name == "MARK":
                stack.append(_MARK)
                continue
            popped: list[Any] = []
            for before in reversed(op.stack_before):
                if before is pickletools.markobject:
                    at = len(stack) - 1 - stack[::-1].index(_MARK) if _MARK in stack else 0
                    popped = stack[at + 1:] + popped
                    del stack[at:]
                elif before is not pickletools.stackslice:
                    popped.insert(0, stack.pop() if stack else _OBJECT)
            if name in _GET_OPS:
                stack.append(memo.get(arg, _OBJECT))
            elif name == "GLOBAL" or name == "INST":
                module, _, attr = str(arg).partition(" ")
                out.names.append(f"{module}.{attr}")
                stack.append(("global", module, attr) if name == "GLOBAL" else _OBJECT)
            elif name == "STACK_GLOBAL":
                module, attr = popped if all(isinstance(v, str) for v in popped) else ("?", "?")
                out.names.append(f"{module}.{attr}")
                stack.append(("global", module, attr))
            elif name.startswith("TUPLE") or name == "EMPTY_TUPLE":
                stack.append(tuple(popped))
            elif name in ("BINPERSID", "PERSID"):
                out.pids.append(arg if name == "PERSID" else popped[0] if popped else None)
                stack.append(_OBJECT)
            elif name == "DUP":
                stack += popped * 2
            elif name in _CONSTANTS:
                stack.append(_CONSTANTS[name])
            elif not op.stack_before and len(op.stack_after) == 1 and arg is not None and not name.startswith("EXT"):
                out.args.append(arg)  # a literal: str, int, float or bytes
                stack.append(arg)
            else:
                stack += [_OBJECT] * len(op.stack_after)
    except Exception as exc:  # pickletools raises ValueError for truncated streams and unknown opcodes
        out.problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return out


def _zip_pickle(zf: zipfile.ZipFile) -> str | None:
    return next((n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")), None)


def _validate_zip(p: Path) -> list[str]:
    """Every member of the zip archive ``p`` must read back with its CRC-32 (torch's reader checks none), and its
    data.pkl must parse. Returns the globals data.pkl names."""
    try:
        with zipfile.ZipFile(p) as zf:
            bad = zf.testzip()
            member = _zip_pickle(zf)
            data = zf.read(member) if bad is None and member is not None else b""
    except Exception as exc:  # BadZipFile, OSError, EOFError, zlib.error for a damaged compressed member
        raise _damaged(p, f"the zip archive is truncated or damaged: {type(exc).__name__}: {exc}") from exc
    if bad is not None:
        part = "data.pkl (the pickled object)" if bad.endswith("data.pkl") else bad
        raise _damaged(p, f"the zip member {part} fails its CRC-32 check (its bytes are not those that were written)")
    if member is None:
        return []
    scan = _scan_pickle(io.BytesIO(data))
    if scan.problem is not None:
        raise _damaged(p, f"data.pkl is damaged: {scan.problem}")
    return scan.names


def _validate_legacy(p: Path) -> list[str]:
    """The pickles at the start of a legacy (non-zip) torch.save file, or the one pickle of a plain pickle file,
    must parse to their end, and the raw storage bytes after them must be whole (the format has no checksum:
    bytes changed inside a pickle that still parses go unnoticed). Returns the globals the pickles name."""
    names: list[str] = []
    scans: list[_PickleScan] = []
    size = p.stat().st_size
    with open(p, "rb") as fh:
        for i in range(_LEGACY_PICKLES):
            start = fh.tell()
            scan = _scan_pickle(fh)
            names += scan.names
            if scan.problem is not None:
                where = "the file is truncated: it ends" if fh.tell() >= size else "unreadable data"
                raise _damaged(
                    p, f"the pickle data is truncated or damaged: {where} inside pickle {i + 1} (from byte {start}; "
                       f"the file has {size} bytes): {scan.problem}"
                )
            scans.append(scan)
            if i == 0 and scan.args[-1:] != [_LEGACY_MAGIC]:  # not torch.save's magic number: a plain pickle
                return names
        _validate_legacy_storages(p, fh, scans[3], scans[4], size)
    return names


#: bytes per element of the storage types a legacy torch.save names (torch.<Name>Storage)
_STORAGE_ELEMENT_BYTES = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
    "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
    "ComplexDoubleStorage": 16, "ComplexFloatStorage": 8, "QUInt8Storage": 1, "QInt8Storage": 1,
    "QInt32Storage": 4, "QUInt4x2Storage": 1, "QUInt2x4Storage": 1, "UntypedStorage": 1,
}


def _element_size(storage_type: Any) -> int | None:
    """Bytes per element of a storage type named in a legacy pickle, e.g. ("global", "torch", "FloatStorage")."""
    if not (isinstance(storage_type, tuple) and storage_type[:2] == ("global", "torch")):
        return None
    return _STORAGE_ELEMENT_BYTES.get(str(storage_type[2]))


def _validate_legacy_storages(p: Path, fh: Any, obj: _PickleScan, keys: _PickleScan, size: int) -> None:
    """After its pickles, a legacy torch.save file holds each storage (in the order of the keys pickle) as an
    8-byte element count and the elements. Raises when the file ends before the last one; checks nothing when
    a storage reference is not of the expected form ("storage", type, key, location, numel, ...)."""
    sizes = {}
    for pid in obj.pids:
        if isinstance(pid, tuple) and pid[:1] == ("module",):
            continue  # the source code of a pickled module's class
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[4], int)):
            return
        element = _element_size(pid[1])
        if element is None:
            return
        sizes[str(pid[2])] = (pid[4], element)
    pos = fh.tell()
    for key in (a for a in keys.args if isinstance(a, str)):
        if key not in sizes:
            return
        numel, element = sizes[key]
        fh.seek(pos)
        head = fh.read(8)
        if len(head) == 8 and struct.unpack("<q", head)[0] != numel:
            return  # not the layout this check knows
        pos += 8 + numel * element
        if pos > size:
            raise _damaged(
                p, f"the file is truncated: the tensor data of storage {key!r} ends at byte {pos}, the file has "
                   f"{size} bytes"
            )


def _validate_safetensors(p: Path) -> None:
    """The header of a safetensors file must be whole JSON and the file must hold every tensor's bytes."""
    size = p.stat().st_size
    with open(p, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if 8 + n > size:
            raise _damaged(
                p, f"the safetensors file is truncated (or its first 8 bytes are damaged): its header announces {n} "
                   f"bytes of JSON after the first 8, the file has {size} bytes in all"
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _damaged(p, f"the safetensors header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise _damaged(p, f"the safetensors header is a JSON {type(header).__name__}, not an object")
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2
            and isinstance(v["data_offsets"][1], int)]
    need = 8 + n + max(ends, default=0)
    if need > size:
        raise _damaged(
            p, f"the safetensors file is truncated: its header places tensor data up to byte {need}, the file has "
               f"{size} bytes"
        )


def _validate_intact(p: Path, fmt: str) -> list[str]:
    """Raise :class:`CheckpointError` when ``p`` (of format ``fmt``, see :func:`detect_format`) is damaged, before
    anything is unpickled. Returns the globals its pickle names (for messages)."""
    if fmt == "safetensors":
        _validate_safetensors(p)
        return []
    if zipfile.is_zipfile(p):
        return _validate_zip(p)
    return _validate_legacy(p)


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


def load_state_dict(path: str | os.PathLike, *, options: OptionNames = PYTHON_OPTIONS) -> dict[str, torch.Tensor]:
    """The state_dict stored at ``path`` (``torch.save`` or safetensors), read without running any code.

    Raises:
        CheckpointError: missing, damaged or truncated file, or no state_dict in it.
        UntrustedCheckpointError: the file is intact but reading it needs full unpickling.
    """
    p = _path(path)
    fmt = detect_format(p)
    if fmt == "torchscript":
        raise CheckpointError(
            f"{str(p)!r} is a TorchScript archive, not a state_dict; load it with load_model({str(p)!r}) and no arch."
        )
    names = _validate_intact(p, fmt)
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
            raise CheckpointError(
                f"cannot read {str(p)!r} as safetensors: {exc}; the file is damaged or not written by safetensors."
            ) from exc
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # the file is intact (checked above): the weights-only unpickler refuses what the pickle asks for
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        named = [found.group(1)] if found else list(dict.fromkeys(names))[:3]
        what = (f"it names {', '.join(named)}" if named
                else f"the weights-only unpickler refused it: {str(exc).splitlines()[-1] if str(exc) else ''}")
        raise UntrustedCheckpointError(
            f"{str(p)!r} is not a plain state_dict: reading it needs full unpickling, which would run code named "
            f"inside the file ({what}). {_trust_hint(options)}."
        ) from None
    except Exception as exc:  # no code runs here: any error is the reader's (e.g. storage bytes cut short)
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(
            f"cannot read {str(p)!r} as a torch checkpoint: the file is damaged, truncated or not written by "
            f"torch.save ({type(exc).__name__}: {first}). Copy or download the checkpoint again, or re-save it with "
            "torch.save, torch.jit.save or safetensors."
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


def _spandrel(sd: dict, where: str, options: OptionNames) -> nn.Module:
    try:
        import spandrel
    except ImportError:
        raise CheckpointError(
            f"{where} holds a state_dict but no architecture was given; {options.arch}, or install the "
            "optional extra pip install 'pytest-cem[spandrel]' to detect the architecture automatically."
        ) from None
    except Exception as exc:  # installed, but fails to import: typically torchvision built for another torch
        import torch

        raise CheckpointError(
            f"{where} holds a state_dict and spandrel is installed but fails to import beside torch "
            f"{torch.__version__} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); install a "
            f"torchvision built for this torch (e.g. torch==2.14.1 with torchvision==0.29.1), or {options.arch}."
        ) from exc
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_state_dict(sd)
    except Exception as exc:  # spandrel.UnsupportedModelError and errors of its architecture detection
        raise CheckpointError(
            f"spandrel does not recognise the architecture of {where} ({type(exc).__name__}: {exc}); {options.arch}."
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



def _build(sd: dict, arch: Any, where: str, options: OptionNames) -> nn.Module:
    if arch is None or arch == "spandrel":
        return _spandrel(sd, where, options)
    if isinstance(arch, str):
        arch = resolve_arch(arch, option=options.arch_name)
    name = options.arch_name
    if hasattr(arch, "from_state_dict"):
        try:
            model = arch.from_state_dict(sd)
        except Exception as exc:  # the user's code: KeyError, RuntimeError, TypeError, ...
            raise CheckpointError(
                f"{describe_value(arch)}.from_state_dict failed on {where} ({type(exc).__name__}: {exc}). Check that "
                f"{name} names the architecture that was saved."
            ) from exc
    elif isinstance(arch, nn.Module):
        model = arch
    elif callable(arch):
        try:
            model = arch()
        except Exception as exc:  # the user's factory
            raise CheckpointError(
                f"{name}={describe_value(arch)} raised {type(exc).__name__} when called without arguments: {exc}; "
                "a factory must build the module with no arguments (or give a class with from_state_dict)."
            ) from exc
    else:
        raise CheckpointError(
            f"{name}={describe_value(arch)} is not usable; expected a class with from_state_dict, a factory "
            "returning an nn.Module, an nn.Module instance, 'spandrel' or None."
        )
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"{name}={describe_value(arch)} built {type(model).__name__}; it must give an nn.Module.")
    if not hasattr(arch, "from_state_dict"):
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"the weights in {where} do not fit {type(model).__name__}: {exc}. Check that {options.arch_name} "
                "builds the same architecture (channels, width, depth) as the one that was saved."
            ) from exc
    return model


def _unpickle(p: Path, options: OptionNames) -> Any:
    """Full unpickling of the file ``p``: ``torch.load``, or ``pickle.load`` for a plain pickle; every failure as
    :class:`CheckpointError`."""
    plain = False
    if not zipfile.is_zipfile(p):
        with open(p, "rb") as fh:
            plain = _scan_pickle(fh).args[-1:] != [_LEGACY_MAGIC]  # the first pickle is not torch.save's magic
    try:
        if plain:
            with open(p, "rb") as fh:
                return pickle.load(fh)
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # unpickling runs the file's code: any exception is a failure to load it
        missing = _missing_class(exc)
        if missing is None:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise CheckpointError(
                f"full unpickling of {str(p)!r} failed ({type(exc).__name__}: {first}): the file is damaged (e.g. "
                "truncated tensor data), or code it names failed here. Copy or download the checkpoint again, or "
                f"re-save the model as a state_dict (torch.save(model.state_dict(), path)) and {options.arch}."
            ) from exc
        module, name = missing
        if module == "__main__":
            fix = (f"the class {name} was defined in the script that saved the file (module __main__), which "
                   f"another program cannot import: move the class into a module (e.g. nets.py), import it from "
                   f"there and save again")
        else:
            top = module.split(".")[0]
            fix = (f"make the module {module!r} importable here: run from the folder that holds it ({top}.py or "
                   f"the {top} package), or add that folder to PYTHONPATH, or install it if it is a package")
        raise CheckpointError(
            f"{str(p)!r} holds a pickled object whose class cannot be imported in this process "
            f"({type(exc).__name__}: {exc}); {fix}. Or re-save the model as a state_dict "
            f"(torch.save(model.state_dict(), path)) and {options.arch}."
        ) from exc


def _missing_class(exc: BaseException) -> tuple[str, str] | None:
    """``(module, name)`` when ``exc`` says that unpickling could not import a class or function (``name`` is "?"
    when only the module is known), else None."""
    if isinstance(exc, ModuleNotFoundError):
        return (exc.name or "?", "?")
    found = re.search(r"Can't get attribute '([\w.]+)' on <module '([\w.]+)'", str(exc))
    if not isinstance(exc, AttributeError) or not found:
        return None
    module = found.group(2)
    main = sys.modules.get("__main__")
    if main is not None and module in (main.__name__, getattr(main.__spec__, "name", None)):
        module = "__main__"  # shown by its spec's name when run with python -m, e.g. "pytest.__main__"
    return (module, found.group(1))


def load_model(
    path: str | os.PathLike, arch: Any = None, *, trust: bool = False, options: OptionNames = PYTHON_OPTIONS
) -> nn.Module:
    """Load the model stored at ``path`` on the CPU, in eval mode (see the module docstring for the formats).

    Args:
        path: a TorchScript archive, a ``torch.save`` file or a safetensors file.
        arch: how to build the module from a state_dict (see the module docstring); ``None`` uses spandrel
            when it is installed.
        trust: allow full unpickling (a ``torch.save`` of a whole module). Unpickling runs code named in the
            file: use it only for files from a source you trust.
        options: how error messages name ``trust`` and ``arch``: :data:`PYTHON_OPTIONS` (keywords) or
            :data:`CLI_OPTIONS` (``--trust``, ``--arch``).

    Raises:
        CheckpointError: missing, damaged or truncated file; no architecture for a state_dict; weights that do
            not fit ``arch``; a pickled class that cannot be imported.
        UntrustedCheckpointError: the file needs full unpickling and ``trust`` is False.
    """
    p = _path(path)
    if not isinstance(trust, bool):
        raise CheckpointError(f"trust={trust!r} must be True or False.")
    fmt = detect_format(p)
    if fmt == "torchscript":
        if arch is not None:
            raise CheckpointError(
                f"{str(p)!r} is a TorchScript archive, which holds its own architecture; call without "
                f"{options.arch_name}."
            )
        _validate_intact(p, fmt)
        try:
            model = torch.jit.load(str(p), map_location="cpu")
        except Exception as exc:  # RuntimeError, ValueError, and the errors of TorchScript's own unpickler
            raise CheckpointError(f"cannot load the TorchScript archive {str(p)!r}: {exc}") from exc
        return model.eval()
    try:
        sd = load_state_dict(p, options=options)
    except UntrustedCheckpointError:
        if not trust:
            raise
        obj = _unpickle(p, options)
        if isinstance(obj, nn.Module):
            if arch is not None:
                raise CheckpointError(
                    f"{str(p)!r} holds a whole module; call without {options.arch_name}."
                ) from None
            return obj.eval()
        sd = _unwrap(obj, repr(str(p)))
    return _build(sd, arch, repr(str(p)), options).eval()
