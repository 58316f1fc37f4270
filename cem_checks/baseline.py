"""Regression baselines of causal effect maps: has the map drifted since it was accepted?

File format (``BASELINE_FORMAT_VERSION`` 1). A baseline named ``<stem>`` is two files side by side:

- ``<stem>.npz``: the per-block arrays (no pickle), each (rows, cols): ``effect``, ``ci_low``, ``ci_high``,
  ``stderr`` (float64 dB), ``n_samples``, ``distance`` (int64; distance in input px), ``support``, ``roi_mask``
  (bool).
- ``<stem>.json``: readable metadata, keys sorted so that a regenerated baseline diffs cleanly under version
  control: ``format`` (``"cem-baseline"``), ``format_version``, ``arrays_file`` (the ``.npz`` name),
  ``arrays_sha256`` (hash of the arrays' dtypes, shapes and values: a JSON paired with another ``.npz`` is
  refused), ``shape``, ``roi`` (output px), ``block_size`` (input px), ``scale``, ``task``, ``settings`` (seed,
  mode, device, draws, model, patch bank, ...), ``summary`` (effect range, block counts) and
  ``cem_checks_version``.

:func:`compare_to_baseline` compares a fresh :class:`~cem_checks.result.CEMResult` with a baseline, block by
block. A block *differs* when ``|effect - baseline effect| > atol_db`` plus, with ``use_ci=True``, the half
widths of both 95 % confidence intervals (Monte-Carlo noise of either map is tolerated; a block without a CI
gets no allowance). With ``compare_support=True`` a block whose ``support`` changed (it started or stopped
affecting the ROI output at all) also differs. A baseline computed for another grid (shape, ROI, block size,
scale or task) is *incompatible*. Other setting changes (seed, device, draws, model, patch bank) are listed
as notes.

Baselines given as a path are created and regenerated on demand:

=================  =======================================  ===========================  =================
``regen``          missing baseline                         map differs/incompatible     map matches
=================  =======================================  ===========================  =================
``None``           written; fails (status ``"created"``)    fails                        passes
``"mismatch"``     written; fails (status ``"created"``)    rewritten; fails             passes
``"all"``          written; passes (status ``"created"``)   rewritten; passes            rewritten; passes
=================  =======================================  ===========================  =================

A rewritten baseline has status ``"regenerated"``; its comparison still reports how the old one differed.

(The pytest plugin maps ``--cem-regen`` to ``"mismatch"`` and ``--cem-regen-all`` to ``"all"``.) An unreadable
or other-version baseline raises :class:`~cem_checks.errors.BaselineError`, unless ``regen`` is set, which
rewrites it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write
from .checks import (
    OffendingBlock,
    PropertyOutcome,
    __tracebackhide__,  # noqa: F401  (pytest hides this module's frames of a failed property)
    _finish,
    _map_hint,
    run_settings,
)
from .errors import BaselineError, CEMInputError, describe_value
from .grid import ROI
from .metrics import _validate_bool, _validate_number, _validate_result
from .result import CEMResult, _json_safe, _readonly

BASELINE_FORMAT = "cem-baseline"
BASELINE_FORMAT_VERSION = 1
#: The per-block arrays a baseline keeps, with their dtypes.
BASELINE_ARRAYS = {
    "effect": np.float64,
    "ci_low": np.float64,
    "ci_high": np.float64,
    "stderr": np.float64,
    "n_samples": np.int64,
    "distance": np.int64,
    "support": np.bool_,
    "roi_mask": np.bool_,
}
#: Accepted values of ``regen`` (see the module docstring).
REGEN_MODES = (None, "mismatch", "all")
#: Default absolute tolerance per block, in dB.
DEFAULT_ATOL_DB = 0.05
#: Settings whose change is reported as a note (not a failure).
_NOTED_SETTINGS = ("seed", "mode", "coarse", "fine", "tol_db", "device", "model", "patch_bank", "task_params")

__all__ = [
    "BASELINE_FORMAT_VERSION",
    "Baseline",
    "BaselineComparison",
    "REGEN_MODES",
    "assert_matches_baseline",
    "baseline_paths",
    "check_matches_baseline",
    "compare_to_baseline",
    "load_baseline",
    "save_baseline",
]


def baseline_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """The ``(<stem>.npz, <stem>.json)`` files of the baseline at ``path`` (given with either suffix or none)."""
    if not isinstance(path, (str, os.PathLike)):
        raise BaselineError(f"baseline path {describe_value(path)} must be a str or os.PathLike, e.g. 'baselines/sr4_roi'.")
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".npz", ".json") else p
    return stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".json")


def _arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class Baseline:
    """An accepted causal effect map to compare later maps with.

    Arrays (rows, cols), read-only: ``effect``, ``ci_low``, ``ci_high``, ``stderr`` (float64 dB), ``n_samples``,
    ``distance`` (int64, input px), ``support``, ``roi_mask`` (bool). ``roi`` (output px), ``block_size`` (input
    px), ``scale`` and ``task`` define the grid; ``settings`` holds the rest of the run's settings; ``path`` the
    file it was read from (None when built in memory).
    """

    effect: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    stderr: np.ndarray
    n_samples: np.ndarray
    distance: np.ndarray
    support: np.ndarray
    roi_mask: np.ndarray
    roi: ROI
    block_size: int
    scale: int
    task: str
    settings: dict = field(default_factory=dict)
    path: str | None = None

    def __post_init__(self):
        shape = np.shape(self.effect)
        if len(shape) != 2:
            raise BaselineError(f"Baseline.effect must be 2-D (rows, cols); got shape {shape}.")
        for name, dtype in BASELINE_ARRAYS.items():
            arr = np.asarray(getattr(self, name))
            if arr.shape != shape:
                raise BaselineError(f"Baseline.{name} has shape {arr.shape}; expected {shape} like Baseline.effect.")
            object.__setattr__(self, name, _readonly(arr.astype(dtype, copy=False)))
        object.__setattr__(self, "roi", ROI.parse(self.roi))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.effect.shape)

    @classmethod
    def from_result(cls, result: CEMResult) -> "Baseline":
        """The baseline of ``result`` (its arrays and settings)."""
        result = _validate_result(result)
        s = run_settings(result)
        settings = {k: s[k] for k in ("seed", "mode", "device", "coarse", "fine", "tol_db", "model")}
        settings.update(
            task_params=dict(result.task_params),
            patch_bank=dict(result.patch_bank),
            input_shape=list(result.input_shape),
            output_shape=list(result.output_shape),
            base_psnr=result.base_psnr,
        )
        return cls(
            **{name: getattr(result, name) for name in BASELINE_ARRAYS},
            roi=result.roi,
            block_size=int(result.block_size),
            scale=int(result.scale),
            task=str(result.task),
            settings=_json_safe(settings),
        )

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in BASELINE_ARRAYS}

    def metadata(self) -> dict[str, Any]:
        """The JSON metadata written beside the arrays."""
        from . import __version__

        eff = self.effect
        npz, _ = baseline_paths(self.path) if self.path else (None, None)
        return _json_safe(
            {
                "format": BASELINE_FORMAT,
                "format_version": BASELINE_FORMAT_VERSION,
                "arrays_file": npz.name if npz else None,
                "arrays_sha256": _arrays_sha256(self.arrays()),
                "shape": list(self.shape),
                "roi": list(self.roi.as_tuple()),
                "block_size": self.block_size,
                "scale": self.scale,
                "task": self.task,
                "settings": self.settings,
                "summary": {
                    "effect_min_db": float(eff.min()),
                    "effect_max_db": float(eff.max()),
                    "positive_blocks": int((eff > 0).sum()),
                    "negative_blocks": int((eff < 0).sum()),
                    "support_blocks": int(self.support.sum()),
                },
                "cem_checks_version": __version__,
            }
        )

    def to_record(self) -> dict[str, Any]:
        """A JSON-safe dict: the metadata plus the arrays as nested lists."""
        rec = self.metadata()
        rec.update({name: _json_safe(a) for name, a in self.arrays().items()})
        rec["path"] = self.path
        return rec

    def save(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``<stem>.npz`` and ``<stem>.json`` (each atomically; arrays first). Returns both paths."""
        npz, js = baseline_paths(path)
        arrays = self.arrays()
        atomic_write(npz, lambda fh: np.savez_compressed(fh, **arrays))
        meta = self.metadata()
        meta["arrays_file"] = npz.name
        text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
        atomic_write(js, lambda fh: fh.write(text.encode("utf-8")))
        return npz, js


def save_baseline(result: CEMResult | Baseline, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write the baseline of ``result`` at ``path`` (``<stem>.npz`` + ``<stem>.json``); returns both paths."""
    base = result if isinstance(result, Baseline) else Baseline.from_result(result)
    return base.save(path)


def _regen_hint() -> str:
    return "regenerate it with regen='all' (pytest --cem-regen-all) or regen='mismatch' (pytest --cem-regen)"


def load_baseline(path: str | os.PathLike) -> Baseline:
    """Read the baseline written by :func:`save_baseline` at ``path``.

    Raises :class:`BaselineError` when a file is missing, unreadable, of another format version, or when the
    JSON and the ``.npz`` do not belong together.
    """
    npz, js = baseline_paths(path)
    if not npz.is_file() or not js.is_file():
        have = [str(p) for p in (npz, js) if p.is_file()]
        lack = [str(p) for p in (npz, js) if not p.is_file()]
        raise BaselineError(
            f"baseline {str(npz.with_suffix(''))!r} is incomplete: found {have or 'no file'}, missing {lack}; a baseline "
            f"is a .npz and a .json written together by save_baseline(); {_regen_hint()}."
        )
    try:
        meta = json.loads(js.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaselineError(f"cannot read baseline metadata {str(js)!r} as JSON ({exc}); {_regen_hint()}.") from exc
    if not isinstance(meta, dict) or meta.get("format") != BASELINE_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise BaselineError(
            f"{str(js)!r} is not a CEM baseline (its 'format' is {describe_value(found)}, "
            f"expected {BASELINE_FORMAT!r}); point to a baseline written by save_baseline()."
        )
    version = meta.get("format_version")
    if version != BASELINE_FORMAT_VERSION:
        raise BaselineError(
            f"baseline {str(js)!r} has format version {version!r}; this cem_checks reads version "
            f"{BASELINE_FORMAT_VERSION}; {_regen_hint()}."
        )
    try:
        with np.load(npz, allow_pickle=False) as data:
            arrays = {name: np.array(data[name]) for name in BASELINE_ARRAYS}
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise BaselineError(f"cannot read the arrays of baseline {str(npz)!r} ({exc}); {_regen_hint()}.") from exc
    if _arrays_sha256({k: a.astype(BASELINE_ARRAYS[k], copy=False) for k, a in arrays.items()}) != meta.get("arrays_sha256"):
        raise BaselineError(
            f"the arrays in {str(npz)!r} do not match the hash recorded in {str(js)!r}: the two files were not "
            f"written together (e.g. one was replaced or merged alone); {_regen_hint()}."
        )
    try:
        return Baseline(
            **arrays,
            roi=ROI.parse(tuple(meta["roi"])),
            block_size=int(meta["block_size"]),
            scale=int(meta["scale"]),
            task=str(meta["task"]),
            settings=dict(meta.get("settings") or {}),
            path=str(npz.with_suffix("")),
        )
    except BaselineError:
        raise
    except (KeyError, TypeError, ValueError) as exc:  # CEMInputError (a bad roi) is a ValueError
        raise BaselineError(f"baseline metadata {str(js)!r} lacks or mangles a field ({exc!r}); {_regen_hint()}.") from exc


# ---------------------------------------------------------------------------------------- comparison
@dataclass(frozen=True)
class BaselineComparison:
    """The outcome of :func:`compare_to_baseline`.

    ``status``: ``"match"``, ``"mismatch"``, ``"incompatible"`` (another grid), ``"created"`` (no baseline
    existed; written from this map) or ``"regenerated"`` (rewritten from this map). ``n_differing``: blocks whose
    effect differs beyond the tolerance; ``n_support_changed``: blocks whose support changed;
    ``max_abs_diff_db``: the largest ``|effect - baseline|`` (NaN when nothing was compared); ``worst``: the
    differing blocks, largest excess first; ``reasons``: why the baseline is incompatible; ``notes``: settings
    that changed.
    """

    status: str
    passed: bool
    path: str | None
    atol_db: float
    use_ci: bool
    compare_support: bool
    n_blocks: int
    n_differing: int = 0
    n_support_changed: int = 0
    max_abs_diff_db: float = float("nan")
    worst: tuple = ()
    reasons: tuple = ()
    notes: tuple = ()
    settings: dict = field(default_factory=dict)

    @property
    def summary(self) -> str:
        """One sentence on what happened."""
        where = f" at {self.path!r}" if self.path else ""
        files = f"{self.path}.npz and {self.path}.json" if self.path else "the baseline"
        if self.status == "created":
            return (
                f"no baseline existed{where}: it was created from this map ({files}); review it, commit it and "
                "run again to compare against it"
            )
        drift = self._drift()
        if self.status == "regenerated":
            why = f" (it differed: {drift})" if (self.n_differing or self.n_support_changed or self.reasons) else ""
            tail = "" if self.passed else "; review the change and commit it"
            return f"the baseline{where} was regenerated from this map{why}{tail}"
        if self.status == "incompatible":
            return f"the baseline{where} was computed for another grid: {'; '.join(self.reasons)}; {_regen_hint()}"
        if self.status == "mismatch":
            return f"the map drifted from the baseline{where}: {drift}; if the change is intended, {_regen_hint()}"
        return f"the map matches the baseline{where} (largest difference {self.max_abs_diff_db:.4g} dB)"

    def _drift(self) -> str:
        if self.reasons:
            return "; ".join(self.reasons)
        tol = f"atol {self.atol_db:g} dB{' + CI half-widths' if self.use_ci else ''}"
        parts = [f"{self.n_differing} of {self.n_blocks} blocks differ beyond the tolerance ({tol}; largest "
                 f"difference {self.max_abs_diff_db:.4g} dB)"]
        if self.n_support_changed:
            parts.append(f"{self.n_support_changed} blocks changed support")
        return ", ".join(parts)

    def to_outcome(self, map_hint: str | None = None) -> PropertyOutcome:
        """This comparison as the causal property ``matches_baseline``: blocks beyond tolerance ``<= 0``."""
        compared = self.status in ("match", "mismatch") or (self.status == "regenerated" and not math.isnan(self.max_abs_diff_db))
        measured = self.n_differing + self.n_support_changed if compared else float("nan")
        notes = [self.summary] + [f"setting changed: {n}" for n in self.notes]
        kw = {} if map_hint is None else {"map_hint": map_hint}
        return PropertyOutcome(
            name="matches_baseline",
            description="the map matches its regression baseline block by block",
            metric="blocks_beyond_tolerance",
            params={"atol_db": self.atol_db, "use_ci": self.use_ci, "compare_support": self.compare_support,
                    "baseline": self.path},
            measured=measured,
            op="<=",
            bound=0,
            unit="count",
            passed=self.passed,
            worst_blocks=self.worst,
            settings=dict(self.settings),
            note="\n            ".join(notes),
            **kw,
        )

    def message(self) -> str:
        return self.to_outcome().message()

    def to_record(self) -> dict[str, Any]:
        return _json_safe(
            {
                "status": self.status,
                "passed": self.passed,
                "path": self.path,
                "atol_db": self.atol_db,
                "use_ci": self.use_ci,
                "compare_support": self.compare_support,
                "n_blocks": self.n_blocks,
                "n_differing": self.n_differing,
                "n_support_changed": self.n_support_changed,
                "max_abs_diff_db": self.max_abs_diff_db,
                "worst": [b.to_record() for b in self.worst],
                "reasons": list(self.reasons),
                "notes": list(self.notes),
                "settings": self.settings,
                "summary": self.summary,
            }
        )

    def to_frame(self):
        """The differing blocks as a pandas DataFrame (see :meth:`PropertyOutcome.to_frame`)."""
        return self.to_outcome().to_frame()


def _incompatibilities(result: CEMResult, base: Baseline) -> list[str]:
    out = []
    for what, now, then in (
        ("grid shape (rows, cols)", (result.rows, result.cols), base.shape),
        ("roi (x, y, size)", result.roi.as_tuple(), base.roi.as_tuple()),
        ("block_size", result.block_size, base.block_size),
        ("scale", result.scale, base.scale),
        ("task", result.task, base.task),
    ):
        if tuple(np.atleast_1d(now)) != tuple(np.atleast_1d(then)):
            out.append(f"{what} is {now} now, {then} in the baseline")
    return out


def _setting_notes(result: CEMResult, base: Baseline) -> list[str]:
    now = Baseline.from_result(result).settings
    notes = []
    for key in _NOTED_SETTINGS:
        a, b = now.get(key), base.settings.get(key)
        if key == "patch_bank":
            a, b = (a or {}).get("sha256"), (b or {}).get("sha256")
        if a != b:
            notes.append(f"{key}: {b!r} in the baseline, {a!r} now")
    return notes


def _half_width(ci_low: np.ndarray, ci_high: np.ndarray) -> np.ndarray:
    hw = (np.asarray(ci_high, np.float64) - np.asarray(ci_low, np.float64)) / 2
    return np.where(np.isfinite(hw), hw, 0.0)


def _diff(result: CEMResult, base: Baseline, atol_db: float, use_ci: bool, compare_support: bool) -> dict[str, Any]:
    d = np.asarray(result.effect, np.float64) - base.effect
    tol = np.full(d.shape, atol_db)
    if use_ci:
        tol = tol + _half_width(result.ci_low, result.ci_high) + _half_width(base.ci_low, base.ci_high)
    excess = np.abs(d) - tol
    differ = excess > 0
    changed = (np.asarray(result.support) != base.support) if compare_support else np.zeros(d.shape, bool)
    # order: effect differences by excess, then support changes
    key = np.where(differ, excess, np.where(changed, -1.0, -np.inf))
    idx = np.argsort(-key.ravel(), kind="stable")
    worst = []
    for i in idx[: 5]:
        if not np.isfinite(key.ravel()[i]):
            break
        r, c = divmod(int(i), result.cols)
        bits = []
        if differ[r, c]:
            bits.append(f"baseline {base.effect[r, c]:+.3f} dB, difference {d[r, c]:+.3f} dB > tolerance {tol[r, c]:.3f} dB")
        if changed[r, c]:
            bits.append(f"support {bool(base.support[r, c])} in the baseline, {bool(result.support[r, c])} now")
        worst.append(OffendingBlock.of(result, r, c, "; ".join(bits)))
    return dict(
        n_differing=int(differ.sum()),
        n_support_changed=int(changed.sum()),
        max_abs_diff_db=float(np.abs(d).max()),
        worst=tuple(worst),
    )


def compare_to_baseline(
    result: CEMResult,
    baseline: str | os.PathLike | Baseline | CEMResult,
    *,
    atol_db: float = DEFAULT_ATOL_DB,
    use_ci: bool = True,
    compare_support: bool = True,
    regen: str | None = None,
) -> BaselineComparison:
    """Compare ``result`` with ``baseline`` block by block (see the module docstring for the rules).

    Args:
        result: the fresh map.
        baseline: a path (``<stem>``, ``<stem>.npz`` or ``<stem>.json``), a :class:`Baseline` or a
            :class:`CEMResult`. Only a path is created or regenerated.
        atol_db: absolute tolerance per block, in dB (>= 0).
        use_ci: widen each block's tolerance by the half widths of both 95 % confidence intervals.
        compare_support: count blocks whose ``support`` changed as differing.
        regen: ``None``, ``"mismatch"`` (rewrite a differing baseline, still fail) or ``"all"`` (rewrite, pass).

    Returns:
        a :class:`BaselineComparison`; it does not raise on drift (see :func:`assert_matches_baseline`).
    """
    result = _validate_result(result)
    atol_db = _validate_number("atol_db", atol_db, low=0.0, high=math.inf, unit="dB")
    if math.isinf(atol_db):
        raise CEMInputError("atol_db=inf would accept every map; give a finite tolerance in dB, e.g. 0.05.")
    use_ci = _validate_bool("use_ci", use_ci)
    compare_support = _validate_bool("compare_support", compare_support)
    if regen not in REGEN_MODES:
        raise BaselineError(f"regen={regen!r} is not one of {REGEN_MODES}; use None, 'mismatch' or 'all'.")
    common = dict(atol_db=atol_db, use_ci=use_ci, compare_support=compare_support, n_blocks=result.rows * result.cols,
                  settings=run_settings(result))

    if isinstance(baseline, (str, os.PathLike)):
        npz, js = baseline_paths(baseline)
        stem = str(npz.with_suffix(""))
        if not npz.exists() and not js.exists():
            save_baseline(result, stem)
            return BaselineComparison("created", regen == "all", stem, **common)
        try:
            base = load_baseline(stem)
        except BaselineError as exc:
            if regen is None:
                raise
            save_baseline(result, stem)
            return BaselineComparison(
                "regenerated", regen == "all", stem, reasons=(f"the old baseline was unreadable: {exc}",), **common
            )
    elif isinstance(baseline, (Baseline, CEMResult)):
        if regen is not None:
            raise BaselineError(
                f"regen={regen!r} needs a baseline path to write to; got a {type(baseline).__name__} object. Pass "
                "the baseline's path instead, or regen=None."
            )
        base = baseline if isinstance(baseline, Baseline) else Baseline.from_result(baseline)
        stem = base.path
    else:
        raise BaselineError(
            f"baseline={describe_value(baseline)} of type {type(baseline).__name__} is not a baseline; pass a path "
            "(written by save_baseline), a Baseline or a CEMResult."
        )

    notes = tuple(_setting_notes(result, base))
    reasons = tuple(_incompatibilities(result, base))
    if reasons:
        status, found = "incompatible", dict(reasons=reasons)
    else:
        found = _diff(result, base, atol_db, use_ci, compare_support)
        status = "match" if found["n_differing"] == 0 and found["n_support_changed"] == 0 else "mismatch"
    if regen == "all" or (regen == "mismatch" and status != "match"):
        save_baseline(result, stem)
        return BaselineComparison("regenerated", regen == "all", stem, notes=notes, **found, **common)
    return BaselineComparison(status, status == "match", stem, notes=notes, **found, **common)


def check_matches_baseline(result: CEMResult, baseline: str | os.PathLike | Baseline | CEMResult, **kwargs: Any) -> PropertyOutcome:
    """:func:`compare_to_baseline` as the causal property ``matches_baseline`` (a :class:`PropertyOutcome`;
    collected by :func:`cem_checks.checks.collect_outcomes`)."""
    comparison = compare_to_baseline(result, baseline, **kwargs)
    return _finish(comparison.to_outcome(_map_hint(result)), False)


def assert_matches_baseline(result: CEMResult, baseline: str | os.PathLike | Baseline | CEMResult, **kwargs: Any) -> PropertyOutcome:
    """:func:`check_matches_baseline`, raising :class:`~cem_checks.checks.CausalPropertyError` unless the map
    matches (a created or regenerated baseline fails, except with ``regen="all"``)."""
    comparison = compare_to_baseline(result, baseline, **kwargs)
    return _finish(comparison.to_outcome(_map_hint(result)), True)
