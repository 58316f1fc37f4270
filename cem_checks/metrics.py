"""Scalar measurements of a causal effect map: counts, fractions, radii, locality, context use, diffusion.

Every metric is a function of a :class:`~cem_checks.result.CEMResult` and shares these conventions:

- **Blocks measured.** The blocks that overlap the ROI footprint (``result.roi_mask``) are left out, because
  every model depends on the ROI's own input; pass ``include_roi=True`` to measure them too. A map whose
  every block overlaps the ROI leaves nothing to measure and raises :class:`~cem_checks.errors.CEMInputError`.
- **Distances** are the result's Chebyshev ``distance`` in input px (0: overlaps the ROI footprint,
  1: adjacent). Outside the ROI every block has distance >= 1.
- **Effects** are ``result.effect`` in dB (``|raw effect| < tol_db`` already zeroed). With
  ``significant=True`` a block keeps its effect only when its 95 % confidence interval excludes zero on the
  side of its sign (``ci_low > 0`` for a positive effect, ``ci_high < 0`` for a negative one); other blocks
  count as zero, and so do blocks without a confidence interval (fewer than two draws). This is the
  confidence-aware form: a test built on it does not fail on Monte-Carlo noise alone.
- **Mass** of a set of blocks is the sum of their effects in dB: positive mass ``sum(max(e, 0))``, negative
  mass ``sum(max(-e, 0))`` (reported >= 0), absolute mass ``sum(|e|)``.

Edge cases (a map with no mass of the chosen kind outside the ROI, e.g. a model that only looks at the
ROI, or a constant model) follow one rule: *the share of a zero mass held by any set of blocks is 0*. Hence
``negative_fraction(by="mass")``, ``positive_fraction(by="mass")`` and ``context_share`` return 0;
``locality``, defined as ``1 - share beyond the radius``, returns 1; ``effective_radius`` returns 0 and
``max_reach`` / ``support_radius`` return 0 when no block qualifies (no effect reaches beyond the ROI
footprint). Only :func:`gini` and :func:`diffusion_index` return NaN on a zero mass: the concentration of
nothing is undefined, and a NaN fails every comparison in :mod:`cem_checks.checks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import CEMInputError, describe_value
from .result import CEMResult, SupportResult

SIGNS = ("positive", "negative", "abs")
BY = ("count", "mass")
#: Relative slack when comparing cumulative masses with a share (sums of dB values are not exact).
_REL_EPS = 1e-9

__all__ = [
    "EffectCounts",
    "context_share",
    "counts",
    "diffusion_index",
    "distance_profile",
    "effect_range_db",
    "effective_radius",
    "gini",
    "locality",
    "max_reach",
    "negative_fraction",
    "positive_fraction",
    "selection",
    "significant_effect",
    "support_radius",
    "support_radius_bounds",
]


# ---------------------------------------------------------------------------------------- validation
def _validate_result(result: Any) -> CEMResult:
    """``result`` as a :class:`CEMResult`; a map computed on first need (:class:`cem_checks.lazy.LazyMap`) is
    computed now."""
    resolve = getattr(result, "__cem_map__", None)
    if callable(resolve) and not isinstance(result, CEMResult):
        result = resolve()
    if isinstance(result, SupportResult):
        raise CEMInputError(
            "this metric needs the effects of a map, but the result is a SupportResult (the support stage alone, "
            "which estimates no effect); use cem_checks.compute_cem() for a map, or a metric a SupportResult "
            "answers: support_radius, max_reach(significant=False)."
        )
    if not isinstance(result, CEMResult):
        raise CEMInputError(
            f"result {describe_value(result)} of type {type(result).__name__} is not a CEMResult; pass the value "
            "returned by cem_checks.compute_cem() or CEMResult.from_effects()."
        )
    return result




def _support_question(result: Any, within: float | None = None) -> CEMResult | SupportResult:
    """What a support question (the support radius, an exact receptive-field bound) reads: a :class:`CEMResult`
    or :class:`SupportResult` as it is; a map computed on first need runs its support stage only (asked about
    ``within`` px), or reads its map once that exists."""
    if isinstance(result, (CEMResult, SupportResult)):
        return result
    ask = getattr(result, "__cem_support__", None)
    if callable(ask):
        return ask(within)
    return _validate_result(result)


def support_result_radius(result: SupportResult) -> int:
    """The support radius of a :class:`SupportResult`; :class:`CEMInputError` when its search stopped at
    ``within`` (it then bounds the radius only)."""
    if result.radius_px is None:
        raise CEMInputError(
            f"this SupportResult answers only whether anything farther than {result.within_px:g} px changes the ROI "
            f"output ({'yes' if result.beyond_within else 'no'}); its support radius was not searched. Compute it "
            "with cem_checks.compute_support() without within=, or check it with check_receptive_field_within()."
        )
    return int(result.radius_px)


def _validate_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise CEMInputError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}; pick one of them.")
    return value


def _validate_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise CEMInputError(f"{name}={value!r} must be True or False.")
    return bool(value)


def _validate_number(name: str, value: Any, *, low: float = -np.inf, high: float = np.inf, low_open: bool = False,
                     unit: str = "") -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise CEMInputError(f"{name}={value!r} must be a number{f' ({unit})' if unit else ''}; got {type(value).__name__}.")
    v = float(value)
    ok = (v > low if low_open else v >= low) and v <= high and not np.isnan(v)
    if not ok:
        lo = f"({low:g}" if low_open else f"[{low:g}"
        raise CEMInputError(f"{name}={value!r} must lie in {lo}, {high:g}]{f' {unit}' if unit else ''}.")
    return v


def validate_mass(mass: Any) -> float:
    """Validate a mass share in (0, 1]."""
    return _validate_number("mass", mass, low=0.0, high=1.0, low_open=True)


def validate_radius(name: str, radius: Any) -> float:
    """Validate a distance in input px (a finite number >= 0, or +inf)."""
    return _validate_number(name, radius, low=0.0, unit="input px")


def selection(result: CEMResult, include_roi: bool = False) -> np.ndarray:
    """(rows, cols) bool: the blocks a metric measures (all blocks, or those outside the ROI footprint)."""
    result = _validate_result(result)
    include_roi = _validate_bool("include_roi", include_roi)
    sel = np.ones(result.effect.shape, bool) if include_roi else ~result.roi_mask
    if not sel.any():
        raise CEMInputError(
            f"the {result.rows}x{result.cols} block map has no block outside the ROI {result.roi.as_tuple()} "
            "(every block overlaps its footprint), so there is nothing to measure; pass include_roi=True, or "
            "compute the map on a larger image or with a smaller ROI or block_size."
        )
    return sel


def significant_effect(result: CEMResult) -> np.ndarray:
    """(rows, cols) float64 dB: ``result.effect`` where the 95 % CI excludes zero on the side of the effect's
    sign, else 0 (blocks without a CI, i.e. fewer than two draws, count as 0)."""
    result = _validate_result(result)
    e = result.effect
    with np.errstate(invalid="ignore"):
        keep = ((e > 0) & (result.ci_low > 0)) | ((e < 0) & (result.ci_high < 0))
    return np.where(keep, e, 0.0)


def _effects(result: CEMResult, significant: bool, include_roi: bool) -> tuple[np.ndarray, np.ndarray]:
    """The measured blocks' effects (1-D, dB) and distances (1-D, input px)."""
    sel = selection(result, include_roi)
    eff = significant_effect(result) if _validate_bool("significant", significant) else np.asarray(result.effect)
    return eff[sel].astype(np.float64), result.distance[sel].astype(np.int64)


def _weights(eff: np.ndarray, sign: str) -> np.ndarray:
    _validate_choice("sign", sign, SIGNS)
    if sign == "positive":
        return np.maximum(eff, 0.0)
    if sign == "negative":
        return np.maximum(-eff, 0.0)
    return np.abs(eff)


def _share(part: float, total: float) -> float:
    """part / total, with the share of a zero mass defined as 0."""
    return float(part / total) if total > 0 else 0.0


# ------------------------------------------------------------------------------------------- counts
@dataclass(frozen=True)
class EffectCounts:
    """Block counts by the sign of their effect; ``positive + negative + zero == total``."""

    positive: int
    negative: int
    zero: int
    significant: bool = False
    include_roi: bool = False

    @property
    def total(self) -> int:
        return self.positive + self.negative + self.zero

    @property
    def positive_fraction(self) -> float:
        return self.positive / self.total

    @property
    def negative_fraction(self) -> float:
        return self.negative / self.total

    @property
    def zero_fraction(self) -> float:
        return self.zero / self.total

    def to_record(self) -> dict[str, Any]:
        return {
            "positive": self.positive,
            "negative": self.negative,
            "zero": self.zero,
            "total": self.total,
            "positive_fraction": self.positive_fraction,
            "negative_fraction": self.negative_fraction,
            "zero_fraction": self.zero_fraction,
            "significant": self.significant,
            "include_roi": self.include_roi,
        }


def counts(result: CEMResult, *, significant: bool = False, include_roi: bool = False) -> EffectCounts:
    """How many measured blocks have a positive, negative and zero effect (see the module conventions)."""
    eff, _ = _effects(result, significant, include_roi)
    pos, neg = int((eff > 0).sum()), int((eff < 0).sum())
    return EffectCounts(pos, neg, int(eff.size) - pos - neg, bool(significant), bool(include_roi))


def _fraction(result: CEMResult, by: str, sign: str, significant: bool, include_roi: bool) -> float:
    _validate_choice("by", by, BY)
    eff, _ = _effects(result, significant, include_roi)
    if by == "count":
        return float(((eff > 0) if sign == "positive" else (eff < 0)).sum() / eff.size)
    return _share(_weights(eff, sign).sum(), np.abs(eff).sum())


def negative_fraction(result: CEMResult, by: str = "count", *, significant: bool = False, include_roi: bool = False) -> float:
    """Share of the measured blocks that hurt the ROI, in [0, 1].

    ``by="count"``: negative blocks / measured blocks. ``by="mass"``: negative mass / absolute mass (0 when
    the absolute mass is 0). With ``significant=True`` only blocks whose CI lies below zero count.
    """
    return _fraction(result, by, "negative", significant, include_roi)


def positive_fraction(result: CEMResult, by: str = "count", *, significant: bool = False, include_roi: bool = False) -> float:
    """Share of the measured blocks that help the ROI, in [0, 1] (see :func:`negative_fraction`)."""
    return _fraction(result, by, "positive", significant, include_roi)


def effect_range_db(result: CEMResult, *, significant: bool = False, include_roi: bool = False) -> float:
    """max - min effect over the measured blocks, in dB (>= 0; zero-effect blocks take part with 0 dB)."""
    eff, _ = _effects(result, significant, include_roi)
    return float(eff.max() - eff.min())


# ------------------------------------------------------------------------------------------ distances
def _cumulative(result: CEMResult, sign: str, significant: bool, include_roi: bool):
    """Distinct distances (ascending), cumulative mass up to each, and the total mass."""
    eff, dist = _effects(result, significant, include_roi)
    w = _weights(eff, sign)
    levels, inverse = np.unique(dist, return_inverse=True)
    per_level = np.bincount(inverse, weights=w, minlength=levels.size)
    cum = np.cumsum(per_level)
    return levels, cum, float(cum[-1])


def effective_radius(result: CEMResult, mass: float = 0.9, sign: str = "positive", *, significant: bool = False,
                     include_roi: bool = False) -> int:
    """Smallest distance d (input px) such that the measured blocks with distance <= d hold at least ``mass``
    (in (0, 1]) of the ``sign`` mass (``"positive"``, ``"negative"`` or ``"abs"``).

    Equivalently the smallest block distance d with ``locality(result, d, sign) >= mass``. Returns 0 when the
    chosen mass is 0 (nothing to localise: no such effect beyond the ROI footprint). Non-decreasing in ``mass``.
    """
    mass = validate_mass(mass)
    levels, cum, total = _cumulative(result, sign, significant, include_roi)
    if total <= 0:
        return 0
    idx = int(np.argmax(cum >= mass * total * (1 - _REL_EPS)))
    return int(levels[idx])


def locality(result: CEMResult, radius: float, sign: str = "positive", *, significant: bool = False,
             include_roi: bool = False) -> float:
    """Share, in [0, 1], of the ``sign`` mass held by measured blocks with distance <= ``radius`` (input px).

    Defined as ``1 - (share beyond radius)``; 1 when the chosen mass is 0 (no such effect anywhere beyond the
    ROI footprint). Unchanged when every effect is multiplied by the same c > 0.
    """
    radius = validate_radius("radius", radius)
    eff, dist = _effects(result, significant, include_roi)
    w = _weights(eff, sign)
    return 1.0 - _share(w[dist > radius].sum(), w.sum())


def context_share(result: CEMResult, beyond: float, *, significant: bool = False, include_roi: bool = False) -> float:
    """Share, in [0, 1], of the absolute mass held by measured blocks farther than ``beyond`` input px: how
    much the ROI relies on context beyond that radius (global-context use). 0 when the map has no mass.

    ``context_share(r) == 1 - locality(r, sign="abs")``.
    """
    beyond = validate_radius("beyond", beyond)
    eff, dist = _effects(result, significant, include_roi)
    w = np.abs(eff)
    return _share(w[dist > beyond].sum(), w.sum())


def max_reach(result: CEMResult | SupportResult, significant: bool = True, *, include_roi: bool = False) -> int:
    """Largest distance (input px) of a measured block with a non-zero effect; with ``significant=True`` (the
    default) only blocks whose CI excludes zero count. 0 when no block qualifies.

    A :class:`SupportResult` has no effects: with ``significant=False`` its reach is that of any change of the
    ROI output at all, the support radius (an upper bound of a map's ``max_reach``)."""
    if isinstance(result, SupportResult):
        if _validate_bool("significant", significant):
            raise CEMInputError(
                "max_reach(significant=True) needs confidence intervals of effects, which a SupportResult (the "
                "support stage alone) does not have; pass significant=False (the support radius), or a map."
            )
        return support_result_radius(result)
    eff, dist = _effects(result, significant, include_roi)
    hit = dist[eff != 0]
    return int(hit.max()) if hit.size else 0


def support_radius(result: CEMResult | SupportResult, *, include_roi: bool = False) -> int:
    """The support radius (input px): the distance from the ROI footprint of the farthest input pixel that changes
    the ROI output at all (exact, free of Monte-Carlo noise); 0 when nothing outside the footprint does. For a model
    whose receptive field has radius r, ``support_radius <= r``.

    Exact in pixels where the engine's group tests decided it: a :class:`SupportResult`'s ``radius_px``, a map's
    ``radius_px`` (fast mode), or a map computed on first need (:class:`cem_checks.lazy.LazyMap`), which runs only
    its support stage for this. A map without it (paper mode, hand-built maps) knows its support per block only:
    then the distance of the farthest pixel of a supported block, an upper bound of the pixel-exact radius (see
    :func:`support_radius_bounds`)."""
    result = _support_question(result)
    if isinstance(result, SupportResult):
        _validate_bool("include_roi", include_roi)
        return support_result_radius(result)
    if result.radius_px is not None:
        _validate_bool("include_roi", include_roi)
        return int(result.radius_px)
    return support_radius_bounds(result, include_roi=include_roi)[1]


def support_radius_bounds(result: CEMResult, *, include_roi: bool = False) -> tuple[int, int]:
    """``(low, high)`` input px: where the pixel-exact support radius of a map lies, from its per-block support.
    A supported block holds some pixel that changes the ROI output, at a distance between the block's nearest and
    farthest pixel: ``low`` is the greatest nearest distance of a supported block, ``high`` the greatest farthest
    distance (both 0 when no block qualifies). A map whose engine decided the radius in pixels (``radius_px``)
    gives it twice."""
    result = _validate_result(result)
    if result.radius_px is not None:
        return int(result.radius_px), int(result.radius_px)
    sel = selection(result, include_roi) & result.support
    if not sel.any():
        return 0, 0
    return int(result.distance[sel].max()), int(result.far_distance[sel].max())


# ----------------------------------------------------------------------------------------- diffusion
def gini(result: CEMResult, *, significant: bool = False, include_roi: bool = False) -> float:
    """Gini coefficient, in [0, 1 - 1/n], of the absolute effects of the n measured blocks: 0 when every
    block carries the same |effect|, near 1 when one block carries it all. NaN when the absolute mass is 0.

    ``G = sum_i (2 i - n - 1) x_(i) / (n sum_i x_i)`` over the ascending |effects| ``x_(1) <= ... <= x_(n)``
    (the formula of LAM, Gu & Dong 2021, without its additive epsilon).
    """
    eff, _ = _effects(result, significant, include_roi)
    x = np.sort(np.abs(eff))
    n = x.size
    total = x.sum()
    if total <= 0:
        return float("nan")
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


def diffusion_index(result: CEMResult, *, significant: bool = False, include_roi: bool = False) -> float:
    """LAM-style diffusion index ``(1 - gini) * 100``, in [100/n, 100]: high when the effect is spread over
    many blocks, low when a few blocks carry it. NaN when the absolute mass is 0."""
    return (1.0 - gini(result, significant=significant, include_roi=include_roi)) * 100.0


def distance_profile(result: CEMResult, *, significant: bool = False, include_roi: bool = False):
    """A pandas DataFrame with one row per distance (ascending) of the measured blocks.

    Columns: ``distance_px``, ``blocks``, ``mean_effect_db``, ``min_effect_db``, ``max_effect_db``,
    ``positive_mass_db`` (sum of positive effects) and ``negative_mass_db`` (sum of |negative effects|, >= 0).
    """
    import pandas as pd

    eff, dist = _effects(result, significant, include_roi)
    frame = pd.DataFrame({"distance_px": dist, "effect_db": eff})
    frame["pos"] = np.maximum(eff, 0.0)
    frame["neg"] = np.maximum(-eff, 0.0)
    g = frame.groupby("distance_px", sort=True)
    out = pd.DataFrame(
        {
            "blocks": g["effect_db"].size().astype(np.int64),
            "mean_effect_db": g["effect_db"].mean(),
            "min_effect_db": g["effect_db"].min(),
            "max_effect_db": g["effect_db"].max(),
            "positive_mass_db": g["pos"].sum(),
            "negative_mass_db": g["neg"].sum(),
        }
    )
    return out.reset_index()
