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

Modules, one job each: :mod:`.rois` (choosing ROIs), :mod:`.table` (:class:`Sweep`, :class:`SweepItem`: the
items, their maps and their table), :mod:`.items` (images, items and map settings, validated before any forward
pass), :mod:`.execution` (running the maps: :func:`run_image`, the local pool, cache files, progress),
:mod:`.run` (:func:`sweep`) and :mod:`.assertions` (:func:`check_over`, :func:`assert_over`).
"""

from __future__ import annotations

from .assertions import OverOutcome, SweepPropertyError, assert_over, check_over, collect_over_outcomes
from .execution import run_image
from .rois import roi_grid, roi_sample, texture_energy
from .run import sweep
from .table import COLUMNS, Sweep, SweepItem

# the constants of the modules, importable from the package as before it was split
from .assertions import WORST_ITEMS  # noqa: E402,F401
from .execution import _Progress  # noqa: E402,F401
from .items import SWEEP_CACHE_VERSION  # noqa: E402,F401
from .rois import LUMA, TEXTURES  # noqa: E402,F401
from .table import SHARD_BY, STAGES, SWEEP_FORMAT, SWEEP_FORMAT_VERSION  # noqa: E402,F401

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
