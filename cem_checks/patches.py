"""Natural patch banks: the random content an intervention puts into a block.

A bank is N patches of shape (3, p, q) with values in [0, 1]. Sources accepted by :func:`load_patches`:

- ``None``: the default bank, cut from the natural images bundled in ``cem_checks/data/images`` (public
  domain / CC0 photographs, see ``cem_checks/data/NOTICE.md``): 2500 patches of 8x8 px from each image at
  positions drawn with a fixed seed, 10000 in all, like the paper's DIV2K bank.
- a path to an ``.npy`` file holding (N, h, w, 3) uint8 (the paper's format) or float in [0, 1];
- a path to a folder of images, or to a single image: non-overlapping ``patch_size`` tiles are cut from
  every image (sorted by file name);
- a numpy array (N, h, w, 3) / (N, h, w) or a torch tensor (N, 3, h, w) / (N, 1, h, w), uint8 or float in
  [0, 1]. Single-channel patches are replicated to RGB;
- a :class:`PatchBank`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import PatchBankError, describe_value

DATA_DIR = Path(__file__).resolve().parent / "data"
IMAGE_DIR = DATA_DIR / "images"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True, eq=False)
class PatchBank:
    """A natural patch bank: ``patches`` is a (N, 3, h, w) uint8 CPU tensor; ``source`` says where it came from."""

    patches: torch.Tensor
    source: str

    def __len__(self) -> int:
        return int(self.patches.shape[0])

    @property
    def patch_shape(self) -> tuple[int, int]:
        return (int(self.patches.shape[2]), int(self.patches.shape[3]))

    @property
    def sha256(self) -> str:
        """Content hash of the bank (shape and bytes), for cache keys and provenance."""
        return _hash_tensor(self.patches)

    def as_float(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The patches as float32 (N, 3, h, w) in [0, 1] on ``device``."""
        return self.patches.to(device=device).float() / 255.0

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "count": len(self), "patch_shape": list(self.patch_shape), "sha256": self.sha256}


def _hash_tensor(t: torch.Tensor) -> str:
    h = hashlib.sha256(str(tuple(t.shape)).encode())
    h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _to_uint8_nchw(arr: np.ndarray, layout: str, original: object) -> torch.Tensor:
    if arr.ndim == 3:
        arr = arr[:, None] if layout == "nchw" else arr[..., None]
    if arr.ndim != 4:
        raise PatchBankError(
            f"patch bank {describe_value(original)} must have 4 dimensions; expected (N, h, w, 3) for numpy arrays "
            "and .npy files, or (N, 3, h, w) for torch tensors."
        )
    if layout == "nhwc":
        arr = arr.transpose(0, 3, 1, 2)
    n, c = arr.shape[:2]
    if c not in (1, 3):
        want = "(N, h, w, 3)" if layout == "nhwc" else "(N, 3, h, w)"
        raise PatchBankError(
            f"patch bank {describe_value(original)} has {c} channels; expected {want} RGB patches (or 1 channel). "
            "Check the layout: numpy arrays are NHWC, torch tensors NCHW."
        )
    if n == 0:
        raise PatchBankError(f"patch bank {describe_value(original)} is empty; it needs at least one patch.")
    if arr.shape[2] < 1 or arr.shape[3] < 1:
        raise PatchBankError(f"patch bank {describe_value(original)} has empty patches.")
    if arr.dtype == np.uint8:
        out = arr
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise PatchBankError(
                f"float patch bank {describe_value(original)} has values outside [0, 1] or non-finite values; "
                "expected floats in [0, 1] (divide 0-255 data by 255) or uint8."
            )
        out = np.round(arr * 255.0).astype(np.uint8)
    else:
        raise PatchBankError(
            f"patch bank {describe_value(original)} has dtype {arr.dtype}; expected uint8 or float in [0, 1]."
        )
    if c == 1:
        out = np.repeat(out, 3, axis=1)
    return torch.from_numpy(np.ascontiguousarray(out))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _tiles(paths: list[Path], patch_size: int) -> torch.Tensor:
    from .images import load_image, to_uint8

    tiles = []
    for path in paths:
        img = to_uint8(load_image(path))  # HxWx3 uint8
        H, W = img.shape[:2]
        nh, nw = H // patch_size, W // patch_size
        if nh == 0 or nw == 0:
            continue
        t = img[: nh * patch_size, : nw * patch_size].reshape(nh, patch_size, nw, patch_size, 3)
        tiles.append(t.transpose(0, 2, 1, 3, 4).reshape(-1, patch_size, patch_size, 3))
    if not tiles:
        raise PatchBankError(
            f"no {patch_size}x{patch_size} patch could be cut from {[str(p) for p in paths]}; the folder needs at "
            f"least one readable image of {patch_size}x{patch_size} px or more."
        )
    return _to_uint8_nchw(np.concatenate(tiles), "nhwc", paths)


@lru_cache(maxsize=4)
def _default_bank(per_image: int, patch_size: int, seed: int) -> PatchBank:
    from .images import load_image, to_uint8

    rng = np.random.default_rng(seed)
    out = []
    for path in _image_files(IMAGE_DIR):
        img = to_uint8(load_image(path))
        H, W = img.shape[:2]
        ys = rng.integers(0, H - patch_size + 1, per_image)
        xs = rng.integers(0, W - patch_size + 1, per_image)
        idx_y = ys[:, None] + np.arange(patch_size)
        idx_x = xs[:, None] + np.arange(patch_size)
        out.append(img[idx_y[:, :, None], idx_x[:, None, :]])
    arr = np.concatenate(out)
    return PatchBank(_to_uint8_nchw(arr, "nhwc", "bundled images"), f"bundled:{len(arr)}x{patch_size}px")


def default_patch_bank() -> PatchBank:
    """The default bank: 2500 patches of 8x8 px from each bundled natural image (seed 0), 10000 in all."""
    return _default_bank(2500, 8, 0)


def bundled_images() -> dict[str, Path]:
    """The bundled natural images (name -> path); see ``cem_checks/data/NOTICE.md`` for sources and licences."""
    return {p.stem: p for p in _image_files(IMAGE_DIR)}


def load_patches(patches: Any = None, *, patch_size: int = 8) -> PatchBank:
    """Resolve any accepted patch source (see the module docstring) to a :class:`PatchBank`."""
    if patches is None:
        return default_patch_bank()
    if isinstance(patches, PatchBank):
        return patches
    if isinstance(patches, (str, os.PathLike)):
        path = Path(patches)
        if not path.exists():
            raise PatchBankError(
                f"patch bank path {str(path)!r} does not exist; pass an .npy file of (N, h, w, 3) uint8 patches, a "
                "folder of images, or None for the bundled bank."
            )
        if path.is_dir():
            files = _image_files(path)
            if not files:
                raise PatchBankError(
                    f"patch folder {str(path)!r} holds no image file ({', '.join(sorted(IMAGE_SUFFIXES))}); add "
                    "images or pass an .npy patch array."
                )
            return PatchBank(_tiles(files, patch_size), f"folder:{path}")
        if path.suffix.lower() == ".npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise PatchBankError(f"cannot read patch bank {str(path)!r} as a numpy array: {exc}.") from exc
            return PatchBank(_to_uint8_nchw(arr, "nhwc", path), f"npy:{path}")
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return PatchBank(_tiles([path], patch_size), f"image:{path}")
        raise PatchBankError(
            f"patch bank file {str(path)!r} has an unsupported suffix {path.suffix!r}; expected .npy or an image."
        )
    if isinstance(patches, np.ndarray):
        return PatchBank(_to_uint8_nchw(patches, "nhwc", patches), f"array:{patches.shape[0] if patches.ndim else 0}")
    if isinstance(patches, torch.Tensor):
        arr = patches.detach().cpu().numpy()
        return PatchBank(_to_uint8_nchw(arr, "nchw", patches), f"tensor:{arr.shape[0] if arr.ndim else 0}")
    raise PatchBankError(
        f"patches={describe_value(patches)} of type {type(patches).__name__} is not a patch source; expected None, "
        "a path (.npy, image folder or image), a numpy array, a torch tensor or a PatchBank."
    )
