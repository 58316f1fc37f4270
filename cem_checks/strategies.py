"""Hypothesis strategies for causal-effect-map tests, and a Hypothesis settings profile for them.

Optional: ``import cem_checks`` does not import this module (nor Hypothesis); import it explicitly::

    from hypothesis import given
    from cem_checks.strategies import cem_hypothesis_settings, rois

    @cem_hypothesis_settings
    @given(roi=rois((32, 32), size=(4, 8)))
    def test_reach(roi): ...

Strategies:

- :func:`rois`: square ROIs (:class:`~cem_checks.grid.ROI`, output px) inside an output, aligned to the scale.
- :func:`block_sizes`: block sides in input px, optionally only those that tile a side exactly.
- :func:`natural_images`: (h, w, 3) uint8 crops of the bundled natural images. A crop is drawn by *seed*
  (one integer chooses the image and the position, see :func:`natural_crop`), never pixel by pixel: every
  example is a real photograph, and a failing example shrinks to seed 0.
- :func:`tasks`: degradation tasks (:class:`~cem_checks.tasks.SuperResolution`, :class:`Denoising`,
  :class:`Deraining`).

Profile ``"cem"`` (:data:`CEM_PROFILE`, also available as the decorator :data:`cem_hypothesis_settings`): no
deadline (a map takes many forward passes), 10 examples, derandomized with no example database, so that a suite
of CEM properties is reproducible run to run; health checks for slow data generation suppressed. Load it for a
whole suite with ``hypothesis.settings.load_profile("cem")``. (The pytest plugin's ``cem_settings`` fixture is
something else: a test's resolved pytest-cem settings.)
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from .errors import CEMInputError, validate_int
from .grid import ROI
from .patches import bundled_images
from .tasks import Denoising, Deraining, SuperResolution

CEM_PROFILE = "cem"
settings.register_profile(
    CEM_PROFILE,
    deadline=None,
    max_examples=10,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
#: The ``"cem"`` profile as a decorator: ``@cem_hypothesis_settings`` above ``@given(...)``.
cem_hypothesis_settings = settings.get_profile(CEM_PROFILE)

#: Seeds drawn by :func:`natural_images` lie in [0, MAX_SEED].
MAX_SEED = 2**32 - 1

__all__ = [
    "CEM_PROFILE",
    "block_sizes",
    "cem_hypothesis_settings",
    "crop_origin",
    "natural_crop",
    "natural_images",
    "rois",
    "tasks",
]


def _hw(name: str, value: Any) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        v = validate_int(name, value, 1)
        return v, v
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return validate_int(f"{name}[0]", value[0], 1), validate_int(f"{name}[1]", value[1], 1)
    raise CEMInputError(f"{name}={value!r} must be an integer or a (height, width) pair of integers (px).")


# ---------------------------------------------------------------------------------------------- rois
def rois(output_shape: Sequence[int], size: int | tuple[int, int] | None = None, scale: int = 1) -> st.SearchStrategy:
    """Square ROIs inside an output of ``output_shape`` = (height, width) output px, aligned to ``scale``.

    ``size``: the ROI side in output px: an integer, an inclusive ``(low, high)`` range, or None for every
    side from ``scale`` to ``min(height, width)``. Only multiples of ``scale`` are drawn (whole input pixels).
    Shrinks towards the smallest ROI at the top-left corner.
    """
    H, W = _hw("output_shape", tuple(output_shape) if isinstance(output_shape, (tuple, list)) else output_shape)
    scale = validate_int("scale", scale, 1)
    if H < scale or W < scale:
        raise CEMInputError(f"output_shape=({H}, {W}) is smaller than one input pixel at scale {scale}.")
    top = min(H, W)
    if size is None:
        lo, hi = scale, top
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        lo, hi = validate_int("size[0]", size[0], 1), validate_int("size[1]", size[1], 1)
    else:
        lo = hi = validate_int("size", size, 1)
    k_lo, k_hi = -(-lo // scale), min(hi, top) // scale
    if k_lo > k_hi:
        raise CEMInputError(
            f"size={size!r} allows no ROI side that is a multiple of scale={scale} and fits the {W}x{H} (width x "
            f"height) output; choose sides between {scale} and {top - top % scale} in steps of {scale}."
        )

    @st.composite
    def draw_roi(draw) -> ROI:
        side = draw(st.integers(k_lo, k_hi)) * scale
        x = draw(st.integers(0, (W - side) // scale)) * scale
        y = draw(st.integers(0, (H - side) // scale)) * scale
        return ROI(x, y, side)

    return draw_roi()


def block_sizes(min_size: int = 1, max_size: int = 8, *, divides: int | None = None) -> st.SearchStrategy:
    """Block sides in input px in ``[min_size, max_size]``; with ``divides=n`` only divisors of ``n`` (blocks
    that tile an ``n``-px side exactly, so the engine trims nothing). Shrinks towards ``min_size``."""
    lo = validate_int("min_size", min_size, 1)
    hi = validate_int("max_size", max_size, 1)
    if lo > hi:
        raise CEMInputError(f"min_size={lo} is above max_size={hi}; give min_size <= max_size.")
    if divides is None:
        return st.integers(lo, hi)
    n = validate_int("divides", divides, 1)
    options = [b for b in range(lo, hi + 1) if n % b == 0]
    if not options:
        raise CEMInputError(f"no block size in [{lo}, {hi}] divides {n}; widen the range or change divides.")
    return st.sampled_from(options)


# ------------------------------------------------------------------------------------- natural images
@lru_cache(maxsize=None)
def _bundled_uint8(name: str) -> np.ndarray:
    from .images import load_image, to_uint8

    arr = to_uint8(load_image(bundled_images()[name]))
    arr.flags.writeable = False
    return arr


def _names(names: Sequence[str] | None) -> tuple[str, ...]:
    available = sorted(bundled_images())
    if names is None:
        return tuple(available)
    if isinstance(names, str) or not isinstance(names, (tuple, list)) or not names:
        raise CEMInputError(f"names={names!r} must be a non-empty list of bundled image names from {available}.")
    unknown = [n for n in names if n not in available]
    if unknown:
        raise CEMInputError(f"names {unknown} are not bundled images; choose from {available}.")
    return tuple(names)


#: Candidate positions :func:`crop_origin` tries per seed before giving up on ``min_std``.
MAX_TRIES = 1000


def crop_origin(seed: int, size: int | tuple[int, int] = 32, names: Sequence[str] | None = None,
                min_std: float = 0.0) -> tuple[str, int, int]:
    """The bundled image name and the (top, left) px of the crop that ``seed`` selects (see :func:`natural_crop`)."""
    h, w = _hw("size", size)
    pool = _names(names)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= MAX_SEED:
        raise CEMInputError(f"seed={seed!r} must be an integer in [0, {MAX_SEED}].")
    if isinstance(min_std, bool) or not isinstance(min_std, (int, float)) or not 0 <= min_std < 128:
        raise CEMInputError(f"min_std={min_std!r} must be a number in [0, 128) (0-255 scale), e.g. 8.")
    shapes = {n: _bundled_uint8(n).shape[:2] for n in pool}
    small = [n for n, (H, W) in shapes.items() if H < h or W < w]
    if small:
        raise CEMInputError(
            f"a {h}x{w} crop (height x width) does not fit the bundled images {small} "
            f"({', '.join(f'{shapes[n][0]}x{shapes[n][1]}' for n in small)}); choose a smaller size or other names."
        )
    rng = np.random.default_rng(int(seed))
    for _ in range(MAX_TRIES):
        name = pool[int(rng.integers(len(pool)))]
        H, W = shapes[name]
        top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        if min_std <= 0 or _bundled_uint8(name)[top : top + h, left : left + w].std() >= min_std:
            return name, top, left
    raise CEMInputError(
        f"no {h}x{w} crop with a pixel standard deviation >= {min_std:g} was found in {MAX_TRIES} positions drawn "
        f"from seed {seed} in {list(pool)}; lower min_std or enlarge the crop."
    )


def natural_crop(seed: int, size: int | tuple[int, int] = 32, names: Sequence[str] | None = None,
                 min_std: float = 0.0) -> np.ndarray:
    """A (h, w, 3) uint8 crop of a bundled natural image. ``seed`` seeds a ``numpy.random.default_rng`` that
    picks the image among ``names`` (default: all, sorted) and the top-left corner uniformly; with ``min_std``
    > 0 it keeps drawing positions until the crop's pixel standard deviation (0-255 scale) reaches
    ``min_std`` (photographs hold flat regions: sky, black backgrounds). ``size``: ``h`` = ``w`` or ``(h, w)``
    px. Same arguments, same crop."""
    h, w = _hw("size", size)
    name, top, left = crop_origin(seed, (h, w), names, min_std)
    return np.array(_bundled_uint8(name)[top : top + h, left : left + w])


def natural_images(size: int | tuple[int, int] = 32, names: Sequence[str] | None = None,
                   min_std: float = 0.0) -> st.SearchStrategy:
    """(h, w, 3) uint8 crops of the bundled natural images, drawn by seed (see :func:`natural_crop`)."""
    h, w = _hw("size", size)
    crop_origin(0, (h, w), names, min_std)  # validate now, not at the first draw
    return st.integers(0, MAX_SEED).map(lambda seed: natural_crop(seed, (h, w), names, min_std))


# ------------------------------------------------------------------------------------------- tasks
TASK_KINDS = ("sr", "dn", "dr")


def tasks(kinds: Sequence[str] = TASK_KINDS, *, scales: Sequence[int] = (2, 4),
          sigmas: Sequence[float] = (15, 25, 50)) -> st.SearchStrategy:
    """Degradation tasks of the given ``kinds``: ``"sr"`` (``SuperResolution(scale)``, ``scale`` from
    ``scales``), ``"dn"`` (``Denoising(sigma, seed)``, ``sigma`` from ``sigmas`` on the 0-255 scale) and ``"dr"``
    (``Deraining(seed)``); noise and rain seeds are drawn in [0, 2**16)."""
    if isinstance(kinds, str) or not kinds or any(k not in TASK_KINDS for k in kinds):
        raise CEMInputError(f"kinds={kinds!r} must be a non-empty list drawn from {list(TASK_KINDS)}.")
    seeds = st.integers(0, 2**16 - 1)
    options = []
    if "sr" in kinds:
        if not scales:
            raise CEMInputError("scales=() is empty; give at least one integer scale >= 1, e.g. (2, 4).")
        options.append(st.sampled_from([SuperResolution(validate_int("scale", s, 1)) for s in scales]))
    if "dn" in kinds:
        if not sigmas:
            raise CEMInputError("sigmas=() is empty; give at least one noise level on the 0-255 scale, e.g. (25,).")
        for sigma in sigmas:
            Denoising(sigma)  # raises CEMInputError now rather than at the first draw
        options.append(st.builds(Denoising, st.sampled_from(list(sigmas)), seeds))
    if "dr" in kinds:
        options.append(st.builds(Deraining, seeds))
    return st.one_of(options)
