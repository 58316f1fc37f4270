"""Choosing the ROIs of a sweep: :func:`roi_grid` (every ROI on a grid), :func:`roi_sample` (a seeded sample,
optionally of flat or textured ROIs) and :func:`texture_energy` (the gradient energy that ranks them)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import CEMInputError, ROIError, describe_value, validate_int

TEXTURES = ("any", "flat", "textured")
#: ITU-R BT.601 luma weights of R, G, B (those of Pillow's "L" conversion).
LUMA = (0.299, 0.587, 0.114)


def _shape_hw(shape: Any) -> tuple[int, int]:
    if not (isinstance(shape, (tuple, list)) and len(shape) == 2
            and all(not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= 1 for v in shape)):
        raise ROIError(
            f"shape={describe_value(shape)} is not an (H, W) pair of positive integers (output px); pass e.g. "
            "image.shape[-2:] of a (3, H, W) tensor, or (256, 256)."
        )
    return int(shape[0]), int(shape[1])


def roi_grid(shape: tuple[int, int], size: int, step: int | None = None) -> list[tuple[int, int, int]]:
    """Every ROI ``(x, y, size)`` of side ``size`` (output px) whose top-left corner lies on a grid of ``step``
    px (default: ``size``, ROIs that tile the image) inside an ``(H, W)`` output image, row-major (y, then x).

    ``roi_grid((32, 32), 16)`` gives ``[(0, 0, 16), (16, 0, 16), (0, 16, 16), (16, 16, 16)]``. ROIs that would
    cross the right or bottom edge are left out. Raises :class:`~cem_checks.errors.ROIError` when ``size``
    exceeds the image.
    """
    H, W = _shape_hw(shape)
    size = validate_int("size", size, 1)
    step = size if step is None else validate_int("step", step, 1)
    if size > H or size > W:
        raise ROIError(f"size={size} px does not fit in the {W}x{H} (width x height) image; choose size <= {min(H, W)}.")
    return [(x, y, size) for y in range(0, H - size + 1, step) for x in range(0, W - size + 1, step)]


def _luma(image: Any) -> np.ndarray:
    """(H, W) float64 luma in [0, 1] of anything :func:`~cem_checks.load_image` reads."""
    from ..images import load_image

    t = load_image(image).double().numpy()
    return LUMA[0] * t[0] + LUMA[1] * t[1] + LUMA[2] * t[2]


def _window_sums(a: np.ndarray, xs: np.ndarray, ys: np.ndarray, h: int, w: int) -> np.ndarray:
    """Sums of ``a`` over the windows of h rows and w columns whose top-left corners are (ys, xs) (integral image)."""
    c = np.zeros((a.shape[0] + 1, a.shape[1] + 1))
    c[1:, 1:] = a.cumsum(0).cumsum(1)
    return c[ys + h, xs + w] - c[ys, xs + w] - c[ys + h, xs] + c[ys, xs]


def _energies(luma: np.ndarray, rois: list[tuple[int, int, int]]) -> np.ndarray:
    """:func:`texture_energy` of every ROI (all of one size) of a luma image."""
    if not rois:
        return np.zeros(0)
    size = rois[0][2]
    if size < 2:
        return np.zeros(len(rois))
    xs = np.array([r[0] for r in rois])
    ys = np.array([r[1] for r in rois])
    dx2 = np.diff(luma, axis=1) ** 2  # (H, W - 1): horizontal neighbour differences
    dy2 = np.diff(luma, axis=0) ** 2  # (H - 1, W)
    pairs = size * (size - 1)  # horizontal (and vertical) neighbour pairs inside a size x size ROI
    return np.maximum(_window_sums(dx2, xs, ys, size, size - 1) / pairs + _window_sums(dy2, xs, ys, size - 1, size) / pairs, 0.0)


def _check_inside(roi: Any, H: int, W: int) -> tuple[int, int, int]:
    from ..grid import ROI

    r = ROI.parse(roi)
    if r.x + r.size > W or r.y + r.size > H:
        raise ROIError(
            f"roi (x={r.x}, y={r.y}, size={r.size}) reaches column {r.x + r.size} and row {r.y + r.size}, outside "
            f"the {W}x{H} (width x height) image; choose x + size <= {W} and y + size <= {H}."
        )
    return r.as_tuple()


def texture_energy(image: Any, roi: Any) -> float:
    """Gradient energy of the clean ROI: ``mean(dx**2) + mean(dy**2)`` of its luma, where dx (dy) are the
    differences between horizontally (vertically) adjacent pixels inside the ROI, luma = 0.299 R + 0.587 G +
    0.114 B with values in [0, 1]. Unit: squared luma difference per px (luma in [0, 1]); 0 for a flat ROI, 2 for a
    1-px black and white checkerboard (the maximum), 0 for a ROI of one pixel.

    ``image``: anything :func:`~cem_checks.load_image` reads (path, array, (3, H, W) tensor); ``roi``:
    ``(x, y, size)`` in output px, inside the image (else :class:`~cem_checks.errors.ROIError`).
    """
    luma = _luma(image)
    r = _check_inside(roi, *luma.shape)
    return float(_energies(luma, [r])[0])


def roi_sample(image: Any, n: int, size: int, seed: int = 0, texture: str = "any", *, step: int | None = None,
               scale: int = 1) -> list[tuple[int, int, int]]:
    """``n`` ROIs of side ``size`` (output px) drawn without replacement, by a numpy Generator seeded with ``seed``,
    among the grid ROIs of ``image`` (:func:`roi_grid` with ``step``, default ``size // 2``), returned in grid
    order (row-major).

    ``texture`` picks the class by :func:`texture_energy`: ``"any"`` every grid ROI, ``"flat"`` the lowest third
    of the energies, ``"textured"`` the highest third (``ceil(candidates / 3)`` ROIs each, ranked by energy, ties
    in grid order). ``scale`` (the task's scale, e.g. 4 for ``"sr4"``) aligns the ROIs: ``size`` must be a
    multiple of it and ``step`` is rounded down to one (at least ``scale``), so x and y are multiples too.

    ``image``: anything :func:`~cem_checks.load_image` reads, e.g. the clean (3, H, W) tensor a sweep passes to
    a ``rois`` callable: ``rois=lambda img: cc.roi_sample(img, 8, 16, seed=0, texture="flat")``.
    """
    n = validate_int("n", n, 1)
    size = validate_int("size", size, 1)
    scale = validate_int("scale", scale, 1)
    seed = validate_int("seed", seed, 0)
    if texture not in TEXTURES:
        raise CEMInputError(f"texture={texture!r} is not one of {', '.join(map(repr, TEXTURES))}; pick one of them.")
    if size % scale:
        raise ROIError(f"size={size} px is not a multiple of scale={scale}; ROIs must cover whole input pixels: use "
                       f"size={max(scale, size - size % scale)}.")
    step = max(1, size // 2) if step is None else validate_int("step", step, 1)
    step = max(scale, step - step % scale)
    luma = _luma(image)
    grid = roi_grid(luma.shape, size, step)
    if texture == "any":
        pool = grid
    else:
        energy = _energies(luma, grid)
        k = math.ceil(len(grid) / 3)
        order = np.argsort(energy, kind="stable")
        chosen = order[:k] if texture == "flat" else order[::-1][:k]
        pool = [grid[i] for i in sorted(int(i) for i in chosen)]
    if n > len(pool):
        H, W = luma.shape
        raise ROIError(
            f"roi_sample asks for n={n} ROIs but the {W}x{H} image has only {len(pool)} {texture!r} grid ROIs of "
            f"size {size} at step {step} (of {len(grid)} in all); lower n, use a smaller step or size, or "
            "texture='any'."
        )
    picked = np.random.default_rng(seed).choice(len(pool), size=n, replace=False)
    return [pool[i] for i in sorted(int(i) for i in picked)]


def _energies_mixed(luma: np.ndarray, rois: list[tuple[int, int, int]]) -> list[float]:
    """:func:`texture_energy` of ROIs of any sizes, in order."""
    out = [0.0] * len(rois)
    for size in {r[2] for r in rois}:
        idx = [k for k, r in enumerate(rois) if r[2] == size]
        for k, e in zip(idx, _energies(luma, [rois[k] for k in idx])):
            out[k] = float(e)
    return out
