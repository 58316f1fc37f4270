"""Assertions over a sweep: :func:`check_over` / :func:`assert_over` compare a statistic of a per-item metric
(mean, max, min, median or a quantile) with a bound, with a percentile bootstrap interval over the items;
:func:`collect_over_outcomes` gathers the :class:`OverOutcome` of each (what the pytest plugin records)."""

from __future__ import annotations

import contextvars
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import CEMInputError, describe_value, validate_int
from .table import COLUMNS, Sweep, _json_safe

#: How many items an outcome lists as the worst.
WORST_ITEMS = 5


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
        from ..checks import _fmt

        if self.op == "between":
            return f"between {_fmt(self.bound[0], self.unit)} and {_fmt(self.bound[1], self.unit)} (inclusive)"
        return f"{self.op} {_fmt(self.bound, self.unit)}"

    def message(self) -> str:
        """A multi-line report: the statistic and its interval, the bound, the worst items, the sweep's settings."""
        from ..checks import _fmt

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

    from ..checks import METRICS

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
    from ..checks import _resolve_metric

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
    outcome = outcome_of_values(values, labels, metric=metric_name, unit=unit, settings=settings, name=name,
                                statistic=label, at_most=hi, at_least=lo, confidence=confidence, n_boot=n_boot,
                                seed=seed, decision=decision, params=params)
    for out in _COLLECTORS.get():
        out.append(outcome)
    return outcome


def outcome_of_values(values: np.ndarray, labels: list, *, metric: str, unit: str, settings: dict, name: str | None,
                      statistic: str, at_most: float | None, at_least: float | None, confidence: float, n_boot: int,
                      seed: int, decision: str, params: dict) -> OverOutcome:
    """The :class:`OverOutcome` of a statistic of per-item ``values`` (in item index order; ``labels`` the
    ``(image, roi)`` of each item), with validated settings: what :func:`check_over` decides once it has the
    values, and what the merge of a sweep's shards recomputes over the whole sweep
    (:func:`cem_checks.records.merge_documents`): the same values in the same order give the same outcome."""
    label, f = _statistic(statistic)
    hi, lo, metric_name = at_most, at_least, metric
    values = np.asarray(values, dtype=np.float64)
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
