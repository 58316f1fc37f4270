"""The result of a causal effect map: :class:`CEMResult`."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write
from .errors import CEMInputError
from .grid import ROI, BlockGrid

FORMAT_VERSION = 1

#: Per-block arrays of a result, each (rows, cols) except ``samples_db`` (rows, cols, max_draws).
ARRAY_FIELDS = (
    "effect",
    "raw_effect",
    "stderr",
    "n_samples",
    "ci_low",
    "ci_high",
    "support",
    "flagged",
    "roi_mask",
    "distance",
    "samples_db",
)

#: Optional images of a result: the model input and output of the full image, uint8 (h, w, 3), or None.
IMAGE_FIELDS = ("input_image", "output_image")


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


def _image(value: Any, name: str, shape: tuple) -> np.ndarray | None:
    """``value`` as a read-only uint8 (h, w, 3) array whose (h, w) is ``shape`` (unless ``shape`` is (0, 0)),
    or None."""
    if value is None:
        return None
    a = np.asarray(value)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise CEMInputError(
            f"CEMResult.{name} has dtype {a.dtype} and shape {a.shape}; expected a uint8 (height, width, 3) RGB "
            "array (e.g. np.round(np.clip(x, 0, 1) * 255).astype(np.uint8) of a float image), or None."
        )
    if tuple(shape) != (0, 0) and a.shape[:2] != tuple(shape):
        raise CEMInputError(
            f"CEMResult.{name} is {a.shape[1]}x{a.shape[0]} px (width x height) but the result's "
            f"{'input' if name == 'input_image' else 'output'}_shape is {tuple(shape)} (height, width); pass the "
            "image of the whole (trimmed) model input or output, or None."
        )
    return _readonly(a)


def _json_safe(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _record(result: Any, header: dict[str, Any]) -> dict[str, Any]:
    """``header`` plus every field of the dataclass ``result`` (JSON-safe; the images left out) and ``has_images``."""
    rec: dict[str, Any] = dict(header)
    for f in fields(result):
        if f.name in IMAGE_FIELDS:
            continue
        v = getattr(result, f.name)
        rec[f.name] = list(v.as_tuple()) if isinstance(v, ROI) else _json_safe(v)
    rec["has_images"] = result.input_image is not None and result.output_image is not None
    return rec


def _block_frame(result: Any, columns: dict[str, np.ndarray]):
    """A tidy pandas DataFrame of ``result``'s blocks (row-major): position, distance, ROI membership, ``columns``."""
    import pandas as pd

    rows, cols = np.divmod(np.arange(result.rows * result.cols), result.cols)
    b = result.block_size
    base = {
        "row": rows.astype(np.int64),
        "col": cols.astype(np.int64),
        "top_px": (rows * b).astype(np.int64),
        "left_px": (cols * b).astype(np.int64),
        "distance_px": result.distance.ravel().astype(np.int64),
        "in_roi": result.roi_mask.ravel().astype(bool),
    }
    return pd.DataFrame({**base, **{k: np.asarray(v).ravel() for k, v in columns.items()}})


def _save(result: Any, path: str | os.PathLike, array_fields: tuple[str, ...], header: dict[str, Any]) -> Path:
    """Write ``result`` to an ``.npz`` (its arrays, its images when present, a JSON ``__meta__`` entry; no pickle)."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
    meta = {f.name: getattr(result, f.name) for f in fields(result) if f.name not in array_fields + IMAGE_FIELDS}
    meta.update({"roi": list(result.roi.as_tuple()), **header})
    arrays = {name: getattr(result, name) for name in array_fields}
    arrays.update({name: getattr(result, name) for name in IMAGE_FIELDS if getattr(result, name) is not None})
    return atomic_write(
        path, lambda fh: np.savez_compressed(fh, __meta__=np.array(json.dumps(_json_safe(meta))), **arrays)
    )


def _load(path: str | os.PathLike, array_fields: tuple[str, ...], noun: str, what: str) -> tuple[dict, dict]:
    """``(meta, arrays)`` of an ``.npz`` written by :func:`_save`; :class:`CEMInputError` naming ``noun`` (e.g. "CEM
    result") and ``what`` (the class that writes it) when the file is missing or not such a file."""
    path = Path(path)
    if not path.is_file():
        raise CEMInputError(f"no {noun} file at {str(path)!r}; pass the path written by {what}.save().")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"]))
            arrays = {name: data[name] for name in array_fields}
            arrays.update({name: data[name] for name in IMAGE_FIELDS if name in data.files})
    except (KeyError, ValueError, OSError) as exc:
        raise CEMInputError(f"{str(path)!r} is not a {noun} file written by {what}.save(): {exc}.") from exc
    return meta, arrays


def _validate_version(meta: dict, path: Any, recompute: str) -> None:
    version = meta.pop("format_version", None)
    if version != FORMAT_VERSION:
        raise CEMInputError(
            f"{str(path)!r} has result format version {version!r}; this cem_checks reads version {FORMAT_VERSION}. "
            f"Recompute {recompute} with this version."
        )


@dataclass(frozen=True, eq=False)
class CEMResult:
    """A causal effect map over the blocks of the model input. Arrays are read-only numpy arrays.

    Per block, shape (rows, cols):

    - ``effect`` float64 dB: causal effect after zeroing ``|raw_effect| < tol_db``. Positive: the block's real
      content helps the ROI (random natural content lowers the ROI PSNR); negative: it hurts.
    - ``raw_effect`` float64 dB: baseline ROI PSNR minus the mean ROI PSNR over the estimating draws.
    - ``stderr`` float64 dB: standard error of that mean (NaN with fewer than two draws).
    - ``ci_low`` / ``ci_high`` float64 dB: 95 % Student-t confidence interval of ``raw_effect``.
    - ``n_samples`` int64: draws behind ``raw_effect`` (paper mode: ``fine`` for flagged blocks, else ``coarse``;
      fast mode: what the sequential rule spent). Blocks that fast mode's group testing ruled out have
      ``n_samples`` 0 and ``raw_effect``, ``stderr`` and CI exactly 0: no draw can change the ROI output.
    - ``samples_db`` float64 (rows, cols, max_draws): the per-draw PSNR drops behind ``raw_effect``, NaN-padded.
    - ``support`` bool: at least one draw changed the ROI output at all (bit-exact comparison against a
      baseline computed under the same batch shape).
    - ``flagged`` bool: a coarse draw moved the ROI PSNR by >= ``tol_db`` (the block got the fine draws).
    - ``roi_mask`` bool: the block overlaps the ROI footprint in input coordinates.
    - ``distance`` int64 input px: Chebyshev gap from the block to the ROI footprint (0 overlapping,
      1 adjacent); a model of receptive-field radius r can only affect blocks with distance <= r.

    Scalars: ``base_psnr`` (dB, baseline ROI PSNR), ``block_size`` (input px), ``scale``, ``roi`` (output px),
    ``task`` (name, e.g. ``"dn50"``) with ``task_params``, ``seed``, ``mode``, ``coarse``, ``fine``, ``tol_db``,
    ``forward_passes`` (images sent through the model), ``forward_calls``, ``pixels_processed`` (input pixels
    sent through the model), ``wall_s``, ``device``, ``input_shape`` / ``output_shape`` ((h, w)),
    ``patch_bank`` (source, count, hash), ``model`` (a name) and ``meta`` (free-form, JSON-safe).

    ``radius_px``: the support radius exact in input pixels (the distance of the farthest input pixel that changes
    the ROI output), where the engine's support search decided it (fast mode's group tests, or a support stage of
    the same job); None otherwise (paper mode, hand-built maps), where ``support`` answers at the resolution of
    the blocks only (see :func:`cem_checks.metrics.support_radius`).

    Images (None when unknown, e.g. for :meth:`from_effects` maps or results saved without them), read-only uint8
    (h, w, 3) RGB: ``input_image``, the degraded model input of the whole (trimmed) image, ``input_shape``; and
    ``output_image``, the model's output on it (the baseline), ``output_shape``, both clamped to [0, 1] and
    rounded to 8 bits as the ROI outcome is.
    """

    effect: np.ndarray
    raw_effect: np.ndarray
    stderr: np.ndarray
    n_samples: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    support: np.ndarray
    flagged: np.ndarray
    roi_mask: np.ndarray
    distance: np.ndarray
    samples_db: np.ndarray
    base_psnr: float
    block_size: int
    scale: int
    roi: ROI
    task: str
    seed: int
    mode: str
    tol_db: float = 0.01
    coarse: int = 3
    fine: int = 50
    forward_passes: int = 0
    forward_calls: int = 0
    pixels_processed: int = 0
    wall_s: float = 0.0
    device: str = "cpu"
    input_shape: tuple = (0, 0)
    output_shape: tuple = (0, 0)
    task_params: dict = field(default_factory=dict)
    patch_bank: dict = field(default_factory=dict)
    model: str = ""
    meta: dict = field(default_factory=dict)
    radius_px: int | None = None
    input_image: np.ndarray | None = None
    output_image: np.ndarray | None = None

    def __post_init__(self):
        shape = np.shape(self.effect)
        if len(shape) != 2:
            raise CEMInputError(f"CEMResult.effect must be 2-D (rows, cols); got shape {shape}.")
        for name in ARRAY_FIELDS:
            arr = np.asarray(getattr(self, name))
            want = shape if name != "samples_db" else shape + arr.shape[2:]
            if arr.shape[:2] != shape or (name == "samples_db" and arr.ndim != 3) or (name != "samples_db" and arr.shape != want):
                raise CEMInputError(f"CEMResult.{name} has shape {arr.shape}; expected {shape}{' + (draws,)' if name == 'samples_db' else ''}.")
            object.__setattr__(self, name, _readonly(arr))
        object.__setattr__(self, "roi", ROI.parse(self.roi))
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        object.__setattr__(self, "output_shape", tuple(int(v) for v in self.output_shape))
        object.__setattr__(self, "input_image", _image(self.input_image, "input_image", self.input_shape))
        object.__setattr__(self, "output_image", _image(self.output_image, "output_image", self.output_shape))

    # ----------------------------------------------------------------------------------------- shape
    @property
    def rows(self) -> int:
        return int(self.effect.shape[0])

    @property
    def cols(self) -> int:
        return int(self.effect.shape[1])

    @property
    def grid(self) -> BlockGrid:
        return BlockGrid(self.rows * self.block_size, self.cols * self.block_size, self.block_size)

    @property
    def far_distance(self) -> np.ndarray:
        """(rows, cols) int64 input px: the distance of each block's farthest pixel from the ROI footprint (its
        nearest is ``distance``)."""
        return self.grid.far_distance(self.roi.footprint(self.scale))

    # ------------------------------------------------------------------------------ hand-built maps
    @classmethod
    def from_effects(
        cls,
        effect: Any,
        *,
        roi: Any,
        block_size: int,
        scale: int = 1,
        stderr: Any = None,
        n_samples: Any = None,
        support: Any = None,
        task: str = "custom",
        seed: int = 0,
        mode: str = "manual",
        tol_db: float = 0.01,
        **kwargs: Any,
    ) -> "CEMResult":
        """Build a result from a (rows, cols) effect map in dB, e.g. to test metrics on a known map.

        ``distance`` and ``roi_mask`` are derived from ``roi`` (output px), ``block_size`` (input px) and
        ``scale``. Defaults: ``stderr`` 0, ``n_samples`` 1, ``support`` = ``effect != 0``; ``raw_effect`` =
        ``effect``; the CI is ``effect +- 1.96 * stderr``; ``samples_db`` holds ``effect`` once.
        """
        eff = np.asarray(effect, dtype=np.float64)
        if eff.ndim != 2:
            raise CEMInputError(f"effect must be a 2-D (rows, cols) map; got shape {eff.shape}.")
        rows, cols = eff.shape
        grid = BlockGrid(rows * block_size, cols * block_size, block_size)
        roi = ROI.parse(roi)
        roi.validate((grid.height * scale, grid.width * scale), scale)
        distance = grid.distance(roi.footprint(scale))
        se = np.zeros_like(eff) if stderr is None else np.broadcast_to(np.asarray(stderr, dtype=np.float64), eff.shape)
        n = np.ones(eff.shape, np.int64) if n_samples is None else np.broadcast_to(np.asarray(n_samples, np.int64), eff.shape)
        sup = (eff != 0) if support is None else np.broadcast_to(np.asarray(support, bool), eff.shape)
        base = dict(
            effect=eff,
            raw_effect=eff,
            stderr=se,
            n_samples=n,
            ci_low=eff - 1.96 * se,
            ci_high=eff + 1.96 * se,
            support=sup,
            flagged=np.abs(eff) >= tol_db,
            roi_mask=distance == 0,
            distance=distance,
            samples_db=eff[..., None],
            base_psnr=kwargs.pop("base_psnr", float("nan")),
            block_size=block_size,
            scale=scale,
            roi=roi,
            task=task,
            seed=seed,
            mode=mode,
            tol_db=tol_db,
            input_shape=(grid.height, grid.width),
            output_shape=(grid.height * scale, grid.width * scale),
        )
        base.update(kwargs)
        return cls(**base)

    # ------------------------------------------------------------------------------------ exports
    def settings(self) -> dict[str, Any]:
        """The run's settings: task, seed, mode, device, budgets and costs."""
        return {
            "task": self.task,
            "seed": self.seed,
            "mode": self.mode,
            "device": self.device,
            "block_size": self.block_size,
            "scale": self.scale,
            "roi": list(self.roi.as_tuple()),
            "tol_db": self.tol_db,
            "coarse": self.coarse,
            "fine": self.fine,
            "forward_passes": self.forward_passes,
            "wall_s": self.wall_s,
        }

    def to_record(self) -> dict[str, Any]:
        """A JSON-safe dict of every field (arrays as nested lists, NaN/inf as None) except the images, which are
        left out (pixels); ``has_images`` says whether the result carries them."""
        return _record(self, {"format_version": FORMAT_VERSION})

    def to_frame(self):
        """A tidy pandas DataFrame, one row per block (row-major), with units in the column names."""
        return _block_frame(self, {
            "effect_db": self.effect.astype(np.float64),
            "raw_effect_db": self.raw_effect.astype(np.float64),
            "stderr_db": self.stderr.astype(np.float64),
            "ci_low_db": self.ci_low.astype(np.float64),
            "ci_high_db": self.ci_high.astype(np.float64),
            "n_samples": self.n_samples.astype(np.int64),
            "support": self.support.astype(bool),
            "flagged": self.flagged.astype(bool),
        })

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result to ``path`` (``.npz``: the arrays, the images when present, and a JSON ``meta`` entry;
        no pickle)."""
        return _save(self, path, ARRAY_FIELDS, {"format_version": FORMAT_VERSION})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CEMResult":
        """Read a result written by :meth:`save` (files written without images load with ``input_image`` and
        ``output_image`` None)."""
        meta, arrays = _load(path, ARRAY_FIELDS, "CEM result", "CEMResult")
        if meta.get("format") == SUPPORT_FORMAT:
            raise CEMInputError(f"{str(path)!r} is a support result; load it with SupportResult.load().")
        _validate_version(meta, path, "the map")
        meta["roi"] = ROI(*meta["roi"])
        for key in ("base_psnr", "wall_s", "tol_db"):
            if meta.get(key) is None:
                meta[key] = float("nan")
        return cls(**arrays, **meta)


#: Per-block arrays of a :class:`SupportResult`, each (rows, cols).
SUPPORT_ARRAY_FIELDS = ("support", "resolved", "roi_mask", "distance")
SUPPORT_FORMAT = "cem-support"


@dataclass(frozen=True, eq=False)
class SupportResult:
    """Which blocks of the model input can change the ROI output at all: the exact support stage of a map
    (:func:`cem_checks.compute_support`), decided by group tests, without estimating any effect.

    Per block, read-only arrays of shape (rows, cols):

    - ``support`` bool: the block, replaced alone, changed the ROI output (bit-exact, against a baseline
      computed under the same batch shape).
    - ``resolved`` bool: a test decided the block: it was tested alone, or it belongs to a group (a ring "farther
      than d px", or a k-d group) whose joint replacement never changed the ROI output, so its effect is exactly 0.
      A block of a group that changed but was never tested alone is *unresolved*: it may or may not be in the
      support (``support`` is False there).
    - ``roi_mask`` bool and ``distance`` int64 (input px), as in :class:`CEMResult`.

    Scalars: ``radius_px`` (the support radius, exact in input pixels: the distance of the farthest input pixel
    that changes the ROI output; None when the search stopped at ``within``), ``base_psnr`` (dB, the baseline ROI
    PSNR), ``within_px`` and ``beyond_within`` (with ``within=r``: whether any input pixel farther than r px from
    the ROI footprint changes the ROI output, exact in pixels whatever the block size; None otherwise),
    ``block_size`` (input px),
    ``scale``, ``roi`` (output px), ``task``, ``seed``, ``draws`` (joint draws per group test), ``group_tests``,
    ``forward_passes`` (images sent through the model, the validation forwards included), ``wall_s``,
    ``device``, ``input_shape`` / ``output_shape`` ((h, w)), ``task_params``, ``patch_bank``, ``model``,
    ``meta`` (free-form, JSON-safe), and the optional ``input_image`` / ``output_image`` (uint8, as in
    :class:`CEMResult`).
    """

    support: np.ndarray
    resolved: np.ndarray
    roi_mask: np.ndarray
    distance: np.ndarray
    radius_px: int | None
    block_size: int
    scale: int
    roi: ROI
    task: str
    seed: int
    draws: int = 3
    base_psnr: float = float("nan")
    within_px: float | None = None
    beyond_within: bool | None = None
    group_tests: int = 0
    forward_passes: int = 0
    wall_s: float = 0.0
    device: str = "cpu"
    input_shape: tuple = (0, 0)
    output_shape: tuple = (0, 0)
    task_params: dict = field(default_factory=dict)
    patch_bank: dict = field(default_factory=dict)
    model: str = ""
    meta: dict = field(default_factory=dict)
    input_image: np.ndarray | None = None
    output_image: np.ndarray | None = None

    def __post_init__(self):
        shape = np.shape(self.support)
        if len(shape) != 2:
            raise CEMInputError(f"SupportResult.support must be 2-D (rows, cols); got shape {shape}.")
        for name in SUPPORT_ARRAY_FIELDS:
            arr = np.asarray(getattr(self, name))
            if arr.shape != shape:
                raise CEMInputError(f"SupportResult.{name} has shape {arr.shape}; expected {shape}.")
            object.__setattr__(self, name, _readonly(arr))
        if (self.support & ~self.resolved).any():
            raise CEMInputError("SupportResult.support marks blocks that are not resolved; a supported block was "
                                "tested alone, so it is resolved: pass resolved |= support.")
        object.__setattr__(self, "roi", ROI.parse(self.roi))
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        object.__setattr__(self, "output_shape", tuple(int(v) for v in self.output_shape))
        object.__setattr__(self, "input_image", _image(self.input_image, "input_image", self.input_shape))
        object.__setattr__(self, "output_image", _image(self.output_image, "output_image", self.output_shape))

    @property
    def rows(self) -> int:
        return int(self.support.shape[0])

    @property
    def cols(self) -> int:
        return int(self.support.shape[1])

    @property
    def grid(self) -> BlockGrid:
        return BlockGrid(self.rows * self.block_size, self.cols * self.block_size, self.block_size)

    @property
    def far_distance(self) -> np.ndarray:
        """(rows, cols) int64 input px: the distance of each block's farthest pixel from the ROI footprint."""
        return self.grid.far_distance(self.roi.footprint(self.scale))

    @property
    def complete(self) -> bool:
        """Every block is resolved: ``support`` is the exact support."""
        return bool(self.resolved.all())

    def settings(self) -> dict[str, Any]:
        """The run's settings: task, seed, device, draws, grid and costs."""
        return {
            "stage": "support",
            "task": self.task,
            "seed": self.seed,
            "device": self.device,
            "block_size": self.block_size,
            "scale": self.scale,
            "roi": list(self.roi.as_tuple()),
            "draws": self.draws,
            "within_px": self.within_px,
            "forward_passes": self.forward_passes,
            "wall_s": self.wall_s,
        }

    def to_record(self) -> dict[str, Any]:
        """A JSON-safe dict of every field (arrays as nested lists) except the images; ``has_images`` says
        whether the result carries them."""
        return _record(self, {"format": SUPPORT_FORMAT, "format_version": FORMAT_VERSION})

    def to_frame(self):
        """A tidy pandas DataFrame, one row per block (row-major), with units in the column names."""
        return _block_frame(self, {"support": self.support.astype(bool), "resolved": self.resolved.astype(bool)})

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result to ``path`` (``.npz``: the arrays, the images when present, and a JSON ``meta`` entry;
        no pickle)."""
        return _save(self, path, SUPPORT_ARRAY_FIELDS, {"format": SUPPORT_FORMAT, "format_version": FORMAT_VERSION})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SupportResult":
        """Read a result written by :meth:`save`."""
        try:
            meta, arrays = _load(path, SUPPORT_ARRAY_FIELDS, "support result", "SupportResult")
        except CEMInputError:
            if Path(path).is_file():
                raise CEMInputError(f"{str(path)!r} is not a support result (a CEMResult file? load it with "
                                    "CEMResult.load).") from None
            raise
        if meta.pop("format", None) != SUPPORT_FORMAT:
            raise CEMInputError(f"{str(path)!r} is not a support result (a CEMResult file? load it with CEMResult.load).")
        _validate_version(meta, path, "the support")
        meta["roi"] = ROI(*meta["roi"])
        for key in ("wall_s", "base_psnr"):
            if meta.get(key) is None:
                meta[key] = float("nan")
        return cls(**arrays, **meta)
