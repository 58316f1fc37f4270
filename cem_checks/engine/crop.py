"""Crop to a verified support: once the blocks beyond the support radius are shown to have no effect, the model
runs on the bounding box of the remaining blocks (whole blocks; SR: in input px) instead of the full image,
after checking that the ROI output of the cropped baseline equals the full-image ROI output within
``crop_atol`` (float kernels may differ with the input size; measured on the real DnCNN: up to 3e-6, i.e. an
occasional flip of one 8-bit level). Otherwise, or when the model fails on the crop, the full input is kept.
The verdict is cached per crop box."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ModelError
from .draws import Engine, Frame
from .options import FastOptions
from .runner import is_oom


def verified_crop(eng: Engine, candidates: np.ndarray, opts: FastOptions, cache=None) -> tuple[Frame, dict[str, Any]]:
    """The frame of the bounding box of ``candidates`` (whole blocks) once verified, else the full input; and a
    summary. The verdict is cached in ``cache`` (default: the map's cache)."""
    cache = eng.cache if cache is None else cache
    b = eng.b
    r, c = np.divmod(np.flatnonzero(candidates), eng.grid.cols)
    y0, y1 = int(r.min()) * b, (int(r.max()) + 1) * b
    x0, x1 = int(c.min()) * b, (int(c.max()) + 1) * b
    if (y1 - y0, x1 - x0) == (eng.grid.height, eng.grid.width):
        return eng.full, {"crop": None, "crop_check": "not needed: the support spans the whole input"}
    frame = Frame(eng, y0, x0, y1 - y0, x1 - x0)
    box = [y0, x0, y1 - y0, x1 - x0]
    key = f"check-crop-{y0}-{x0}-{y1 - y0}-{x1 - x0}"
    verdict = cache.get_record(key)
    if verdict is None or not isinstance(verdict.get("crop_check"), str):
        verdict, cacheable = _crop_verdict(eng, frame, opts)
        if cacheable:
            cache.put_record(key, verdict)
    if verdict.get("exact"):
        return frame, {"crop": box, "crop_check": verdict["crop_check"]}
    return eng.full, {"crop": None, "crop_check": verdict["crop_check"]}


def _crop_verdict(eng: Engine, frame: Frame, opts: FastOptions) -> tuple[dict[str, Any], bool]:
    """Whether the ROI output of the cropped baseline equals the full image's within ``crop_atol``, and whether
    that verdict may be cached (not when the model failed on the crop: an out-of-memory error may not recur)."""
    try:  # one image each: the verdict does not depend on the batch size
        crop_r, _ = frame.baseline(1)
        full_r, _ = eng.full.baseline(1)
    except Exception as exc:
        if not (isinstance(exc, ModelError) or is_oom(exc)):
            raise
        return {"exact": False, "crop_check": f"failed: the model cannot run on the crop ({exc})"}, False
    diff = float((crop_r - full_r).abs().max())
    if diff == 0.0:
        return {"exact": True, "crop_check": "bit-exact"}, True
    if diff <= opts.crop_atol:
        return {"exact": True, "crop_check": f"max |diff| {diff:.2e} <= crop_atol {opts.crop_atol:.0e}"}, True
    return {"exact": False, "crop_check": f"failed: max |diff| {diff:.3g} > crop_atol {opts.crop_atol:.0e}"}, True
