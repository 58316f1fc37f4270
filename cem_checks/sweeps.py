"""Sweeps: causal effect maps of many ROIs over many images, their table, and assertions over the table.

A single ROI is an anecdote; a sweep measures a model over data::

    import cem_checks as cc

    s = cc.sweep(model, "held_out/", task="dn25", rois=lambda img: cc.roi_sample(img, 8, 16, seed=0, texture="flat"),
                 block_size=4, context_radius=20)
    s.frame                                                   # pandas, one row per (image, ROI)
    cc.assert_over(s, "effective_radius_px", at_most=12, statistic="quantile:0.9")

Items are the (image, ROI) pairs in image order, then ROI order; ``SweepItem.index`` is an item's position in
that full list, the same in every shard. Each item's map is :func:`~cem_checks.compute_cem` (``stage="map"``) or
:func:`~cem_checks.compute_support` (``stage="support"``) with the sweep's keyword arguments: a sweep's maps are
those of separate calls with the same seed.

Scale-out runs on existing engines: :func:`run_image` (the work of one image) is submitted per image to any
:class:`concurrent.futures.Executor` (a Dask ``distributed`` client's ``get_executor()``, Ray's, a process pool);
``workers=`` / ``devices=`` make a local spawn-context process pool. ``shard=(K, N)`` keeps the items whose
index is K modulo N (one CI machine each), or with ``shard_by="image"`` every item of the images whose position is
K modulo N (the ROIs of an image stay together and keep sharing their forwards); :meth:`Sweep.merge` joins the
shards. ``cache_dir`` makes a sweep
resumable after a kill: each finished item is written atomically as ``<cache_dir>/sweep-<key>/item-<index>.npz``
and a rerun reads it back instead of computing it.

Assertions over a sweep (:func:`check_over`, :func:`assert_over`) compare a statistic of a per-item metric (mean,
max, min, median or a quantile) with a bound, with a percentile bootstrap interval over the items.

The package exports :func:`sweep` as ``cem_checks.sweep`` (``cc.sweep(model, images, ...)``).
"""

from __future__ import annotations

import contextvars
import hashlib
import inspect
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ._io import atomic_write_text
from .errors import (CacheWarning, CEMError, CEMInputError, DeviceError, ImageError, ROIError, describe_value,
                     validate_int)

__all__ = [
    "COLUMNS",
    "OverOutcome",
    "Sweep",
    "SweepItem",
    "SweepPropertyError",
    "assert_over",
    "check_over",
    "collect_over_outcomes",
    "roi_grid",
    "roi_sample",
    "run_image",
    "sweep",
    "texture_energy",
]

SWEEP_FORMAT = "cem-sweep"
SWEEP_FORMAT_VERSION = 1
#: Version of what a sweep's cache key covers; bump when the item files change meaning.
SWEEP_CACHE_VERSION = 1
STAGES = ("map", "support")
#: How ``shard=(K, N)`` splits a sweep: item by item, or image by image.
SHARD_BY = ("item", "image")
TEXTURES = ("any", "flat", "textured")
#: ITU-R BT.601 luma weights of R, G, B (those of Pillow's "L" conversion).
LUMA = (0.299, 0.587, 0.114)
#: How many items an outcome lists as the worst.
WORST_ITEMS = 5

#: The columns of :attr:`Sweep.frame` and their units ("px" output px for x, y, size; input px for radii;
#: "share" a fraction in [0, 1]; "" no unit).
COLUMNS: dict[str, str] = {
    "index": "",
    "image": "",
    "x": "px",
    "y": "px",
    "size": "px",
    "texture_energy": "",
    "support_radius_px": "px",
    "effective_radius_px": "px",
    "positive_fraction_count": "share",
    "positive_fraction_mass": "share",
    "negative_fraction_count": "share",
    "negative_fraction_mass": "share",
    "context_share_beyond": "share",
    "base_psnr_db": "dB",
    "forward_passes": "count",
    "wall_s": "s",
}
_ID_COLUMNS = ("index", "image", "x", "y", "size")

# keyword arguments of compute_cem / compute_support that a sweep handles itself
_OWN = ("model", "image", "task", "roi")
# keyword arguments about how a map runs, not what it gives: left out of the cache key and of the settings that
# Sweep.merge compares (the device is recorded under settings["execution"])
_EXECUTION = ("progress", "threads", "cache_dir", "cache_key", "device")


# ------------------------------------------------------------------------------------------- ROIs
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
    from .images import load_image

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
    from .grid import ROI

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


# ------------------------------------------------------------------------------------------ items
@dataclass(frozen=True)
class SweepItem:
    """One (image, ROI) of a sweep: ``index`` its position in the full (unsharded) item list, ``image`` the image's
    name (file stem, dict key, or ``"image<k>"`` for the k-th array of a list), ``roi`` ``(x, y, size)`` output
    px, ``texture_energy`` the :func:`texture_energy` of the clean ROI."""

    index: int
    image: str
    roi: tuple[int, int, int]
    texture_energy: float

    def to_record(self) -> dict[str, Any]:
        e = float(self.texture_energy)
        return {"index": int(self.index), "image": self.image, "roi": [int(v) for v in self.roi],
                "texture_energy": e if math.isfinite(e) else None}

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> "SweepItem":
        e = rec.get("texture_energy")
        return cls(int(rec["index"]), str(rec["image"]), tuple(int(v) for v in rec["roi"]),
                   float("nan") if e is None else float(e))


def _json_safe(x: Any) -> Any:
    from .result import _json_safe as safe

    return safe(x)


def _result_class(stage: str):
    from .result import CEMResult, SupportResult

    return CEMResult if stage == "map" else SupportResult


def _nan_metrics() -> dict[str, float]:
    nan = float("nan")
    return {c: nan for c in ("support_radius_px", "effective_radius_px", "positive_fraction_count",
                             "positive_fraction_mass", "negative_fraction_count", "negative_fraction_mass",
                             "context_share_beyond")}


def _item_metrics(result: Any, context_radius: float | None) -> dict[str, float]:
    """The metric columns of one item (see :attr:`Sweep.frame`)."""
    from . import metrics as M
    from .result import SupportResult

    out = _nan_metrics()
    if isinstance(result, SupportResult):
        out["support_radius_px"] = float("nan") if result.radius_px is None else float(result.radius_px)
        return out
    if result.roi_mask.all():  # every block overlaps the ROI: nothing outside it to measure
        return out
    out.update(
        support_radius_px=float(M.support_radius(result)),
        effective_radius_px=float(M.effective_radius(result, mass=0.9, sign="positive")),
        positive_fraction_count=M.positive_fraction(result, by="count"),
        positive_fraction_mass=M.positive_fraction(result, by="mass"),
        negative_fraction_count=M.negative_fraction(result, by="count"),
        negative_fraction_mass=M.negative_fraction(result, by="mass"),
    )
    if context_radius is not None:
        out["context_share_beyond"] = M.context_share(result, beyond=context_radius)
    return out


# ------------------------------------------------------------------------------------------- sweep
@dataclass(eq=False)
class Sweep:
    """The maps of a sweep's items and their table.

    ``items`` (:class:`SweepItem`, ascending ``index``) and ``results`` (a :class:`~cem_checks.CEMResult` per item
    for ``stage="map"``, a :class:`~cem_checks.SupportResult` for ``stage="support"``) are in the same order.
    ``settings`` (JSON-safe) says what was computed: ``stage``, ``task``, ``task_params``, ``model`` (its class
    name), ``model_id`` (its weights hash, or ``cache_key``; None when unknown), every map setting
    (``mode``, ``seed``, ``block_size``, ``coarse``, ``fine``, ``tol_db``, ... with their defaults),
    ``context_radius_px``, ``n_items`` (items in the full, unsharded sweep), ``items_key`` (a hash of every
    item's image and ROI) and ``execution`` (how it ran: device, workers, devices, executor; not compared by
    :meth:`merge`). ``shard`` is ``(K, N)`` for a shard, else None. ``counts``: ``items``, ``items_computed``,
    ``items_cached`` (read back from ``cache_dir``), ``forward_passes`` (images the model processed in this run),
    ``forward_passes_saved`` (saved by sharing forwards between the ROIs of an image), ``maps_wall_s`` (the
    maps' own wall time, summed) and ``wall_s`` (the sweep's; summed over shards by :meth:`merge`).

    :attr:`frame` (or :meth:`to_frame`) is the table, :meth:`to_record` a JSON-safe summary (the table's rows, not
    the maps), :meth:`save` / :meth:`load` a folder, :meth:`merge` joins shards.
    """

    items: list
    results: list
    stage: str = "map"
    settings: dict = field(default_factory=dict)
    shard: tuple | None = None
    counts: dict = field(default_factory=dict)

    def __post_init__(self):
        self.items = list(self.items)
        self.results = list(self.results)
        if self.stage not in STAGES:
            raise CEMInputError(f"stage={self.stage!r} is not one of {', '.join(map(repr, STAGES))}.")
        if len(self.items) != len(self.results):
            raise CEMInputError(f"a Sweep needs one result per item; got {len(self.items)} items and "
                                f"{len(self.results)} results.")
        for k, item in enumerate(self.items):
            if not isinstance(item, SweepItem):
                raise CEMInputError(f"items[{k}]={describe_value(item)} is not a cem_checks.SweepItem.")
        kind = _result_class(self.stage)
        for k, r in enumerate(self.results):
            if not isinstance(r, kind):
                raise CEMInputError(f"results[{k}] is a {type(r).__name__}; a sweep of stage {self.stage!r} holds "
                                    f"{kind.__name__} results.")
        if self.shard is not None:
            self.shard = _validate_shard(self.shard)
        self.settings = _json_safe(dict(self.settings))  # as sweep.json holds them (tuples as lists)
        self.counts = dict(self.counts)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        shard = "" if self.shard is None else f", shard={self.shard[0]}/{self.shard[1]}"
        return (f"Sweep({len(self.items)} items, stage={self.stage!r}, task={self.settings.get('task')!r}, "
                f"model={self.settings.get('model')!r}{shard})")

    @property
    def context_radius(self) -> float | None:
        """The radius (input px) of the ``context_share_beyond`` column; None leaves the column NaN."""
        return self.settings.get("context_radius_px")

    @property
    def frame(self):
        """A pandas DataFrame, one row per item (computed on access from :attr:`results`).

        Columns (units in :data:`COLUMNS`): ``index``, ``image``, ``x``, ``y``, ``size`` (the ROI, output px),
        ``texture_energy`` (:func:`texture_energy`), ``support_radius_px`` (:func:`~cem_checks.support_radius`; for
        ``stage="support"`` the SupportResult's ``radius_px``), ``effective_radius_px``
        (``effective_radius(mass=0.9, sign="positive")``), ``positive_fraction_count``, ``positive_fraction_mass``,
        ``negative_fraction_count``, ``negative_fraction_mass`` (``by="count"`` / ``by="mass"``),
        ``context_share_beyond`` (``context_share(beyond=context_radius)``; NaN when the sweep has no
        ``context_radius``), ``base_psnr_db``, ``forward_passes`` and ``wall_s`` (the item's map). Radii in input
        px. The effect metrics are NaN for ``stage="support"`` (no effects) and for a map whose every block
        overlaps the ROI (nothing outside it to measure).
        """
        import pandas as pd

        rows = []
        radius = self.context_radius
        for item, r in zip(self.items, self.results):
            x, y, size = item.roi
            rows.append({"index": item.index, "image": item.image, "x": x, "y": y, "size": size,
                         "texture_energy": item.texture_energy, **_item_metrics(r, radius),
                         "base_psnr_db": float(r.base_psnr), "forward_passes": int(r.forward_passes),
                         "wall_s": float(r.wall_s)})
        frame = pd.DataFrame(rows, columns=list(COLUMNS))
        ints = {c: "int64" for c in ("index", "x", "y", "size", "forward_passes")}
        floats = {c: "float64" for c in COLUMNS if c not in ints and c != "image"}
        return frame.astype({**ints, **floats, "image": "object"})

    def to_frame(self):
        """:attr:`frame`."""
        return self.frame

    def to_record(self) -> dict[str, Any]:
        """A JSON-safe dict: format, stage, shard, settings, counts, items and the frame's rows (not the maps)."""
        return _json_safe({**self._document([i.to_record() for i in self.items]),
                           "frame": self.frame.to_dict(orient="records")})

    def _document(self, items: list[dict]) -> dict[str, Any]:
        """What ``sweep.json`` and :meth:`to_record` hold besides the maps: format, stage, shard, settings, counts
        and ``items`` (the records given)."""
        return {"format": SWEEP_FORMAT, "format_version": SWEEP_FORMAT_VERSION, "stage": self.stage,
                "shard": None if self.shard is None else list(self.shard), "settings": self.settings,
                "counts": self.counts, "items": items}

    # ------------------------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the sweep to the folder ``path`` (created): ``sweep.json`` (items, settings, counts, stage, shard)
        and ``item-<index>.npz`` per result (:meth:`CEMResult.save` / :meth:`SupportResult.save`). ``sweep.json``
        is written last, so a folder interrupted mid-way does not load. Returns the folder."""
        folder = Path(path)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CEMInputError(f"cannot create the sweep folder {str(folder)!r}: {exc}. Pass a writable folder.") from exc
        if not folder.is_dir():
            raise CEMInputError(f"{str(folder)!r} is not a folder; Sweep.save writes a folder (sweep.json and one "
                                ".npz per item).")
        records = []
        for item, r in zip(self.items, self.results):
            name = f"item-{item.index}.npz"
            r.save(folder / name)
            records.append({**item.to_record(), "file": name})
        atomic_write_text(folder / "sweep.json", json.dumps(_json_safe(self._document(records)), indent=1, sort_keys=True))
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Sweep":
        """Read a sweep written by :meth:`save` (the folder, or its ``sweep.json``)."""
        folder = Path(path)
        if folder.name == "sweep.json":
            folder = folder.parent
        doc_path = folder / "sweep.json"
        if not doc_path.is_file():
            raise CEMInputError(f"no sweep at {str(path)!r} (no sweep.json in the folder); pass a folder written by "
                                "Sweep.save().")
        try:
            doc = json.loads(doc_path.read_text())
            fmt, version = doc.get("format"), doc.get("format_version")
        except (ValueError, AttributeError) as exc:
            raise CEMInputError(f"{str(doc_path)!r} is not a sweep file written by Sweep.save(): {exc}.") from exc
        if fmt != SWEEP_FORMAT or version != SWEEP_FORMAT_VERSION:
            raise CEMInputError(f"{str(doc_path)!r} has format {fmt!r} version {version!r}; this cem_checks reads "
                                f"{SWEEP_FORMAT!r} version {SWEEP_FORMAT_VERSION}. Recompute the sweep with this version.")
        stage = doc.get("stage")
        if stage not in STAGES:
            raise CEMInputError(f"{str(doc_path)!r} has stage {stage!r}; expected one of {', '.join(map(repr, STAGES))}.")
        kind = _result_class(stage)
        items, results = [], []
        for rec in doc.get("items", []):
            items.append(SweepItem.from_record(rec))
            results.append(kind.load(folder / rec["file"]))
        shard = doc.get("shard")
        return cls(items, results, stage, doc.get("settings") or {}, None if shard is None else tuple(shard),
                   doc.get("counts") or {})

    # ------------------------------------------------------------------------------------ merge
    @classmethod
    def merge(cls, sweeps: Iterable["Sweep | str | os.PathLike"]) -> "Sweep":
        """Join the shards of one sweep (:class:`Sweep` objects or folders written by :meth:`save`) into the whole,
        whose frame and aggregates equal those of an unsharded run (the ``wall_s`` column aside).

        Refused (:class:`~cem_checks.errors.CEMInputError`, naming the difference): different stages or settings
        (``settings["execution"]``, how each shard ran, may differ), shards of different ``N``, an item in two
        sweeps, or items missing from the union (a shard left out). Counts are summed.
        """
        parts = [s if isinstance(s, Sweep) else cls.load(s) for s in sweeps]
        if not parts:
            raise CEMInputError("Sweep.merge got no sweeps; pass the shards, e.g. Sweep.merge([s0, s1]).")
        first = parts[0]
        what = lambda s: {k: v for k, v in s.settings.items() if k != "execution"}  # noqa: E731
        for k, s in enumerate(parts[1:], 1):
            if s.stage != first.stage:
                raise CEMInputError(f"sweeps[{k}] has stage {s.stage!r} but sweeps[0] has {first.stage!r}; merge "
                                    "only the shards of one sweep.")
            a, b = what(first), what(s)
            if a != b:
                diff = sorted(key for key in set(a) | set(b) if a.get(key) != b.get(key))
                shown = "; ".join(f"{key}={b.get(key)!r} vs {a.get(key)!r}" for key in diff[:4])
                raise CEMInputError(
                    f"sweeps[{k}] has other settings than sweeps[0] ({shown}); merge only the shards of one sweep "
                    "(same model, images, ROIs, task and map settings), or rerun the odd shard with those settings."
                )
        ns = {s.shard[1] for s in parts if s.shard is not None}
        if len(ns) > 1:
            raise CEMInputError(f"the sweeps are shards of different splits (N in {sorted(ns)}); merge the K/N shards "
                                "of one split.")
        pairs: dict[int, tuple] = {}
        for k, s in enumerate(parts):
            for item, r in zip(s.items, s.results):
                if item.index in pairs:
                    raise CEMInputError(
                        f"item {item.index} (image {item.image!r}, roi {item.roi}) is in sweeps[{k}] and in an earlier "
                        "sweep; each shard must be merged once.")
                pairs[item.index] = (item, r)
        n_items = first.settings.get("n_items")
        if n_items is not None:
            missing = sorted(set(range(int(n_items))) - set(pairs))
            if missing:
                shards = ""
                by_image = any((s.settings.get("execution") or {}).get("shard_by") == "image" for s in parts)
                if ns and not by_image:
                    n = next(iter(ns))
                    absent = sorted({i % n for i in missing})
                    shards = f" (shard{'s' if len(absent) > 1 else ''} {', '.join(f'{a}/{n}' for a in absent)})"
                raise CEMInputError(
                    f"the merged sweeps lack {len(missing)} of its {n_items} items{shards}, e.g. item {missing[0]}; "
                    "pass every shard of the sweep.")
        order = sorted(pairs)
        counts: dict[str, Any] = {}
        for s in parts:
            for key, v in s.counts.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    counts[key] = counts.get(key, 0) + v
        counts["shards"] = len(parts)
        return cls([pairs[i][0] for i in order], [pairs[i][1] for i in order], first.stage, dict(first.settings),
                   None, counts)


# ---------------------------------------------------------------------------------------- helpers
def _validate_shard(shard: Any) -> tuple[int, int]:
    ok = (isinstance(shard, (tuple, list)) and len(shard) == 2
          and all(not isinstance(v, bool) and isinstance(v, (int, np.integer)) for v in shard))
    if ok:
        k, n = int(shard[0]), int(shard[1])
        ok = n >= 1 and 0 <= k < n
    if not ok:
        raise CEMInputError(
            f"shard={describe_value(shard)} is not a (K, N) pair of integers with 0 <= K < N; e.g. shard=(0, 2) and "
            "shard=(1, 2) split the items in two (item index % N == K)."
        )
    return k, n


def _image_list(images: Any) -> list[tuple[str, Any]]:
    """``images`` as (name, source) pairs, in order."""
    from .patches import IMAGE_SUFFIXES

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
    from .engine import compute_cem, compute_support

    func = compute_cem if stage == "map" else compute_support
    return {name: p.default for name, p in inspect.signature(func).parameters.items() if name not in _OWN}


def _validate_kwargs(stage: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of every map, validated; raises before any forward pass."""
    from .engine.job import validate_within
    from .engine.options import validate_common, validate_map_settings

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
        from .patches import load_patches

        return load_patches(value).describe()
    return describe_value(value)


def _key_value(key: str, value: Any) -> Any:
    """What a map setting contributes to the sweep's cache key."""
    from .cache import digest

    if key == "patches" and value is not None:
        from .patches import load_patches

        return load_patches(value).sha256
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return digest(value)


def _resolve_devices(devices: Any) -> list[str]:
    import torch

    from .devices import resolve_device

    if devices == "all":
        n = torch.cuda.device_count()
        if n == 0:
            raise DeviceError("devices='all' asks for one worker per CUDA device, but this machine has none "
                              f"(torch {torch.__version__}); use workers=N for N CPU processes, or run without devices=.")
        return [f"cuda:{i}" for i in range(n)]
    if isinstance(devices, (str, bytes)) or not isinstance(devices, Iterable):
        raise CEMInputError(f"devices={describe_value(devices)} must be 'all' (one worker per CUDA device) or a list of "
                            "devices, e.g. ['cuda:0', 'cuda:1'].")
    out = [str(resolve_device(d)) for d in devices]
    if not out:
        raise CEMInputError("devices=[] is empty; pass 'all', a list such as ['cuda:0', 'cuda:1'], or leave it None.")
    return out


# ------------------------------------------------------------------------------------- the workers
#: The device of this process when it is a worker of a sweep's local pool (set by its initializer).
_WORKER_DEVICE: str | None = None


def _init_worker(slots: Any, threads: int | None) -> None:
    """Initializer of a local pool's worker: take a device from ``slots`` (a queue), set torch's threads."""
    global _WORKER_DEVICE
    if slots is not None:
        _WORKER_DEVICE = slots.get()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _write_item(result: Any, path: Path) -> None:
    """Write an item file atomically; a failed write warns and the sweep goes on."""
    try:
        result.save(path)
    except OSError as exc:
        warnings.warn(f"cannot write sweep cache file {str(path)!r} ({exc}); this item is not cached.", CacheWarning,
                      stacklevel=3)


def run_image(model: Any, name: str, image: Any, rois: list, stage: str, kwargs: dict[str, Any], *,
              tags: list | None = None, paths: list | None = None) -> list:
    """The work of one image of a sweep, what executors run: the result of every ROI of ``rois``, in order.

    ``kwargs`` are the keyword arguments of :func:`~cem_checks.compute_cem` (``stage="map"``) or
    :func:`~cem_checks.compute_support` (``stage="support"``; ``within`` None unless given), ``task`` included.
    ``name`` labels errors. ``tags`` (one JSON-safe dict per ROI) are stored as ``result.meta["sweep_item"]``;
    ``paths`` (one per ROI) are where each finished result is written (atomically) as soon as it is done, so a
    killed sweep keeps its finished items. In a worker of a sweep's local device pool, ``device`` is the worker's.
    """
    from .engine import compute_support
    from .engine.job import Job, map_many

    kwargs = dict(kwargs)
    if _WORKER_DEVICE is not None:
        kwargs["device"] = _WORKER_DEVICE
    out: list[Any] = [None] * len(rois)

    def finished(j: int, result: Any) -> None:
        if tags is not None:
            result = replace(result, meta={**result.meta, "sweep_item": tags[j]})
        if paths is not None and paths[j] is not None:
            _write_item(result, Path(paths[j]))
        out[j] = result

    if stage == "map":
        # one job per ROI; map_many lets the ROIs read their draws from shared forwards where the draws run on the
        # full input (paper mode; global models in fast mode), with maps identical to separate runs; a map computed
        # alone is written as soon as it is done
        jobs = []
        for roi in rois:
            try:
                jobs.append(Job(model, image, roi=roi, **kwargs))
            except CEMError as exc:
                exc.add_note(f"(sweep: image {name!r}, roi {tuple(roi)})")
                raise
        try:
            map_many(jobs, on_result=finished)
        except CEMError as exc:
            where = f"roi {tuple(rois[0])}" if len(rois) == 1 else f"rois {[tuple(r) for r in rois]}"
            exc.add_note(f"(sweep: image {name!r}, {where})")
            raise
        return out
    for j, roi in enumerate(rois):
        try:
            finished(j, compute_support(model, image, roi=roi, **kwargs))
        except CEMError as exc:
            exc.add_note(f"(sweep: image {name!r}, roi {tuple(roi)})")
            raise
    return out


def _validate_progress(progress: Any) -> None:
    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        raise CEMInputError(f"progress={progress!r} must be True (a bar), False (silent), None (a bar on a terminal, "
                            "log lines otherwise) or a function receiving the log lines.")


class _Progress:
    """The sweep's own progress over items: a tqdm bar, log lines (after 10 s, at most every 10 s), or nothing."""

    def __init__(self, progress: Any, total: int, cached: int):
        from .progress import LOG_EVERY_S

        self.total, self.done, self.cached = total, cached, cached
        self.t0 = time.monotonic()
        self.last = float("-inf")
        self.every = LOG_EVERY_S
        self.bar = None
        self.write = None
        if progress is True or (progress is None and sys.stderr.isatty()):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=cached, desc="CEM sweep", unit="item", leave=False, file=sys.stderr)
        elif progress is None:
            self.write = lambda line: print(line, file=sys.stderr, flush=True)
        elif callable(progress):
            self.write = progress

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.write is not None:
            now = time.monotonic()
            if now - self.t0 >= self.every and (now - self.last >= self.every or self.done >= self.total):
                self.write(f"cem sweep: {self.done}/{self.total} items ({self.cached} cached), {now - self.t0:.0f} s")
                self.last = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _load_item(path: Path, stage: str, tag: dict) -> Any | None:
    """A cached item written for ``tag``, or None (absent, unreadable or written for another item)."""
    if not path.is_file():
        return None
    try:
        result = _result_class(stage).load(path)
        if result.meta.get("sweep_item", {}).get("key") != tag["key"]:
            raise ValueError("written for another item")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is treated the same way
        warnings.warn(f"ignoring sweep cache file {str(path)!r} ({type(exc).__name__}: {exc}); the item is computed "
                      "again.", CacheWarning, stacklevel=3)
        return None
    return result


def _make_items(loaded: list, rois: Any, task: Any, block: int) -> tuple[list, dict]:
    """The items ``(index, image name, roi)`` of every image, each ROI validated against its image as the engine
    trims it, and each image's hash (of its trimmed clean pixels)."""
    from .cache import hash_tensor
    from .grid import ROI

    scale = int(task.scale)
    unit = scale * block
    items: list[tuple[int, str, tuple[int, int, int]]] = []
    hashes: dict[str, str] = {}
    for name, clean in loaded:
        cropped = task.crop(clean)
        H0, W0 = (int(v) for v in cropped.shape[-2:])
        H, W = (H0 // unit) * unit, (W0 // unit) * unit
        if H == 0 or W == 0:
            raise ImageError(f"image {name!r} ({W0}x{H0} px) is smaller than one block of {block} input px ({unit} "
                             "output px); use larger images or a smaller block_size.")
        got, source = (rois(clean), f"rois({name!r})") if callable(rois) else (rois, "rois")
        if isinstance(got, (str, bytes)) or not isinstance(got, Iterable):
            raise ROIError(f"{source} is {describe_value(got)}; expected a list of (x, y, size) ROIs in output px, e.g. "
                           "[(0, 0, 16), (16, 0, 16)] or cem_checks.roi_grid(image.shape[-2:], 16), or a callable "
                           "image -> such a list.")
        got = list(got)
        if not got and not callable(rois):
            raise ROIError("rois=[] is empty; give at least one (x, y, size) ROI, e.g. rois=cem_checks.roi_grid((H, W), 16).")
        size_text = f"{W}x{H} px" if (H, W) == (H0, W0) else \
            f"{W}x{H} px, trimmed from {W0}x{H0} so that whole {block}-px blocks tile the input"
        for j, roi in enumerate(got):
            if isinstance(roi, np.ndarray):  # a row of an (n, 3) array
                roi = tuple(roi.tolist())
            try:
                r = ROI.parse(roi)
                r.validate((H, W), scale)
            except ROIError as exc:
                raise ROIError(f"{source}[{j}] for image {name!r} ({size_text}): {exc}") from None
            items.append((len(items), name, r.as_tuple()))
        hashes[name] = hash_tensor(cropped[:, :H, :W].contiguous())
    if not items:
        raise ROIError(f"the rois callable returned no ROI for any of the {len(loaded)} images; return at least one "
                       "(x, y, size) ROI for some image.")
    return items, hashes


def _run(model: Any, todo: dict[str, list], by_name: dict, stage: str, call_kwargs: dict, tags: dict,
         folder: Path | None, pool: Executor | None, on_done: Callable[[str, list], None]) -> None:
    """Run :func:`run_image` for every image of ``todo`` (name -> [(index, roi)]) in this process (``pool``
    None) or on ``pool``; ``on_done(name, results)`` as each image finishes."""

    def args(name: str) -> tuple[tuple, dict]:
        pending = todo[name]
        paths = None if folder is None else [str(folder / f"item-{idx}.npz") for idx, _ in pending]
        return ((model, name, by_name[name], [roi for _, roi in pending], stage, call_kwargs),
                {"tags": [tags[idx] for idx, _ in pending], "paths": paths})

    if pool is None:
        for name in todo:
            a, kw = args(name)
            on_done(name, run_image(*a, **kw))
        return
    futures = {}
    for name in todo:
        a, kw = args(name)
        futures[pool.submit(run_image, *a, **kw)] = name
    try:
        for fut in as_completed(futures):
            on_done(futures[fut], fut.result())  # a worker's error names the image and ROI (run_image)
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise


# ------------------------------------------------------------------------------------------- sweep()
def sweep(model: Any, images: Any, *, task: Any, rois: Any, stage: str = "map", workers: int | None = None,
          devices: Any = None, executor: Executor | None = None, shard: tuple[int, int] | None = None,
          shard_by: str = "item",
          cache_dir: str | os.PathLike | None = None, context_radius: float | None = None, progress: Any = None,
          **compute_cem_kwargs: Any) -> Sweep:
    """Causal effect maps (or their support stage alone) of every ROI of every image, and their table.

    Args:
        model: as :func:`~cem_checks.compute_cem`; with workers or an executor it is pickled to them.
        images: a folder (its image files, sorted by name), an image path, a list of paths, PIL images, HxWxC
            arrays or CxHxW tensors, or a dict name -> image. Names: the file stem, the dict key, or
            ``"image<k>"`` for the k-th non-path entry of a list.
        task: as :func:`~cem_checks.compute_cem` (``"dn25"``, ``cem_checks.SuperResolution(4)``, ...).
        rois: a list of ``(x, y, size)`` (output px) used for every image, or a callable receiving each clean
            image as a float (3, H, W) tensor in [0, 1] and returning its list (e.g. :func:`roi_sample`).
            Every ROI must lie inside its image as the engine trims it (whole blocks tile the input) and be
            aligned with the task's scale (:class:`~cem_checks.errors.ROIError` naming the image and the ROI).
        stage: ``"map"`` (:func:`~cem_checks.compute_cem` per item) or ``"support"``
            (:func:`~cem_checks.compute_support`, ``within`` None unless given: the support radius).
        workers: run the images on a local process pool (spawn) of that many CPU processes, each with torch
            threads ``max(1, cores // workers)`` unless ``threads`` is given.
        devices: ``"all"`` (one worker per CUDA device) or a list of devices; with ``workers`` too, the workers
            take the devices round-robin. Each worker runs its maps on its device (so ``device=`` is refused).
        executor: any :class:`concurrent.futures.Executor` (e.g. ``distributed.Client(...).get_executor()``):
            :func:`run_image` is submitted per image; not shut down by the sweep. Thread-based executors share the
            model object between their threads: keep such a model on one device.
            Without workers, devices or executor the maps run in this process, one after the other.
        shard: ``(K, N)``: only the items whose index is K modulo N (:attr:`Sweep.shard`); merge the shards
            with :meth:`Sweep.merge`.
        shard_by: ``"item"`` (default: items split one by one, index % N == K, the most even split) or
            ``"image"`` (whole images, position in ``images`` % N == K: every ROI of an image on one shard, so the
            ROIs keep sharing their forwards; uneven when images hold different numbers of ROIs).
        cache_dir: resumable sweeps: each finished item is written atomically to
            ``<cache_dir>/sweep-<key>/item-<index>.npz`` (``key``: a hash of the model's weights (or
            ``cache_key`` for a plain callable), the task, stage, map settings, patch bank, device type and every
            item's image hash and ROI) and a rerun reads it back instead of computing it; the maps also get
            ``cache_dir``, so an item killed mid-way resumes from its finished chunks of draws. The folder may be
            shared by the workers (and by shards).
        context_radius: radius in input px of the frame's ``context_share_beyond`` column (the share of the
            absolute effect mass beyond it); None (default) leaves that column NaN.
        progress: the sweep's progress over items, counted as each image finishes: True a bar, False nothing,
            None a bar on a terminal and log lines otherwise, or a function receiving those log lines (as a map's
            progress: after 10 s, at most every 10 s, and the last one when the sweep has run that long). The
            maps themselves run silently.
        **compute_cem_kwargs: the keyword arguments of every map (:func:`~cem_checks.compute_cem` for stage
            ``"map"``: ``block_size``, ``mode``, ``seed``, ``coarse``, ``fine``, ``device``, ...;
            :func:`~cem_checks.compute_support` for ``"support"``: ``draws``, ``within``, ``max_tests``, ...).

    Returns:
        a :class:`Sweep`. Caller errors raise before any forward pass: :class:`~cem_checks.errors.ImageError`
        (images), :class:`~cem_checks.errors.ROIError` (rois), :class:`~cem_checks.errors.CEMInputError` (the
        rest), :class:`~cem_checks.errors.DeviceError` (devices).
    """
    t_start = time.perf_counter()
    import torch

    from .cache import digest
    from .engine.runner import model_name
    from .images import load_image
    from .tasks import describe_task, parse_task

    if stage not in STAGES:
        raise CEMInputError(f"stage={stage!r} is not one of {', '.join(map(repr, STAGES))}: 'map' computes a causal "
                            "effect map per item, 'support' only its exact support stage.")
    if not callable(model):
        raise CEMInputError(f"model {describe_value(model)} is not callable; pass an nn.Module or a function mapping a "
                            "(B, 3, h, w) float tensor in [0, 1] to (B, 3, H, W).")
    shard = None if shard is None else _validate_shard(shard)
    if shard_by not in SHARD_BY:
        raise CEMInputError(f"shard_by={shard_by!r} is not one of {', '.join(map(repr, SHARD_BY))}: 'item' splits the "
                            "items one by one (index % N == K), 'image' keeps every ROI of an image on one shard.")
    _validate_progress(progress)
    if context_radius is not None:
        from .metrics import validate_radius

        context_radius = validate_radius("context_radius", context_radius)
    kwargs = dict(compute_cem_kwargs)
    full = _validate_kwargs(stage, kwargs)
    task_obj = parse_task(task)
    scale = int(task_obj.scale)
    block = full["block_size"] if full["block_size"] is not None else max(1, 8 // scale)

    # ------------------------------------------------------------------------ how it runs
    if executor is not None and (workers is not None or devices is not None):
        raise CEMInputError("executor= runs the images on your executor, workers= and devices= configure the default "
                            "local pool: pass one or the other.")
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise CEMInputError(f"executor={describe_value(executor)} has no submit(); pass a concurrent.futures.Executor "
                            "(e.g. ProcessPoolExecutor(), or distributed.Client(...).get_executor()).")
    if workers is not None:
        workers = validate_int("workers", workers, 1)
    device_list = None
    if devices is not None:
        if "device" in kwargs:
            raise CEMInputError(f"device={kwargs['device']!r} and devices={devices!r} were both given; with devices= "
                                "each worker runs on its own device: drop device=.")
        device_list = _resolve_devices(devices)
    pooled = workers is not None or device_list is not None
    n_workers = workers if workers is not None else (len(device_list) if device_list else None)
    if pooled and kwargs.get("threads") is None:
        from .engine.runner import usable_cores

        kwargs["threads"] = max(1, usable_cores() // n_workers)

    # ------------------------------------------------------------------------ images and items
    loaded = []
    for name, source in _image_list(images):
        try:
            loaded.append((name, load_image(source)))
        except ImageError as exc:
            raise ImageError(f"image {name!r}: {exc}") from None
    items_all, image_hashes = _make_items(loaded, rois, task_obj, block)
    by_name = dict(loaded)
    position = {name: k for k, (name, _) in enumerate(loaded)}
    selected = [it for it in items_all
                if shard is None or (it[0] if shard_by == "item" else position[it[1]]) % shard[1] == shard[0]]

    # ------------------------------------------------------------------------ settings and cache key
    model_id = None
    cache_key = kwargs.get("cache_key")
    if isinstance(model, torch.nn.Module):
        from .cache import hash_model

        model_id = hash_model(model)
    elif cache_key is not None:
        model_id = f"key:{cache_key}"
    items_key = digest([(name, image_hashes[name], roi) for _, name, roi in items_all])
    settings = {key: _settings_value(key, full[key]) for key in sorted(full) if key not in _EXECUTION}
    settings.update(
        stage=stage, task=task_obj.name, task_params=_json_safe(describe_task(task_obj)), model=model_name(model),
        model_id=model_id, block_size=block, scale=scale, context_radius_px=context_radius, n_items=len(items_all),
        items_key=items_key, images=[name for name, _ in loaded],
        execution=_json_safe({"device": _settings_value("device", full.get("device")), "workers": n_workers,
                              "devices": device_list, "threads": kwargs.get("threads"),
                              "executor": None if executor is None else type(executor).__name__,
                              "shard_by": shard_by}),
    )
    folder = None
    if cache_dir is not None:
        from .devices import resolve_device
        from .engine.cachekey import model_identity
        from .tasks import task_cache_identity

        device_types = sorted({torch.device(d).type for d in device_list}) if device_list else \
            [resolve_device(full.get("device", "auto")).type]
        material = {"version": SWEEP_CACHE_VERSION, "model": model_identity(model, cache_key),
                    "task": task_cache_identity(task_obj), "stage": stage, "device": device_types,
                    "kwargs": {k: _key_value(k, v) for k, v in sorted(full.items()) if k not in _EXECUTION},
                    "items": [(name, image_hashes[name], list(roi)) for _, name, roi in items_all]}
        key = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:24]
        folder = Path(cache_dir) / f"sweep-{key}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CEMInputError(f"cache_dir={str(cache_dir)!r} cannot be created or written: {exc}. Pass a writable "
                                "folder.") from exc
        kwargs["cache_dir"] = str(cache_dir)
        settings["execution"]["cache_key"] = key

    # ------------------------------------------------------------------------ cached items
    call_kwargs = {**kwargs, "task": task_obj, "progress": False}
    if stage == "support":
        call_kwargs.setdefault("within", None)
    tags = {idx: {"index": idx, "image": name, "roi": list(roi), "image_sha256": image_hashes[name],
                  "key": digest(settings["items_key"], idx, name, image_hashes[name], roi)}
            for idx, name, roi in selected}
    results: dict[int, Any] = {}
    if folder is not None:
        for idx, _, _ in selected:
            cached = _load_item(folder / f"item-{idx}.npz", stage, tags[idx])
            if cached is not None:
                results[idx] = cached
    n_cached = len(results)
    todo: dict[str, list] = {}
    for idx, name, roi in selected:
        if idx not in results:
            todo.setdefault(name, []).append((idx, roi))

    # ------------------------------------------------------------------------ run
    bar = _Progress(progress, len(selected), n_cached)
    computed: set[int] = set()

    def on_done(name: str, got: list) -> None:
        for (idx, _), r in zip(todo[name], got):
            results[idx] = r
            computed.add(idx)
            if folder is not None and not (folder / f"item-{idx}.npz").exists():
                _write_item(r, folder / f"item-{idx}.npz")  # the worker's disk may not be this one
        bar.update(len(got))

    own = _local_pool(n_workers, device_list, kwargs.get("threads")) if pooled and todo else None
    failed = True
    try:
        _run(model, todo, by_name, stage, call_kwargs, tags, folder, executor if executor is not None else own, on_done)
        failed = False
    finally:
        bar.close()
        if own is not None:  # after a failure, do not wait for the maps still running
            own.shutdown(wait=not failed, cancel_futures=True)

    order = [idx for idx, _, _ in selected]
    item_of = {idx: (name, roi) for idx, name, roi in selected}
    energies: dict[int, float] = {}
    for name in {item_of[i][0] for i in order}:
        luma = _luma(by_name[name])
        idxs = [i for i in order if item_of[i][0] == name]
        for i, e in zip(idxs, _energies_mixed(luma, [item_of[i][1] for i in idxs])):
            energies[i] = float(e)
    items = [SweepItem(i, item_of[i][0], item_of[i][1], energies[i]) for i in order]
    out = [results[i] for i in order]
    done = [results[i] for i in order if i in computed]
    read = int(sum(r.forward_passes for r in done))
    spent = _forward_passes_spent([(item_of[i][0], results[i]) for i in order if i in computed])
    counts = {"items": len(items), "items_computed": len(done), "items_cached": len(items) - len(done),
              "forward_passes": spent, "forward_passes_saved": read - spent,
              "maps_wall_s": float(sum(r.wall_s for r in done)), "wall_s": time.perf_counter() - t_start}
    return Sweep(items, out, stage, settings, shard, counts)


def _forward_passes_spent(done: list) -> int:
    """The forward passes the model ran for ``done`` ((image name, result) pairs): a result read from forwards
    shared with the other ROIs of its image (``meta["shared"]``) counts its image's passes once per image."""
    spent, seen = 0, set()
    for name, r in done:
        shared = (r.meta or {}).get("shared")
        if shared is None:
            spent += int(r.forward_passes)
        elif name not in seen:
            seen.add(name)
            spent += int(shared["image_forward_passes"])
    return spent


def _energies_mixed(luma: np.ndarray, rois: list[tuple[int, int, int]]) -> list[float]:
    """:func:`texture_energy` of ROIs of any sizes, in order."""
    out = [0.0] * len(rois)
    for size in {r[2] for r in rois}:
        idx = [k for k, r in enumerate(rois) if r[2] == size]
        for k, e in zip(idx, _energies(luma, [rois[k] for k in idx])):
            out[k] = float(e)
    return out


def _local_pool(n_workers: int, devices: list[str] | None, threads: int | None) -> Executor:
    """A spawn-context process pool of ``n_workers``; with ``devices``, each worker takes one (round-robin)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    slots = None
    if devices:
        slots = ctx.Queue()
        for k in range(n_workers):
            slots.put(devices[k % len(devices)])
    return ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(slots, threads))


# --------------------------------------------------------------------------------- assertions over
_COLLECTORS: contextvars.ContextVar[tuple] = contextvars.ContextVar("cem_checks_over_collectors", default=())


@contextmanager
def collect_over_outcomes() -> Iterator[list]:
    """Collect, in order, every :class:`OverOutcome` that :func:`check_over` / :func:`assert_over` produce inside
    the block (a failing :func:`assert_over` is collected before it raises); nested blocks each collect."""
    out: list = []
    token = _COLLECTORS.set(_COLLECTORS.get() + (out,))
    try:
        yield out
    finally:
        _COLLECTORS.reset(token)


@dataclass(frozen=True)
class OverOutcome:
    """The verdict on a statistic of a per-item metric over a sweep.

    ``value`` is the ``statistic`` (``"mean"``, ``"max"``, ``"min"``, ``"median"`` or ``"quantile:q"``) of the
    metric over the ``n_items`` items; ``ci_low`` / ``ci_high`` its percentile bootstrap interval at level
    ``confidence`` (``n_boot`` resamples of the items, numpy Generator seeded by ``seed``). ``op`` is ``"<="``
    (``at_most``), ``">="`` (``at_least``) or ``"between"`` (both; ``bound`` = ``(at_least, at_most)``).
    ``decision`` says what was compared with the bound: ``"interval"`` (default, conservative: ``at_most`` holds
    when ``ci_high <= bound``, ``at_least`` when ``ci_low >= bound``) or ``"point"`` (``value`` itself).
    ``worst`` lists up to 5 ``(image, roi, value)`` items that drive a failure (NaN first, then the farthest on
    the wrong side of the bound); ``n_outside`` counts the items whose own value is on the wrong side (or NaN).
    ``unit``: as in :data:`COLUMNS` (``"px"``, ``"dB"``, ``"share"``, ...). ``values``: the metric of every item,
    in item order (NaN where undefined), what the report draws as the metric's distribution.
    """

    name: str
    metric: str
    statistic: str
    value: float
    ci_low: float
    ci_high: float
    op: str
    bound: Any
    passed: bool
    worst: tuple
    n_items: int
    confidence: float
    params: dict = field(default_factory=dict)
    unit: str = ""
    decision: str = "interval"
    n_boot: int = 2000
    seed: int = 0
    n_nan: int = 0
    n_outside: int = 0
    settings: dict = field(default_factory=dict)
    note: str = ""
    values: tuple = ()

    @property
    def expression(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.metric}({args})" if args else self.metric

    @property
    def bound_text(self) -> str:
        from .checks import _fmt

        if self.op == "between":
            return f"between {_fmt(self.bound[0], self.unit)} and {_fmt(self.bound[1], self.unit)} (inclusive)"
        return f"{self.op} {_fmt(self.bound, self.unit)}"

    def message(self) -> str:
        """A multi-line report: the statistic and its interval, the bound, the worst items, the sweep's settings."""
        from .checks import _fmt

        verdict = "passed" if self.passed else "FAILED"
        level = f"{self.confidence * 100:g}%"
        lines = [
            f"sweep property {self.name!r} {verdict}: {self.statistic} of {self.expression} over {self.n_items} items "
            f"{self.bound_text}",
            f"  measured: {self.statistic} = {_fmt(self.value, self.unit)}, {level} bootstrap CI "
            f"[{_fmt(self.ci_low, self.unit)}, {_fmt(self.ci_high, self.unit)}] ({self.n_boot} resamples, seed {self.seed})",
        ]
        if self.decision == "interval":
            used = {"<=": "upper end", ">=": "lower end"}.get(self.op, "both ends")
            lines.append(f"  bound:    {self.bound_text} (decided on the {used} of the interval)")
        else:
            lines.append(f"  bound:    {self.bound_text} (decided on the {self.statistic} itself)")
        if self.note:
            lines.append(f"  note:     {self.note}")
        if self.worst:
            lines.append(f"  worst items ({self.n_outside} of {self.n_items} outside the bound):")
            lines += [f"    image {img!r} roi (x, y, size) = ({', '.join(map(str, roi))}): {_fmt(v, self.unit)}"
                      for img, roi, v in self.worst]
        s = self.settings
        keys = ("model", "task", "stage", "mode", "seed", "block_size", "device", "context_radius_px")
        run = " ".join(f"{k}={s[k]}" for k in keys if s.get(k) is not None)
        if s.get("shard") is not None:
            run += f" shard={s['shard'][0]}/{s['shard'][1]}"
        lines.append(f"  sweep:    {run} items={self.n_items}".rstrip())
        lines.append("  see the items: sweep.frame (one row per item); sweep.results[k] is the map of row k")
        return "\n".join(lines)

    def to_record(self) -> dict[str, Any]:
        """A JSON-safe dict of the outcome (NaN/inf as None), with its ``message``."""
        return _json_safe({
            "name": self.name, "metric": self.metric, "expression": self.expression, "params": self.params,
            "statistic": self.statistic, "value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high,
            "op": self.op, "bound": list(self.bound) if isinstance(self.bound, tuple) else self.bound,
            "unit": self.unit, "passed": self.passed, "decision": self.decision,
            "worst": [{"image": img, "roi": list(roi), "value": v} for img, roi, v in self.worst],
            "n_items": self.n_items, "n_nan": self.n_nan, "n_outside": self.n_outside, "confidence": self.confidence, "n_boot": self.n_boot,
            "seed": self.seed, "settings": self.settings, "note": self.note, "values": list(self.values),
            "message": self.message(),
        })


class SweepPropertyError(AssertionError):
    """A property over a sweep did not hold. ``outcome`` holds the structured :class:`OverOutcome`."""

    def __init__(self, outcome: OverOutcome):
        super().__init__(outcome.message())
        self.outcome = outcome

    def __reduce__(self):
        return (type(self), (self.outcome,))


def __tracebackhide__(excinfo: Any) -> bool:
    """pytest hides this module's frames from the traceback of a :class:`SweepPropertyError` (its message says what
    failed); other errors keep their full traceback."""
    return isinstance(getattr(excinfo, "value", None), SweepPropertyError)


def _statistic(statistic: Any) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """``(label, f)``: f reduces the last axis of an array to the statistic."""
    simple = {"mean": np.mean, "max": np.max, "min": np.min, "median": np.median}
    if isinstance(statistic, str):
        if statistic in simple:
            f = simple[statistic]
            return statistic, lambda a: f(a, axis=-1)
        if statistic.startswith("quantile:"):
            try:
                q = float(statistic.split(":", 1)[1])
            except ValueError:
                q = float("nan")
            if 0.0 <= q <= 1.0:
                return f"quantile:{q:g}", lambda a: np.quantile(a, q, axis=-1)
    raise CEMInputError(
        f"statistic={statistic!r} is not understood; expected 'mean', 'max', 'min', 'median' or 'quantile:q' with q in "
        "[0, 1], e.g. statistic='quantile:0.9' for the 90th percentile over the items."
    )


def _number(name: str, value: Any, low: float = -math.inf, high: float = math.inf, open_ends: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) or \
            math.isnan(float(value)):
        raise CEMInputError(f"{name}={value!r} must be a number; got {type(value).__name__}.")
    v = float(value)
    ok = (low < v < high) if open_ends else (low <= v <= high)
    if not ok:
        brackets = ("(", ")") if open_ends else ("[", "]")
        raise CEMInputError(f"{name}={value!r} must lie in {brackets[0]}{low:g}, {high:g}{brackets[1]}.")
    return v


def _values(sweep_or_frame: Any, metric: Any, params: dict) -> tuple[np.ndarray, list, str, str, dict]:
    """``(values, labels, metric name, unit, settings)``: the metric per item, (image, roi) per item."""
    import pandas as pd

    from .checks import METRICS

    if isinstance(sweep_or_frame, Sweep):
        frame = sweep_or_frame.frame
        settings = {k: v for k, v in sweep_or_frame.settings.items() if k not in ("images", "execution")}
        settings["shard"] = sweep_or_frame.shard
        results = sweep_or_frame.results
    elif isinstance(sweep_or_frame, pd.DataFrame):
        frame, settings, results = sweep_or_frame, {}, None
    else:
        raise CEMInputError(f"sweep={describe_value(sweep_or_frame)} of type {type(sweep_or_frame).__name__} is not a "
                            "Sweep; pass the value returned by cem_checks.sweep() (or a Sweep.frame DataFrame).")
    n = len(frame)
    if n == 0:
        raise CEMInputError("the sweep has no items (an empty shard?); a statistic over no item is undefined. Check "
                            "the sweep on a shard with items, or on the merged sweep.")
    if all(c in frame.columns for c in ("image", "x", "y", "size")):
        labels = [(str(i), (int(x), int(y), int(s))) for i, x, y, s in
                  zip(frame["image"], frame["x"], frame["y"], frame["size"])]
    else:
        labels = [(f"row{k}", ()) for k in range(n)]
    if isinstance(metric, str) and metric in frame.columns:
        if params:
            raise CEMInputError(f"metric={metric!r} is a column of Sweep.frame and takes no parameters; got "
                                f"{sorted(params)}. Use a registered metric name (e.g. 'context_share' with beyond=20) "
                                "for a parametrised measurement.")
        try:
            values = frame[metric].to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            raise CEMInputError(f"column {metric!r} of Sweep.frame is not numeric; pick a numeric column such as "
                                "'effective_radius_px'.") from None
        return values, labels, metric, COLUMNS.get(metric, ""), settings
    if isinstance(metric, str) and metric not in METRICS:
        numeric = [c for c in frame.columns if c not in ("image",)]
        raise CEMInputError(
            f"metric={metric!r} is neither a column of Sweep.frame ({', '.join(numeric)}) nor a registered metric "
            f"({', '.join(sorted(METRICS))}); pass one of them or a callable (result, **params) -> float."
        )
    if not (isinstance(metric, str) or callable(metric)):
        raise CEMInputError(f"metric={describe_value(metric)} must be a column of Sweep.frame, a registered metric name "
                            "or a callable (result, **params) -> float.")
    if results is None:
        raise CEMInputError(f"metric {metric!r} is computed from the maps, which a DataFrame does not hold; pass the "
                            "Sweep, or a column of the frame.")
    from .checks import _resolve_metric

    name, spec = _resolve_metric(metric, params)
    values = np.empty(n)
    for k, r in enumerate(results):
        try:
            v = spec.func(r, **params)
        except CEMInputError as exc:
            img, roi = labels[k]
            raise CEMInputError(f"metric {name!r} on item {k} (image {img!r}, roi {roi}): {exc}") from None
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise CEMInputError(f"metric {name!r} returned {describe_value(v)} for item {k}; a metric must return a number.")
        values[k] = float(v)
    return values, labels, name, spec.unit, settings


def _bootstrap(values: np.ndarray, f: Callable, confidence: float, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of ``f`` over ``values`` (resampling the items with replacement)."""
    rng = np.random.default_rng(seed)
    n = values.size
    stats = np.empty(n_boot)
    chunk = max(1, 4_000_000 // n)
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        stats[start:start + m] = f(values[rng.integers(0, n, size=(m, n))])
    alpha = 1.0 - confidence
    lo, hi = np.quantile(stats, [alpha / 2, 1.0 - alpha / 2])
    return float(lo), float(hi)


def _over(sweep_or_frame: Any, metric: Any, at_most: Any, at_least: Any, statistic: Any, confidence: Any, n_boot: Any,
          seed: Any, decision: Any, name: Any, params: dict) -> OverOutcome:
    label, f = _statistic(statistic)
    confidence = _number("confidence", confidence, 0.0, 1.0, open_ends=True)
    n_boot = validate_int("n_boot", n_boot, 1)
    seed = validate_int("seed", seed, 0)
    if decision not in ("interval", "point"):
        raise CEMInputError(f"decision={decision!r} is not 'interval' (compare the bootstrap interval's far end with "
                            "the bound: conservative) or 'point' (compare the statistic itself).")
    if at_most is None and at_least is None:
        raise CEMInputError("check_over needs a bound: at_most=..., at_least=... or both (e.g. at_most=12 for a radius "
                            "in px).")
    hi = None if at_most is None else _number("at_most", at_most)
    lo = None if at_least is None else _number("at_least", at_least)
    if hi is not None and lo is not None and lo > hi:
        raise CEMInputError(f"at_least={lo:g} is above at_most={hi:g}; give at_least <= at_most.")
    values, labels, metric_name, unit, settings = _values(sweep_or_frame, metric, params)
    n = values.size
    nan = np.isnan(values)
    note = ""
    if nan.any():
        value = ci_low = ci_high = float("nan")
        which = metric_name
        note = (f"{int(nan.sum())} of {n} items have no value of {which} (NaN), so the statistic is undefined and "
                "the property fails")
        if metric_name == "context_share_beyond" and settings.get("context_radius_px") is None:
            note += "; the sweep was run without context_radius=, which this column needs"
        elif settings.get("stage") == "support":
            note += "; a sweep of stage 'support' has no effects: use stage='map' for effect metrics"
    else:
        value = float(f(values))
        ci_low, ci_high = _bootstrap(values, f, confidence, n_boot, seed)
    if decision == "interval":
        upper, lower = ci_high, ci_low
    else:
        upper = lower = value
    passed = not math.isnan(value)
    if hi is not None:
        passed = passed and upper <= hi
    if lo is not None:
        passed = passed and lower >= lo
    if hi is not None and lo is not None:
        op, bound, badness = "between", (lo, hi), np.maximum(values - hi, lo - values)
    elif hi is not None:
        op, bound, badness = "<=", hi, values
    else:
        op, bound, badness = ">=", lo, -values
    key = np.where(nan, np.inf, badness)
    n_outside = int((nan | (badness > (0.0 if op == "between" else (hi if op == "<=" else -lo)))).sum())
    order = np.argsort(-key, kind="stable")[:WORST_ITEMS]
    worst = tuple((labels[k][0], labels[k][1], float(values[k])) for k in order)
    outcome = OverOutcome(
        name=name or metric_name, metric=metric_name, statistic=label, value=value, ci_low=ci_low, ci_high=ci_high,
        op=op, bound=bound, passed=bool(passed), worst=worst, n_items=n, confidence=confidence, params=dict(params),
        unit=unit, decision=decision, n_boot=n_boot, seed=seed, n_nan=int(nan.sum()), n_outside=n_outside,
        settings=_json_safe(settings),
        note=note, values=tuple(float(v) for v in values),
    )
    for out in _COLLECTORS.get():
        out.append(outcome)
    return outcome


def check_over(sweep: Any, metric: str | Callable[..., float], *, at_most: float | None = None,
               at_least: float | None = None, statistic: str = "mean", confidence: float = 0.95, n_boot: int = 2000,
               seed: int = 0, decision: str = "interval", name: str | None = None, **params: Any) -> OverOutcome:
    """Compare a statistic over the items of ``sweep`` with ``at_most`` and/or ``at_least``; returns the
    :class:`OverOutcome` (never raises on a failed property).

    ``metric``: a column of :attr:`Sweep.frame` (e.g. ``"effective_radius_px"``, no ``params``), a registered
    metric name of :data:`cem_checks.checks.METRICS` (e.g. ``"context_share"`` with ``beyond=20``) or a callable
    ``(result, **params) -> float``, evaluated on each item's result. ``statistic``: ``"mean"``, ``"max"``,
    ``"min"``, ``"median"`` or ``"quantile:q"`` (q in [0, 1], numpy's linear interpolation), in the metric's unit.

    The interval is the percentile bootstrap over items (``n_boot`` resamples with replacement, a numpy
    Generator seeded by ``seed``) at level ``confidence``. The decision is conservative by default
    (``decision="interval"``): ``at_most`` passes when the interval's upper end is <= the bound, ``at_least``
    when its lower end is >= it, so a pass holds for the population of items the sweep samples, not only for these
    items; ``decision="point"`` compares the statistic itself. Note: for ``"max"`` (``"min"``) the bootstrap upper
    (lower) end is the sample's max (min). An item whose metric is NaN (undefined) makes the property fail.
    ``sweep`` may also be a :attr:`Sweep.frame` DataFrame (column metrics only). ``name`` labels the property.
    """
    return _over(sweep, metric, at_most, at_least, statistic, confidence, n_boot, seed, decision, name, params)


def assert_over(sweep: Any, metric: str | Callable[..., float], *, at_most: float | None = None,
                at_least: float | None = None, statistic: str = "mean", confidence: float = 0.95, n_boot: int = 2000,
                seed: int = 0, decision: str = "interval", name: str | None = None, **params: Any) -> OverOutcome:
    """:func:`check_over`, raising :class:`SweepPropertyError` (an ``AssertionError`` carrying ``.outcome``) when the
    property fails; else returns the outcome."""
    outcome = _over(sweep, metric, at_most, at_least, statistic, confidence, n_boot, seed, decision, name, params)
    if not outcome.passed:
        raise SweepPropertyError(outcome)
    return outcome
