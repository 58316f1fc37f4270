"""Causal properties of a map: ``check_*`` functions return a :class:`PropertyOutcome`; their ``assert_*`` twins
raise :class:`CausalPropertyError` (an ``AssertionError``) when the property does not hold, else return the
outcome.

Each property is a comparison ``metric(result, **params) <op> bound`` of a metric of
:mod:`cem_checks.metrics`:

================================  ==============================================================  ===========
property                          comparison                                                      unit
================================  ==============================================================  ===========
``positive_effect_local``         ``effective_radius(mass, sign="positive") <= radius``           input px
``negative_fraction_at_most``     ``negative_fraction(by) <= bound``                              share
``receptive_field_within``        ``support_radius() <= radius`` (or ``max_reach``, see ``by``)   input px
``uses_context_beyond``           ``context_share(beyond=radius) >= share``                       share
``effect_range_between``          ``low_db <= effect_range_db() <= high_db``                      dB
:func:`check_property`            any registered metric (see :data:`METRICS`) or a callable       any
================================  ==============================================================  ===========

A NaN measurement (an undefined metric, e.g. :func:`~cem_checks.metrics.gini` of an empty map) fails every
comparison. Every outcome produced inside :func:`collect_outcomes` is also appended to its list, so a report
can list the properties that passed as well as those that failed.
"""

from __future__ import annotations

import contextvars
import inspect
import math
import operator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from . import metrics as M
from .errors import CEMInputError, describe_value
from .result import CEMResult, SupportResult, _json_safe

#: How many of the blocks that drive a measurement an outcome lists.
WORST_BLOCKS = 5

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
}
#: Accepted comparison operators; ``"between"`` takes a ``(low, high)`` bound, both ends included.
OPS = tuple(_OPS) + ("between",)

DEFAULT_MAP_HINT = (
    "result.to_frame() lists every block (distance_px, effect_db, CI); result.save('cem_map.npz') keeps the map"
)
#: The hint of an outcome checked on a :class:`SupportResult` (the support stage alone: no effects to list).
SUPPORT_HINT = (
    "result.to_frame() lists every block (distance_px, support, resolved: the support stage estimated no effects); "
    "result.save('cem_support.npz') keeps it"
)

__all__ = [
    "CausalPropertyError",
    "METRICS",
    "OPS",
    "OffendingBlock",
    "PropertyOutcome",
    "assert_effect_range_between",
    "assert_negative_fraction_at_most",
    "assert_positive_effect_local",
    "assert_property",
    "assert_receptive_field_within",
    "assert_uses_context_beyond",
    "check_effect_range_between",
    "check_negative_fraction_at_most",
    "check_positive_effect_local",
    "check_property",
    "check_receptive_field_within",
    "check_uses_context_beyond",
    "collect_outcomes",
    "MetricSpec",
    "run_settings",
    "with_map_hint",
]


# ------------------------------------------------------------------------------------------ outcomes
@dataclass(frozen=True)
class OffendingBlock:
    """One block that drives a measurement: grid position, distance to the ROI (input px), effect and its CI (dB).

    ``block_px`` is the block side (input px; 0 when unknown); :attr:`box_px` is then the block's box
    ``(x, y, w, h)`` in input px, the coordinates the ROI is given in (x a column, y a row)."""

    row: int
    col: int
    distance_px: int
    effect_db: float
    ci_low_db: float
    ci_high_db: float
    detail: str = ""
    block_px: int = 0

    @classmethod
    def of(cls, result: CEMResult | SupportResult, row: int, col: int, detail: str = "") -> "OffendingBlock":
        b = int(result.block_size)
        if isinstance(result, SupportResult):  # no effects: the block changed the ROI output without the others
            nan = float("nan")
            far = int(result.far_distance[row, col])
            return cls(int(row), int(col), int(result.distance[row, col]), nan, nan, nan,
                       detail or f"changes the ROI output without other blocks (its pixels lie up to {far} px from the "
                                 "ROI; support stage, effect not estimated)", b)
        return cls(
            int(row),
            int(col),
            int(result.distance[row, col]),
            float(result.effect[row, col]),
            float(result.ci_low[row, col]),
            float(result.ci_high[row, col]),
            detail,
            b,
        )

    @property
    def box_px(self) -> tuple[int, int, int, int] | None:
        """The block as ``(x, y, w, h)`` input px (None when ``block_px`` is unknown)."""
        b = self.block_px
        return (self.col * b, self.row * b, b, b) if b > 0 else None

    def name(self) -> str:
        """``"block (x, y, w, h) = (8, 4, 4, 4) px [row 1, col 2]"``, or ``"block (row 1, col 2)"`` without a size."""
        box = self.box_px
        if box is None:
            return f"block (row {self.row}, col {self.col})"
        return f"block (x, y, w, h) = ({', '.join(map(str, box))}) px [row {self.row}, col {self.col}]"

    def describe(self) -> str:
        extra = f"; {self.detail}" if self.detail else ""
        if math.isnan(self.effect_db):
            return f"{self.name()} at {self.distance_px} px{extra}"
        ci = "no CI" if math.isnan(self.ci_low_db) else f"95% CI [{self.ci_low_db:+.3f}, {self.ci_high_db:+.3f}]"
        return f"{self.name()} at {self.distance_px} px: {self.effect_db:+.3f} dB, {ci}{extra}"

    def to_record(self) -> dict[str, Any]:
        box = self.box_px
        return _json_safe(
            {
                "row": self.row,
                "col": self.col,
                "box_px": None if box is None else list(box),
                "distance_px": self.distance_px,
                "effect_db": self.effect_db,
                "ci_low_db": self.ci_low_db,
                "ci_high_db": self.ci_high_db,
                "detail": self.detail,
            }
        )


def _fmt(value: Any, unit: str) -> str:
    if isinstance(value, (tuple, list)):
        return " and ".join(_fmt(v, unit) for v in value)
    v = float(value)
    if math.isnan(v):
        return "undefined (NaN)"
    if unit == "px":
        return f"{v:g} px"
    if unit == "dB":
        return f"{v:.4g} dB"
    if unit == "share":
        return f"{v:.4g} ({v * 100:.2f}%)"
    if unit == "count":
        return f"{v:g}"
    return f"{v:.4g}{f' {unit}' if unit else ''}"


@dataclass(frozen=True)
class PropertyOutcome:
    """The verdict on one causal property of one map.

    ``measured <op> bound`` decided ``passed``; ``metric`` and ``params`` name the measurement, ``unit`` its unit
    (``"px"`` input pixels, ``"dB"``, ``"share"`` a fraction in [0, 1], ``"count"``, or ``""``);
    ``worst_blocks`` are the blocks that drive the measured value (for a failure: the offenders first);
    ``settings`` the run's settings (model, task, roi, seed, mode, device, ...); ``note`` an optional remark;
    ``map_hint`` where to see the map.
    """

    name: str
    description: str
    metric: str
    params: dict
    measured: Any
    op: str
    bound: Any
    unit: str
    passed: bool
    worst_blocks: tuple = ()
    settings: dict = field(default_factory=dict)
    note: str = ""
    map_hint: str = DEFAULT_MAP_HINT

    @property
    def expression(self) -> str:
        """The measurement as a call, e.g. ``effective_radius(mass=0.9, sign='positive')``."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.metric}({args})"

    @property
    def bound_text(self) -> str:
        if self.op == "between":
            lo, hi = self.bound
            return f"between {_fmt(lo, self.unit)} and {_fmt(hi, self.unit)} (inclusive)"
        return f"{self.op} {_fmt(self.bound, self.unit)}"

    def message(self) -> str:
        """A multi-line report: property, measured value, bound, worst blocks, run settings, where the map is."""
        s = self.settings
        verdict = "passed" if self.passed else "FAILED"
        lines = [
            f"causal property {self.name!r} {verdict}: {self.description}",
            f"  measured: {self.expression} = {_fmt(self.measured, self.unit)}",
            f"  bound:    {self.bound_text}",
        ]
        if self.note:
            lines.append(f"  note:     {self.note}")
        if self.worst_blocks:
            lines.append("  worst blocks:")
            lines += [f"    {b.describe()}" for b in self.worst_blocks]
        else:
            lines.append("  worst blocks: none")
        keys = ("model", "task", "roi", "block_size", "scale", "seed", "mode", "device")
        run = " ".join(f"{k}={s[k]}" for k in keys if k in s and s[k] != "")
        lines.append(f"  run:      {run}")
        lines.append(f"  see the map: {self.map_hint}")
        return "\n".join(lines)

    def to_record(self) -> dict[str, Any]:
        """A JSON-safe dict of the outcome (NaN/inf as None)."""
        return _json_safe(
            {
                "name": self.name,
                "description": self.description,
                "metric": self.metric,
                "params": self.params,
                "expression": self.expression,
                "measured": self.measured,
                "op": self.op,
                "bound": list(self.bound) if isinstance(self.bound, tuple) else self.bound,
                "unit": self.unit,
                "passed": self.passed,
                "worst_blocks": [b.to_record() for b in self.worst_blocks],
                "settings": self.settings,
                "note": self.note,
                "map_hint": self.map_hint,
                "message": self.message(),
            }
        )

    def to_frame(self):
        """The worst blocks as a pandas DataFrame (one row per block; units in the column names)."""
        import pandas as pd

        cols = ["row", "col", "distance_px", "effect_db", "ci_low_db", "ci_high_db", "detail"]
        rows = [[getattr(b, c) for c in cols] + list(b.box_px or (None,) * 4) for b in self.worst_blocks]
        return pd.DataFrame(rows, columns=cols + ["x_px", "y_px", "w_px", "h_px"])


class CausalPropertyError(AssertionError):
    """A causal property did not hold. ``outcome`` holds the structured :class:`PropertyOutcome`."""

    def __init__(self, outcome: PropertyOutcome):
        super().__init__(outcome.message())
        self.outcome = outcome

    def __reduce__(self):
        return (type(self), (self.outcome,))


def __tracebackhide__(excinfo: Any) -> bool:
    """pytest hides this module's frames from the traceback of a :class:`CausalPropertyError` (its structured message
    says what failed; ``pytest --full-trace`` shows them): pytest calls a callable ``__tracebackhide__`` with the
    exception info. Other errors keep their full traceback."""
    return isinstance(getattr(excinfo, "value", None), CausalPropertyError)


# ----------------------------------------------------------------------------------------- collection
_COLLECTORS: contextvars.ContextVar[tuple] = contextvars.ContextVar("cem_checks_collectors", default=())


@contextmanager
def collect_outcomes(map_hint: str | None = None, *, also: str | None = None,
                     isolated: bool = False) -> Iterator[list]:
    """Collect, in order, every :class:`PropertyOutcome` produced by a ``check_*`` / ``assert_*`` call inside the
    block (passes and failures; a failing ``assert_*`` is collected before it raises). Nested blocks each
    collect. ``map_hint`` (e.g. where a report shows the map) replaces the default hint of the outcomes made
    inside; ``also`` is added to the default hint of each result's kind instead (a map lists its effects, a
    support-stage result its support), e.g. where the results are written; the innermost block that gives either
    wins. ``isolated=True`` hides the block from the enclosing blocks: they do not receive its outcomes (e.g. a
    test session run inside another one)."""
    for name, value in (("map_hint", map_hint), ("also", also)):
        if value is not None and not isinstance(value, str):
            raise CEMInputError(f"{name}={describe_value(value)} must be a string or None.")
    if not isinstance(isolated, bool):
        raise CEMInputError(f"isolated={isolated!r} must be True or False.")
    out: list = []
    token = _COLLECTORS.set((() if isolated else _COLLECTORS.get()) + ((out, (map_hint, also)),))
    try:
        yield out
    finally:
        _COLLECTORS.reset(token)


def default_hint(result: Any) -> str:
    """Where to see every block of ``result``: its effects for a map, its support for a support-stage result."""
    return SUPPORT_HINT if isinstance(result, SupportResult) else DEFAULT_MAP_HINT


def _map_hint(result: CEMResult | SupportResult) -> str:
    for _, (hint, also) in reversed(_COLLECTORS.get()):
        if hint is not None:
            return hint
        if also is not None:
            return f"{default_hint(result)}; {also}"
    meta = getattr(result, "meta", None)
    hint = meta.get("map_hint") if isinstance(meta, dict) else None
    return hint if isinstance(hint, str) else default_hint(result)


def _finish(outcome: PropertyOutcome, raise_on_failure: bool) -> PropertyOutcome:
    """Hand ``outcome`` to the active collectors; raise :class:`CausalPropertyError` if asked and it failed."""
    for out, _ in _COLLECTORS.get():
        out.append(outcome)
    if raise_on_failure and not outcome.passed:
        raise CausalPropertyError(outcome)
    return outcome


def run_settings(result: CEMResult) -> dict[str, Any]:
    """The settings an outcome reports: ``result.settings()`` plus the model name."""
    s = dict(result.settings())
    s["roi"] = tuple(result.roi.as_tuple())
    s["model"] = result.model
    return s


# ------------------------------------------------------------------------------- which blocks to list
def _top(result: CEMResult, candidates: np.ndarray, keys: Sequence[np.ndarray], k: int = WORST_BLOCKS) -> tuple:
    """The first ``k`` candidate blocks ordered by ``keys`` (each (rows, cols), descending, first key first)."""
    idx = np.flatnonzero(candidates)
    if idx.size == 0:
        return ()
    order = np.lexsort(tuple(-np.asarray(key, np.float64).ravel()[idx] for key in reversed(keys)))
    chosen = idx[order][:k]
    return tuple(OffendingBlock.of(result, *divmod(int(i), result.cols)) for i in chosen)


def _effect_map(result: CEMResult, params: dict, default_significant: bool = False) -> np.ndarray:
    sig = params.get("significant", default_significant)
    return M.significant_effect(result) if sig else np.asarray(result.effect)


def _sel(result: CEMResult, params: dict) -> np.ndarray:
    return M.selection(result, params.get("include_roi", False))


def _worst_radius(result, params, op, bound):
    e = _effect_map(result, params)
    w = M._weights(e, params.get("sign", "positive"))
    cand = _sel(result, params) & (w > 0)
    d = result.distance
    radius = params.get("radius")
    if radius is None and op in ("<", "<=") and not isinstance(bound, tuple):
        radius = bound
    if radius is not None and (cand & (d > radius)).any():
        return _top(result, cand & (d > radius), [w, d])
    return _top(result, cand, [d, w])


def _worst_context(result, params, op, bound):
    a = np.abs(_effect_map(result, params))
    cand = _sel(result, params) & (a > 0) & (result.distance > params.get("beyond", 0))
    return _top(result, cand, [a, result.distance])


def _worst_signed(sign: int):
    def worst(result, params, op, bound):
        e = _effect_map(result, params) * sign
        return _top(result, _sel(result, params) & (e > 0), [e, result.distance])

    return worst


def _worst_reach(result, params, op, bound):
    e = _effect_map(result, params, default_significant=True)
    return _top(result, _sel(result, params) & (e != 0), [result.distance, np.abs(e)])


def _worst_support(result, params, op, bound):
    return _top(result, _sel(result, params) & result.support, [result.far_distance, np.abs(result.effect)])


def _worst_range(result, params, op, bound):
    e = _effect_map(result, params)
    sel = _sel(result, params)
    hi = _top(result, sel, [e], 1)
    lo = _top(result, sel, [-e], 1)
    return hi + tuple(b for b in lo if (b.row, b.col) != (hi[0].row, hi[0].col))


def _worst_abs(result, params, op, bound):
    a = np.abs(_effect_map(result, params))
    return _top(result, _sel(result, params) & (a > 0), [a, result.distance])


@dataclass(frozen=True)
class MetricSpec:
    """A metric that properties can compare: its function, unit and which blocks drive its value."""

    func: Callable[..., float]
    unit: str
    worst: Callable[..., tuple] = _worst_abs


#: The scalar metrics :func:`check_property` accepts by name.
METRICS: dict[str, MetricSpec] = {
    "effective_radius": MetricSpec(M.effective_radius, "px", _worst_radius),
    "locality": MetricSpec(M.locality, "share", _worst_radius),
    "context_share": MetricSpec(M.context_share, "share", _worst_context),
    "negative_fraction": MetricSpec(M.negative_fraction, "share", _worst_signed(-1)),
    "positive_fraction": MetricSpec(M.positive_fraction, "share", _worst_signed(+1)),
    "max_reach": MetricSpec(M.max_reach, "px", _worst_reach),
    "support_radius": MetricSpec(M.support_radius, "px", _worst_support),
    "effect_range_db": MetricSpec(M.effect_range_db, "dB", _worst_range),
    "gini": MetricSpec(M.gini, "", _worst_abs),
    "diffusion_index": MetricSpec(M.diffusion_index, "", _worst_abs),
}


# --------------------------------------------------------------------------------------- evaluation
def _validate_bound(op: str, bound: Any) -> Any:
    if op not in OPS:
        raise CEMInputError(f"op={op!r} is not a comparison; expected one of {', '.join(map(repr, OPS))}.")
    is_num = lambda v: isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))  # noqa: E731
    if op == "between":
        if not (isinstance(bound, (tuple, list)) and len(bound) == 2 and all(is_num(v) for v in bound)):
            raise CEMInputError(f"bound={describe_value(bound)} must be a (low, high) pair of numbers for op='between'.")
        lo, hi = float(bound[0]), float(bound[1])
        if not lo <= hi:
            raise CEMInputError(f"bound=({lo:g}, {hi:g}) has low > high (or a NaN); give (low, high) with low <= high.")
        return (lo, hi)
    if not is_num(bound) or math.isnan(float(bound)):
        raise CEMInputError(f"bound={describe_value(bound)} must be a number for op={op!r}.")
    return bound


def _compare(measured: Any, op: str, bound: Any) -> bool:
    v = float(measured)
    if math.isnan(v):
        return False
    if op == "between":
        return bound[0] <= v <= bound[1]
    return bool(_OPS[op](v, bound))


def _resolve_metric(metric: Any, params: dict) -> tuple[str, MetricSpec]:
    if isinstance(metric, str):
        if metric not in METRICS:
            raise CEMInputError(
                f"metric={metric!r} is not a known metric; expected one of {', '.join(sorted(METRICS))}, or a "
                "callable (result, **params) -> float."
            )
        name, spec = metric, METRICS[metric]
    elif callable(metric):
        name = getattr(metric, "__name__", type(metric).__name__)
        spec = MetricSpec(metric, "", _worst_abs)
    else:
        raise CEMInputError(
            f"metric={describe_value(metric)} must be a metric name (e.g. 'effective_radius') or a callable "
            "(result, **params) -> float."
        )
    try:
        inspect.signature(spec.func).bind(None, **params)
    except TypeError as exc:
        raise CEMInputError(
            f"metric {name!r} does not take the parameters {sorted(params)} ({exc}); its signature is "
            f"{name}{inspect.signature(spec.func)}."
        ) from None
    except ValueError:  # callables without an inspectable signature
        pass
    return name, spec


def _evaluate(result: Any, metric: Any, op: str, bound: Any, params: dict, *, name: str | None,
              description: str | None, note: str = "", require_measured: bool = False) -> PropertyOutcome:
    result = M._validate_result(result)
    bound = _validate_bound(op, bound)
    metric_name, spec = _resolve_metric(metric, params)
    if not isinstance(require_measured, bool):
        raise CEMInputError(f"require_measured={require_measured!r} must be True or False.")
    measured = spec.func(result, **params)
    if isinstance(measured, (np.integer, np.floating)):
        measured = measured.item()
    if isinstance(measured, bool) or not isinstance(measured, (int, float)):
        raise CEMInputError(f"metric {metric_name!r} returned {describe_value(measured)}; a metric must return a number.")
    passed = _compare(measured, op, bound)
    if not note and math.isnan(float(measured)):
        note = "the metric is undefined for this map (NaN: e.g. no effect mass outside the ROI), so the property fails"
    if metric_name != "support_radius" and not measured_outside_roi(result):
        vacuous = (f"no block outside the ROI moved the ROI PSNR by tol_db ({result.tol_db:g} dB): nothing was "
                   "measured")
        if require_measured:
            passed = False
            vacuous += " (require_measured=True: the property fails)"
        note = f"{vacuous}; {note}" if note else vacuous
    outcome = PropertyOutcome(
        name=name or metric_name,
        description=description or f"{metric_name} {op} {bound!r}",
        metric=metric_name,
        params=dict(params),
        measured=measured,
        op=op,
        bound=bound,
        unit=spec.unit,
        passed=passed,
        worst_blocks=spec.worst(result, params, op, bound),
        settings=run_settings(result),
        note=note,
        map_hint=_map_hint(result),
    )
    return outcome


def measured_outside_roi(result: CEMResult) -> bool:
    """Whether some block outside the ROI has a non-zero effect (moved the ROI PSNR by at least ``tol_db``): an
    effect property over a map without one measured nothing, whatever its verdict says."""
    return bool((np.asarray(result.effect)[M.selection(result, False)] != 0).any())


def _pct(share: float) -> str:
    return f"{share * 100:g}%"


# --------------------------------------------------------------------------------------- properties
def check_property(result: CEMResult, metric: str | Callable[..., float], op: str, bound: Any, *,
                   name: str | None = None, description: str | None = None, require_measured: bool = False,
                   **params: Any) -> PropertyOutcome:
    """Compare ``metric(result, **params)`` with ``bound`` using ``op`` (``"<"``, ``"<="``, ``">"``, ``">="``,
    ``"=="``, or ``"between"`` with a ``(low, high)`` bound) and return the :class:`PropertyOutcome`.

    ``metric`` is a name of :data:`METRICS` (e.g. ``"diffusion_index"``) or a callable ``(result, **params) ->
    number``. ``name`` / ``description`` label the property in messages (defaults: the metric and the comparison).

    A property of the effects over a map where no block outside the ROI has a non-zero effect measured nothing: its
    outcome says so in ``note`` (message, JSON, report); with ``require_measured=True`` it fails instead.
    """
    return _finish(_evaluate(result, metric, op, bound, params, name=name, description=description,
                             require_measured=require_measured), False)


def assert_property(result: CEMResult, metric: str | Callable[..., float], op: str, bound: Any, *,
                    name: str | None = None, description: str | None = None, require_measured: bool = False,
                    **params: Any) -> PropertyOutcome:
    """:func:`check_property`, raising :class:`CausalPropertyError` when the comparison fails."""
    return _finish(_evaluate(result, metric, op, bound, params, name=name, description=description,
                             require_measured=require_measured), True)


def _positive_effect_local(result, radius, mass, significant, include_roi, require_measured=False):
    radius = M.validate_radius("radius", radius)
    mass = M.validate_mass(mass)
    return _evaluate(
        result, "effective_radius", "<=", radius,
        dict(mass=mass, sign="positive", significant=significant, include_roi=include_roi),
        name="positive_effect_local",
        description=f"at least {_pct(mass)} of the positive effect mass lies within {radius:g} px of the ROI",
        require_measured=require_measured,
    )


def check_positive_effect_local(result: CEMResult, radius: float, mass: float = 0.9, *, significant: bool = False,
                                include_roi: bool = False, require_measured: bool = False) -> PropertyOutcome:
    """Does at least ``mass`` of the positive effect lie within ``radius`` input px of the ROI?
    (``effective_radius(result, mass, sign="positive") <= radius``; passes on a map without positive mass.)"""
    return _finish(_positive_effect_local(result, radius, mass, significant, include_roi, require_measured), False)


def assert_positive_effect_local(result: CEMResult, radius: float, mass: float = 0.9, *, significant: bool = False,
                                 include_roi: bool = False, require_measured: bool = False) -> PropertyOutcome:
    """:func:`check_positive_effect_local`, raising :class:`CausalPropertyError` when it fails."""
    return _finish(_positive_effect_local(result, radius, mass, significant, include_roi, require_measured), True)


def _negative_fraction_at_most(result, bound, by, significant, include_roi, require_measured=False):
    bound = M._validate_number("bound", bound, low=0.0, high=1.0)
    M._validate_choice("by", by, M.BY)
    what = "blocks" if by == "count" else "absolute effect mass"
    sig = " significantly (95% CI below zero)" if significant else ""
    return _evaluate(
        result, "negative_fraction", "<=", bound, dict(by=by, significant=significant, include_roi=include_roi),
        name="negative_fraction_at_most",
        description=f"at most {_pct(bound)} of the {what} hurt the ROI{sig}",
        require_measured=require_measured,
    )


def check_negative_fraction_at_most(result: CEMResult, bound: float, *, by: str = "count", significant: bool = False,
                                    include_roi: bool = False, require_measured: bool = False) -> PropertyOutcome:
    """Do at most ``bound`` (in [0, 1]) of the blocks (``by="count"``) or of the absolute mass (``by="mass"``) have
    a negative effect? With ``significant=True`` only blocks whose CI lies below zero count as negative."""
    return _finish(_negative_fraction_at_most(result, bound, by, significant, include_roi, require_measured), False)


def assert_negative_fraction_at_most(result: CEMResult, bound: float, *, by: str = "count", significant: bool = False,
                                     include_roi: bool = False, require_measured: bool = False) -> PropertyOutcome:
    """:func:`check_negative_fraction_at_most`, raising :class:`CausalPropertyError` when it fails."""
    return _finish(_negative_fraction_at_most(result, bound, by, significant, include_roi, require_measured), True)


_RF_BY = ("support", "effect", "significant")


def _receptive_field_within(result, radius, by, require_measured=False):
    radius = M.validate_radius("radius", radius)
    M._validate_choice("by", by, _RF_BY)
    note = ""
    if by == "support":
        result = M._support_question(result, radius)
        if isinstance(result, SupportResult):
            return _support_stage_within(result, radius)
        note = _block_resolution_note(result, radius)
    elif isinstance(result, SupportResult):
        raise CEMInputError(
            f"by={by!r} compares effects, which a SupportResult (the support stage alone) does not have; use "
            "by='support' (exact: does any farther pixel change the ROI output at all?), or a map."
        )
    if by == "support":
        metric, params = "support_radius", {}
        description = f"no input pixel farther than {radius:g} px from the ROI changes the ROI output in any draw"
    else:
        significant = by == "significant"
        metric, params = "max_reach", {"significant": significant}
        what = "has a significantly non-zero effect" if significant else "has a non-zero effect"
        description = f"no block farther than {radius:g} px from the ROI (its nearest pixel) {what}"
    return _evaluate(result, metric, "<=", radius, params, name="receptive_field_within", description=description,
                     note=note, require_measured=require_measured)


def _block_resolution_note(result: CEMResult, radius: float) -> str:
    """For a map whose support radius is known per block only: the resolution of the verdict, and whether the bound
    is undecided at that resolution (the property then fails: a gate never passes unless it must)."""
    if result.radius_px is not None:
        return ""
    lo, hi = M.support_radius_bounds(result)
    text = (f"at the resolution of the blocks ({result.block_size} px): the support radius lies between {lo} and "
            f"{hi} px (the nearest and farthest pixel of the farthest supported block); measured is the upper end")
    if lo <= radius < hi:
        text += (f"; undecided at {radius:g} px, so the property fails: a pixel-exact verdict needs the support "
                 f"stage, compute_support(..., within={radius:g}) (or the cem fixture, which runs it)")
    return text


def _support_stage_within(result: SupportResult, radius: float) -> PropertyOutcome:
    """``receptive_field_within`` of a :class:`SupportResult` (exact in pixels): its support radius against
    ``radius``; a result whose search stopped at ``within`` answers when ``within`` decides the bound (nothing
    beyond it and ``radius >= within``, or something beyond it and ``radius <= within``)."""
    params: dict[str, Any] = {}
    note = ""
    if result.radius_px is not None:
        measured = int(result.radius_px)
    else:
        w = float(result.within_px)
        params = {"within": w}
        if not result.beyond_within and radius >= w:
            measured, note = w, (f"an upper bound: one group test showed that no input pixel farther than {w:g} px "
                                 "changes the ROI output; the support radius itself was not searched")
        elif result.beyond_within and radius <= w:
            measured = math.floor(w) + 1
            note = (f"a lower bound: one group test showed that input pixels farther than {w:g} px change the ROI "
                    "output; the support radius itself was not searched")
        else:
            raise CEMInputError(
                f"this SupportResult was computed with within={w:g} (anything beyond {w:g} px: "
                f"{'yes' if result.beyond_within else 'no'}), which does not decide a bound of {radius:g} px; "
                f"compute it with compute_support(..., within={radius:g}) or without within=."
            )
    passed = _compare(measured, "<=", radius)
    far = result.far_distance
    offenders = result.support & ~result.roi_mask & (far > radius)  # blocks holding pixels beyond the bound
    worst = _top(result, offenders, [far])
    if not passed and not worst:
        extra = (f"the input beyond {radius:g} px changed the ROI output as a group; no block was tested without the "
                 "others (compute_support() without within= resolves them one by one)")
        note = f"{note}; {extra}" if note else extra
    return PropertyOutcome(
        name="receptive_field_within",
        description=f"no input pixel farther than {radius:g} px from the ROI changes the ROI output in any draw",
        metric="support_radius",
        params=params,
        measured=measured,
        op="<=",
        bound=radius,
        unit="px",
        passed=passed,
        worst_blocks=worst,
        settings=run_settings(result),
        note=note,
        map_hint=_map_hint(result),
    )


def check_receptive_field_within(result: CEMResult, radius: float, *, by: str = "support",
                                 require_measured: bool = False) -> PropertyOutcome:
    """Does nothing beyond ``radius`` input px of the ROI affect it?

    ``by="support"`` (default, exact in pixels): ``support_radius <= radius``: no input pixel farther than
    ``radius`` px from the ROI footprint changes the ROI output in any draw, whatever the block size (the support
    stage replaces exactly those pixels). A map that knows its support per block only (paper mode) decides the
    bound where the blocks do; where a supported block straddles the bound the property fails, and its note says
    how to get the pixel-exact verdict. ``by="effect"``: ``max_reach(significant=False) <= radius`` (|effect| >=
    tol_db, per block: the distance of its nearest pixel); ``by="significant"``: ``max_reach(significant=True) <=
    radius``; with ``require_measured=True`` these fail on a map where no block outside the ROI has an effect.

    ``result`` may also be a :class:`SupportResult` (``by="support"`` only), or a map computed on first need
    (:class:`cem_checks.lazy.LazyMap`, what the plugin's ``cem`` fixture returns), which then runs its support
    stage only: a few group tests instead of a map.
    """
    return _finish(_receptive_field_within(result, radius, by, require_measured), False)


def assert_receptive_field_within(result: CEMResult, radius: float, *, by: str = "support",
                                  require_measured: bool = False) -> PropertyOutcome:
    """:func:`check_receptive_field_within`, raising :class:`CausalPropertyError` when it fails."""
    return _finish(_receptive_field_within(result, radius, by, require_measured), True)


def _uses_context_beyond(result, radius, share, significant, include_roi, require_measured=False):
    radius = M.validate_radius("radius", radius)
    share = M._validate_number("share", share, low=0.0, high=1.0, low_open=True)
    return _evaluate(
        result, "context_share", ">=", share, dict(beyond=radius, significant=significant, include_roi=include_roi),
        name="uses_context_beyond",
        description=(
            f"at least {_pct(share)} of the absolute effect mass comes from blocks farther than {radius:g} px from the ROI"
        ),
        require_measured=require_measured,
    )


def check_uses_context_beyond(result: CEMResult, radius: float, share: float, *, significant: bool = False,
                              include_roi: bool = False, require_measured: bool = False) -> PropertyOutcome:
    """Does the model use context beyond ``radius`` input px: ``context_share(beyond=radius) >= share``
    (``share`` in (0, 1])? Fails on a map without effect mass."""
    return _finish(_uses_context_beyond(result, radius, share, significant, include_roi, require_measured), False)


def assert_uses_context_beyond(result: CEMResult, radius: float, share: float, *, significant: bool = False,
                               include_roi: bool = False, require_measured: bool = False) -> PropertyOutcome:
    """:func:`check_uses_context_beyond`, raising :class:`CausalPropertyError` when it fails."""
    return _finish(_uses_context_beyond(result, radius, share, significant, include_roi, require_measured), True)


def _effect_range_between(result, low_db, high_db, significant, include_roi, require_measured=False):
    low = M._validate_number("low_db", low_db, low=0.0, unit="dB")
    high = M._validate_number("high_db", high_db, low=0.0, unit="dB")
    if low > high:
        raise CEMInputError(f"low_db={low:g} is above high_db={high:g}; give low_db <= high_db.")
    return _evaluate(
        result, "effect_range_db", "between", (low, high), dict(significant=significant, include_roi=include_roi),
        name="effect_range_between",
        description=f"the effect range (max - min) lies between {low:g} and {high:g} dB",
        require_measured=require_measured,
    )


def check_effect_range_between(result: CEMResult, low_db: float, high_db: float, *, significant: bool = False,
                               include_roi: bool = False, require_measured: bool = False) -> PropertyOutcome:
    """Is ``low_db <= effect_range_db(result) <= high_db`` (dB, both >= 0)?"""
    return _finish(_effect_range_between(result, low_db, high_db, significant, include_roi, require_measured), False)


def assert_effect_range_between(result: CEMResult, low_db: float, high_db: float, *, significant: bool = False,
                                include_roi: bool = False, require_measured: bool = False) -> PropertyOutcome:
    """:func:`check_effect_range_between`, raising :class:`CausalPropertyError` when it fails."""
    return _finish(_effect_range_between(result, low_db, high_db, significant, include_roi, require_measured), True)


def with_map_hint(outcome: PropertyOutcome, map_hint: str) -> PropertyOutcome:
    """A copy of ``outcome`` saying ``map_hint`` about where to see the map."""
    return replace(outcome, map_hint=map_hint)
