"""A sweep's inputs: its images (:func:`_image_list`), its items (every ROI validated against its image,
:func:`_make_items`) and the keyword arguments of its maps (validated before any forward pass, described in its
settings and its cache key)."""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CEMInputError, DuplicateROIWarning, ImageError, ROIError, describe_value, validate_int
from .table import _json_safe

#: Version of what a sweep's cache key covers; bump when the item files change meaning.
SWEEP_CACHE_VERSION = 1
# keyword arguments of compute_cem / compute_support that a sweep handles itself
_OWN = ("model", "image", "task", "roi")
# keyword arguments about how a map runs, not what it gives: left out of the cache key and of the settings that
# Sweep.merge compares (the device is recorded under settings["execution"])
_EXECUTION = ("progress", "threads", "cache_dir", "cache_key", "device")


def _image_list(images: Any) -> list[tuple[str, Any]]:
    """``images`` as (name, source) pairs, in order."""
    from ..patches import IMAGE_SUFFIXES

    try:
        from PIL import Image as PILImage
    except ImportError:  # pragma: no cover - Pillow is a dependency
        PILImage = None
    import torch

    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ImageError(f"image folder {str(path)!r} holds no image file ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                                 "add images or pass a list of images.")
            return [(p.stem, p) for p in files]
        if path.is_file():
            return [(path.stem, path)]
        raise ImageError(f"images={str(path)!r} is neither an image file nor a folder; pass an existing folder, "
                         "a list of images or a dict name -> image.")
    if isinstance(images, (np.ndarray, torch.Tensor)) or (PILImage is not None and isinstance(images, PILImage.Image)):
        raise ImageError(
            f"images={describe_value(images)} is a single array; pass a list of images ([image]), a dict name -> image "
            "({'name': image}), or list(batch) for a stack of images."
        )
    if isinstance(images, Mapping):
        pairs = []
        for key, value in images.items():
            if not isinstance(key, str) or not key:
                raise CEMInputError(f"images has the key {key!r}; the keys of an images dict name the images: use "
                                    "non-empty strings.")
            pairs.append((key, value))
    elif isinstance(images, Iterable) and not isinstance(images, (bytes, bytearray)):
        pairs = []
        for k, value in enumerate(images):
            name = Path(value).stem if isinstance(value, (str, os.PathLike)) else f"image{k}"
            pairs.append((name, value))
    else:
        raise ImageError(f"images={describe_value(images)} of type {type(images).__name__} is not understood; pass a "
                         "folder, a list of paths, arrays or tensors, or a dict name -> image.")
    if not pairs:
        raise ImageError("images is empty; a sweep needs at least one image (a folder of images, a list or a dict "
                         "name -> image).")
    seen: dict[str, int] = {}
    for k, (name, _) in enumerate(pairs):
        if name in seen:
            raise CEMInputError(f"images[{seen[name]}] and images[{k}] are both named {name!r} (file stems must differ); "
                                "pass a dict name -> image to name them.")
        seen[name] = k
    return pairs


def _call_signature(stage: str) -> dict[str, Any]:
    from ..engine import compute_cem, compute_support

    func = compute_cem if stage == "map" else compute_support
    return {name: p.default for name, p in inspect.signature(func).parameters.items() if name not in _OWN}


def _validate_kwargs(stage: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of every map, validated; raises before any forward pass."""
    from ..engine.job import validate_within
    from ..engine.options import validate_common, validate_map_settings

    accepted = _call_signature(stage)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        other = "compute_support" if stage == "map" else "compute_cem"
        only_other = [k for k in unknown if k in _call_signature("support" if stage == "map" else "map")]
        hint = (f" ({', '.join(only_other)} belong{'s' if len(only_other) == 1 else ''} to {other}: "
                f"stage={'support' if stage == 'map' else 'map'!r})") if only_other else ""
        raise CEMInputError(
            f"sweep(stage={stage!r}) got unknown keyword argument{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)}{hint}; it passes these to {'compute_cem' if stage == 'map' else 'compute_support'}: "
            f"{', '.join(sorted(accepted))}."
        )
    full = {**accepted, **kwargs}
    validate_common(seed=full["seed"], batch_size=full["batch_size"], progress=full["progress"],
                    precision=full.get("precision", "fp32"), threads=full["threads"])
    if stage == "map":
        validate_map_settings(mode=full["mode"], coarse=full["coarse"], fine=full["fine"], tol_db=full["tol_db"],
                              fast=full["fast"])
    else:
        validate_within(full["within"])
        validate_int("draws", full["draws"], 1)
        if full["max_tests"] is not None:
            validate_int("max_tests", full["max_tests"], 0)
    if full["block_size"] is not None:
        validate_int("block_size", full["block_size"], 1)
    return full


def _settings_value(key: str, value: Any) -> Any:
    """A JSON-safe description of a map setting."""
    if is_dataclass(value) and not isinstance(value, type):
        return _json_safe(asdict(value))
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if key == "patches":
        from ..patches import load_patches

        return load_patches(value).describe()
    return describe_value(value)


def _key_value(key: str, value: Any) -> Any:
    """What a map setting contributes to the sweep's cache key."""
    from ..cache import digest

    if key == "patches" and value is not None:
        from ..patches import load_patches

        return load_patches(value).sha256
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return digest(value)


def _rois_of(rois: Any, name: str, clean: Any) -> tuple[Any, str]:
    """``(ROIs, what gave them)`` of the image ``name``: ``rois`` itself, or what the callable ``rois`` returns for
    its clean pixels; an error inside the callable becomes a :class:`ROIError` naming the image and the callable,
    with the original as its cause."""
    if not callable(rois):
        return rois, "rois"
    try:
        return rois(clean), f"rois({name!r})"
    except Exception as exc:  # any error of the caller's callable
        what = getattr(rois, "__qualname__", type(rois).__name__)
        raise ROIError(
            f"the rois callable {what} raised {type(exc).__name__} for image {name!r}: {exc}. It receives the image's "
            "clean (3, H, W) tensor in [0, 1] and must return a list of (x, y, size) ROIs in output px; the original "
            "error is the cause of this one."
        ) from exc


def _make_items(loaded: list, rois: Any, task: Any, block: int) -> tuple[list, dict]:
    """The items ``(index, image name, roi)`` of every image, each ROI validated against its image as the engine
    trims it, and each image's hash (of its trimmed clean pixels). A ROI given twice for one image is kept once
    (the first time), with a :class:`~cem_checks.errors.DuplicateROIWarning`: twice, it would count twice in the
    sweep's table and statistics."""
    from ..cache import hash_tensor
    from ..grid import ROI

    scale = int(task.scale)
    unit = scale * block
    items: list[tuple[int, str, tuple[int, int, int]]] = []
    duplicates: list[str] = []
    hashes: dict[str, str] = {}
    for name, clean in loaded:
        cropped = task.crop(clean)
        H0, W0 = (int(v) for v in cropped.shape[-2:])
        H, W = (H0 // unit) * unit, (W0 // unit) * unit
        if H == 0 or W == 0:
            raise ImageError(f"image {name!r} ({W0}x{H0} px) is smaller than one block of {block} input px ({unit} "
                             "output px); use larger images or a smaller block_size.")
        got, source = _rois_of(rois, name, clean)
        if isinstance(got, (str, bytes)) or not isinstance(got, Iterable):
            raise ROIError(f"{source} is {describe_value(got)}; expected a list of (x, y, size) ROIs in output px, e.g. "
                           "[(0, 0, 16), (16, 0, 16)] or cem_checks.roi_grid(image.shape[-2:], 16), or a callable "
                           "image -> such a list.")
        got = list(got)
        if not got and not callable(rois):
            raise ROIError("rois=[] is empty; give at least one (x, y, size) ROI, e.g. rois=cem_checks.roi_grid((H, W), 16).")
        size_text = f"{W}x{H} px" if (H, W) == (H0, W0) else \
            f"{W}x{H} px, trimmed from {W0}x{H0} so that whole {block}-px blocks tile the input"
        seen: dict[tuple, int] = {}
        for j, roi in enumerate(got):
            if isinstance(roi, np.ndarray):  # a row of an (n, 3) array
                roi = tuple(roi.tolist())
            try:
                r = ROI.parse(roi)
                r.validate((H, W), scale)
            except ROIError as exc:
                raise ROIError(f"{source}[{j}] for image {name!r} ({size_text}): {exc}") from None
            if r.as_tuple() in seen:
                duplicates.append(f"image {name!r} roi {r.as_tuple()} ({source}[{seen[r.as_tuple()]}] and [{j}])")
                continue
            seen[r.as_tuple()] = j
            items.append((len(items), name, r.as_tuple()))
        hashes[name] = hash_tensor(cropped[:, :H, :W].contiguous())
    if duplicates:
        shown = "; ".join(duplicates[:5]) + ("; ..." if len(duplicates) > 5 else "")
        n = len(duplicates)
        warnings.warn(f"{n} ROI{'s' if n > 1 else ''} repeated an earlier ROI of the same image and {'were' if n > 1 else 'was'} "
                      f"left out (each item is computed and counted once): {shown}. Pass each ROI of an image once.",
                      DuplicateROIWarning, stacklevel=3)
    if not items:
        raise ROIError(f"the rois callable returned no ROI for any of the {len(loaded)} images; return at least one "
                       "(x, y, size) ROI for some image.")
    return items, hashes
