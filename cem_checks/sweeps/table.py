"""The table of a sweep: :class:`SweepItem` (one (image, ROI)), :class:`Sweep` (the items, their maps and the
per-item :attr:`Sweep.frame`; saved to and loaded from a folder; shards joined by :meth:`Sweep.merge`)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_text
from ..errors import CEMInputError, describe_value

SWEEP_FORMAT = "cem-sweep"
SWEEP_FORMAT_VERSION = 1
STAGES = ("map", "support")
#: How ``shard=(K, N)`` splits a sweep: item by item, or image by image.
SHARD_BY = ("item", "image")

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
    from ..result import _json_safe as safe

    return safe(x)


def _result_class(stage: str):
    from ..result import CEMResult, SupportResult

    return CEMResult if stage == "map" else SupportResult


def _nan_metrics() -> dict[str, float]:
    nan = float("nan")
    return {c: nan for c in ("support_radius_px", "effective_radius_px", "positive_fraction_count",
                             "positive_fraction_mass", "negative_fraction_count", "negative_fraction_mass",
                             "context_share_beyond")}


def _item_metrics(result: Any, context_radius: float | None) -> dict[str, float]:
    """The metric columns of one item (see :attr:`Sweep.frame`)."""
    from .. import metrics as M
    from ..result import SupportResult

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
        by = {str((s.settings.get("execution") or {}).get("shard_by", "item")) for s in parts if s.shard is not None}
        if len(by) > 1:
            raise CEMInputError(f"the sweeps were split by different rules (shard_by {' and '.join(map(repr, sorted(by)))}"
                                "), so their shards hold overlapping items; merge the shards of one split (the same "
                                "shard_by and N).")
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
