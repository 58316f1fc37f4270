"""Natural patch banks: the random content an intervention puts into a block.

A bank is N patches of shape (3, p, q) with values in [0, 1]. Sources accepted by :func:`load_patches`:

- ``None``: the default bank, cut from the natural images bundled in ``cem_checks/data/images`` (public
  domain / CC0 photographs, see ``cem_checks/data/NOTICE.md``): 2500 patches of 8x8 px from each image at
  positions drawn with a fixed seed, 10000 in all, like the paper's DIV2K bank.
- a path to an ``.npy`` file (``numpy.save``, read without unpickling) holding an array as below; the paper's
  format is (N, h, w, 3) uint8;
- a path to a folder of images, or to a single image: non-overlapping ``patch_size`` tiles are cut from
  every image (sorted by file name);
- a numpy array or a torch tensor, uint8 or float in [0, 1]: (N, h, w, 3) or (N, 3, h, w) colour, (N, h, w, 1),
  (N, 1, h, w) or (N, h, w) gray (replicated to RGB). The channel axis is axis 3 or axis 1, whichever has 3 or 1
  entries; when both do, numpy arrays are read channels-last and tensors channels-first. A 3-D array that looks
  like one image (numpy: last axis of 1, 3 or 4; tensor: first axis of 3 or 4, or last of 1, 3 or 4) is refused
  rather than read as gray patches: add a leading axis (``arr[None]``) for one patch;
- a :class:`PatchBank`.

Unreadable sources raise :class:`~cem_checks.errors.PatchBankError` naming the source, what is wrong and what
is expected.
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
        """The patches as float32 (N, 3, h, w) in [0, 1] on ``device``: converted once per device and kept with the
        bank (the many ROIs of a sweep build their engines from one bank), so treat it as read-only."""
        key = str(torch.device(device))
        floats = self.__dict__.setdefault("_floats", {})
        if key not in floats:
            floats[key] = self.patches.to(device=device).float() / 255.0
        return floats[key]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_floats", None)  # the converted copies stay with the process that made them
        return state

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "count": len(self), "patch_shape": list(self.patch_shape), "sha256": self.sha256}


def _hash_tensor(t: torch.Tensor) -> str:
    h = hashlib.sha256(str(tuple(t.shape)).encode())
    h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


#: the array layouts :func:`load_patches` accepts, for error messages
ACCEPTED_LAYOUTS = (
    "(N, p, p, 3) or (N, 3, p, p) colour patches, (N, p, p, 1) or (N, 1, p, p) or (N, p, p) gray patches; uint8, or "
    "float in [0, 1]"
)


def _channels_last(shape: tuple[int, ...], layout: str, what: str) -> bool:
    """Whether the 4-D ``shape`` holds its channels last. The channel axis is axis 3 or axis 1, whichever has 1 or
    3 entries; when both do, the source's convention decides (``layout``: "nhwc" for numpy, "nchw" for torch)."""
    last, first = shape[3] in (1, 3), shape[1] in (1, 3)
    if last and first:
        return layout == "nhwc"
    if last or first:
        return last
    if 4 in (shape[1], shape[3]):
        raise PatchBankError(
            f"{what} has 4 channels (shape {tuple(shape)}): RGBA? Drop the alpha channel (arr[..., :3] for an "
            f"array, t[:, :3] for a tensor); expected {ACCEPTED_LAYOUTS}."
        )
    raise PatchBankError(
        f"{what} has shape {tuple(shape)}: neither axis 1 nor axis 3 is a channel axis of size 3 (RGB) or 1 "
        f"(gray); expected {ACCEPTED_LAYOUTS}."
    )


def _gray_axis(shape: tuple[int, ...], layout: str, what: str) -> None:
    """Refuse a 3-D ``shape`` that is more likely one image than a bank of (N, p, p) gray patches: numpy arrays
    whose last axis is 1, 3 or 4 (one h x w x C image); tensors whose first axis is 3 or 4 (one C x h x w image)
    or whose last is 1, 3 or 4."""
    a, h, w = shape
    if w in (1, 3, 4):
        raise PatchBankError(
            f"{what} has 3 dimensions {tuple(shape)}: that is one {a} x {h} x {w} (h x w x C) image or patch, not "
            f"a bank of gray patches {w} px wide. For one patch add a leading axis: arr[None] (shape (1, {a}, {h}, "
            f"{w})); for gray patches add a channel axis: arr[..., None]. Accepted: {ACCEPTED_LAYOUTS}."
        )
    if layout == "nchw" and a in (3, 4):
        raise PatchBankError(
            f"{what} has 3 dimensions {tuple(shape)}: that is one {a} x {h} x {w} (C x h x w) image or patch, or "
            f"{a} gray patches. For one patch add a leading axis: t[None] (shape (1, {a}, {h}, {w})); for gray "
            f"patches add a channel axis: t[:, None]. Accepted: {ACCEPTED_LAYOUTS}."
        )


def _to_uint8_nchw(arr: np.ndarray, layout: str, what: str) -> torch.Tensor:
    """``arr`` as a (N, 3, h, w) uint8 tensor. ``layout`` ("nhwc" for numpy sources, "nchw" for torch tensors)
    decides where both 4-D layouts fit and which 3-D shapes look like one image; ``what`` names the source in
    error messages."""
    if arr.ndim == 3:
        _gray_axis(arr.shape, layout, what)
        arr = arr[:, None]
    if arr.ndim != 4:
        raise PatchBankError(
            f"{what} has {arr.ndim} dimension{'' if arr.ndim == 1 else 's'} {tuple(arr.shape)}; it needs 3 or 4 "
            f"dimensions: {ACCEPTED_LAYOUTS}."
        )
    if _channels_last(arr.shape, layout, what):
        arr = arr.transpose(0, 3, 1, 2)
    n, c = arr.shape[:2]
    if n == 0:
        raise PatchBankError(f"{what} is empty (shape {tuple(arr.shape)}); it needs at least one patch.")
    if arr.shape[2] < 1 or arr.shape[3] < 1:
        raise PatchBankError(f"{what} has empty patches (shape {tuple(arr.shape)}); expected {ACCEPTED_LAYOUTS}.")
    if arr.dtype == np.uint8:
        out = arr
    elif np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.all() or arr.min() < 0 or arr.max() > 1:
            seen = (f"{int(arr.size - finite.sum())} non-finite values" if not finite.all()
                    else f"values outside [0, 1] (from {arr.min():.4g} to {arr.max():.4g})")
            raise PatchBankError(
                f"float {what} has {seen}; expected floats in [0, 1] (divide 0-255 data by 255) or uint8."
            )
        out = np.round(arr * 255.0).astype(np.uint8)
    else:
        raise PatchBankError(
            f"{what} has dtype {arr.dtype}; expected uint8 or float in [0, 1] (convert 0-255 integers with "
            "arr.astype(numpy.uint8))."
        )
    if c == 1:
        out = np.repeat(out, 3, axis=1)
    return torch.from_numpy(np.ascontiguousarray(out))


_NPY_EXPECTED = f"expected an array saved with numpy.save: {ACCEPTED_LAYOUTS}"


def _npy_not_array(head: bytes) -> str | None:
    """Why a file whose first bytes are ``head`` is not a .npy file, or None when it starts like one."""
    if head[:6] == b"\x93NUMPY":
        return None
    if not head:
        kind = "it is empty"
    elif head[:2] == b"PK":
        kind = "it is a zip archive (numpy.savez writes .npz archives: save one array with numpy.save)"
    elif head[:1] == b"\x80":
        kind = "it is a pickle (save the array itself with numpy.save)"
    elif all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        kind = "it is text (numpy.savetxt writes text: use numpy.save)"
    else:
        kind = "its first bytes are " + repr(head[:8])
    return f"it does not start with the .npy signature \\x93NUMPY: {kind}"


def _npy_problem(path: Path) -> str | None:
    """What is wrong with the .npy file ``path`` (read from its header, never unpickled), or None when nothing
    visible is."""
    from numpy.lib import format as npy_format

    size = path.stat().st_size
    with open(path, "rb") as fh:
        problem = _npy_not_array(fh.read(16))
        if problem is not None:
            return problem
        fh.seek(0)
        try:
            version = npy_format.read_magic(fh)
            read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            shape, _, dtype = read(fh)
        except (ValueError, EOFError, OSError) as exc:
            return f"its header is truncated or damaged ({exc})"
        start = fh.tell()
    if dtype.hasobject:
        return (f"it holds an object array (dtype {dtype}: Python objects, which only a pickle can restore; the "
                "patches must be a plain numeric array)")
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size - start < need:
        return (f"it is truncated: its header announces shape {tuple(shape)} {dtype} ({need} bytes of data), the "
                f"file holds {size - start}")
    return None


def _read_npy(path: Path) -> np.ndarray:
    """The array of the .npy file ``path``; :class:`PatchBankError` naming the file and what is wrong otherwise
    (never unpickles)."""
    what = f"patch bank file {str(path)!r}"
    try:
        with open(path, "rb") as fh:
            problem = _npy_not_array(fh.read(16))
        if problem is None:
            try:
                return np.load(path, allow_pickle=False)
            except Exception as exc:  # ValueError, EOFError, OSError: diagnosed from the header below
                problem = _npy_problem(path) or f"numpy cannot read it ({type(exc).__name__}: {exc})"
    except OSError as exc:
        problem = f"it cannot be read ({exc})"
    raise PatchBankError(f"{what} is not a readable .npy array: {problem}; {_NPY_EXPECTED}.")


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
    return _to_uint8_nchw(np.concatenate(tiles), "nhwc", f"patches cut from {[str(p) for p in paths]}")


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
    return PatchBank(_to_uint8_nchw(arr, "nhwc", "the bundled patch bank"), f"bundled:{len(arr)}x{patch_size}px")


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
            arr = _read_npy(path)
            return PatchBank(_to_uint8_nchw(arr, "nhwc", f"patch bank file {str(path)!r}"), f"npy:{path}")
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return PatchBank(_tiles([path], patch_size), f"image:{path}")
        raise PatchBankError(
            f"patch bank file {str(path)!r} has an unsupported suffix {path.suffix!r}; expected .npy or an image."
        )
    if isinstance(patches, np.ndarray):
        what = f"patch bank {describe_value(patches)}"
        return PatchBank(_to_uint8_nchw(patches, "nhwc", what), f"array:{patches.shape[0] if patches.ndim else 0}")
    if isinstance(patches, torch.Tensor):
        what = f"patch bank {describe_value(patches)}"
        t = patches.detach().cpu()
        arr = (t.float() if t.dtype == torch.bfloat16 else t).numpy()  # numpy has no bfloat16
        return PatchBank(_to_uint8_nchw(arr, "nchw", what), f"tensor:{arr.shape[0] if arr.ndim else 0}")
    raise PatchBankError(
        f"patches={describe_value(patches)} of type {type(patches).__name__} is not a patch source; expected None, "
        "a path (.npy, image folder or image), a numpy array, a torch tensor or a PatchBank."
    )
