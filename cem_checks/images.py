"""Loading clean images and converting between tensors and 8-bit pictures.

Conventions: an image tensor is float32 (3, H, W) with values in [0, 1], RGB.

Colour handling (explicit, not by accident):

- **RGB** is used as stored.
- **RGBA**: the alpha channel is dropped and the stored colour values are used. When some pixel is not
  fully opaque an :class:`~cem_checks.errors.ImageConversionWarning` says so, because what a viewer sees
  (colour blended with a background) then differs from what the model is given.
- **Grayscale** (PIL modes ``L``/``I``/``F``, HxW or HxWx1 arrays, 1xHxW tensors) is replicated to three
  identical channels, so the RGB outcome PSNR equals the grayscale PSNR.
- Palette and other PIL modes are converted to RGB by Pillow.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch

from .errors import ImageConversionWarning, ImageError, describe_value

ImageLike = Union[str, os.PathLike, "PIL.Image.Image", np.ndarray, torch.Tensor]  # noqa: F821


def _from_pil(img) -> np.ndarray:
    if img.mode == "RGBA" or img.mode == "LA" or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        if alpha.min() < 255:
            warnings.warn(
                f"image has a translucent alpha channel ({int((alpha < 255).sum())} pixels below 255); "
                "the alpha channel is dropped and the stored colour values are used as the clean image. "
                "Composite the image onto a background yourself if the model should see the blended colours.",
                ImageConversionWarning,
                stacklevel=4,
            )
        return np.asarray(rgba)[..., :3] if img.mode != "LA" else np.repeat(np.asarray(img)[..., :1], 3, -1)
    if img.mode in ("L", "1"):
        return np.repeat(np.asarray(img.convert("L"))[..., None], 3, axis=-1)
    if img.mode in ("I", "I;16", "F"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if img.mode.startswith("I") else 1.0
        return np.repeat((arr / top)[..., None], 3, axis=-1).astype(np.float32)
    return np.asarray(img.convert("RGB"))


def _from_array(arr: np.ndarray, original: object) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ImageError(
            f"image array {describe_value(original)} has an unsupported shape; expected HxW (grayscale), "
            "HxWx1, HxWx3 (RGB) or HxWx4 (RGBA). Transpose a CxHxW array with arr.transpose(1, 2, 0), "
            "or pass it as a torch tensor, whose layout is CxHxW."
        )
    if arr.shape[-1] == 4:
        if arr.dtype == np.uint8:
            opaque = arr[..., 3] == 255
        else:
            opaque = arr[..., 3] >= 1.0
        if not opaque.all():
            warnings.warn(
                f"image has a translucent alpha channel ({int((~opaque).sum())} pixels); the alpha channel is "
                "dropped and the stored colour values are used as the clean image.",
                ImageConversionWarning,
                stacklevel=4,
            )
        arr = arr[..., :3]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr


def _to_float(arr: np.ndarray, original: object) -> np.ndarray:
    if arr.size == 0:
        raise ImageError(
            f"image {describe_value(original)} is empty (height {arr.shape[0]}, width {arr.shape[1] if arr.ndim > 1 else 0}); "
            "expected at least 1x1 pixels. Check the crop or slice that produced it."
        )
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        if not np.isfinite(out).all():
            raise ImageError(f"image {describe_value(original)} contains NaN or inf values; expected finite values in [0, 1].")
        lo, hi = float(out.min()), float(out.max())
        if lo < 0.0 or hi > 1.0:
            raise ImageError(
                f"float image {describe_value(original)} has values in [{lo:.4g}, {hi:.4g}]; expected [0, 1]. "
                "Divide 0-255 data by 255 or pass it as uint8."
            )
        return out
    raise ImageError(
        f"image {describe_value(original)} has dtype {arr.dtype}; expected uint8, uint16 or float in [0, 1]."
    )


def load_image(image: ImageLike) -> torch.Tensor:
    """Load a clean image as a float32 tensor of shape (3, H, W) with values in [0, 1] (RGB).

    Accepts a path (any format Pillow reads), a PIL image, an HxW / HxWxC numpy array (uint8, uint16, or
    float in [0, 1]) or a CxHxW / HxW torch tensor (float in [0, 1] or uint8). See the module docstring for
    how RGBA and grayscale are handled.
    """
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a hard dependency
        Image = None

    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ImageError(f"image path {str(path)!r} does not exist or is not a file; pass an existing image file.")
        try:
            with Image.open(path) as img:
                img.load()
                arr = _from_pil(img)
        except (OSError, ValueError) as exc:
            raise ImageError(f"cannot read image {str(path)!r}: {exc}. Pass a PNG/JPEG/TIFF file Pillow can open.") from exc
        out = _to_float(arr, image)
    elif Image is not None and isinstance(image, Image.Image):
        out = _to_float(_from_pil(image), image)
    elif isinstance(image, np.ndarray):
        out = _to_float(_from_array(image, image), image)
    elif isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 2:
            t = t[None]
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
            raise ImageError(
                f"image tensor {describe_value(image)} has an unsupported shape; expected CxHxW with C in "
                "(1, 3, 4) or HxW. Permute an HxWxC tensor with t.permute(2, 0, 1)."
            )
        if t.dtype in (torch.bfloat16, torch.float16):  # numpy has no bfloat16: widen (exactly) to float32
            t = t.float()
        elif t.is_complex() or t.dtype == torch.bool:
            raise ImageError(
                f"image tensor {describe_value(image)} has dtype {t.dtype}; expected float in [0, 1] or uint8. "
                "Convert it, e.g. t.float() / 255 for 0-255 integer data."
            )
        arr = t.permute(1, 2, 0).numpy()
        out = _to_float(_from_array(arr, image), image)
    else:
        raise ImageError(
            f"image {describe_value(image)} of type {type(image).__name__} is not supported; expected a path, "
            "a PIL image, a numpy array or a torch tensor."
        )
    if out.shape[0] < 1 or out.shape[1] < 1:
        raise ImageError(f"image {describe_value(image)} is empty; expected at least 1x1 pixels.")
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def quantize(t: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to the nearest 8-bit level (values stay float in [0, 1])."""
    return torch.round(t.clamp(0.0, 1.0) * 255.0) / 255.0


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """A (3, H, W) or (1, 3, H, W) float tensor in [0, 1] as an HxWx3 uint8 array."""
    if t.ndim == 4:
        t = t[0]
    return (quantize(t.detach().float().cpu()) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
