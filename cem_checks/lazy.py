"""A map whose stages run on first need: :class:`LazyMap` (what the pytest plugin's ``cem`` fixture returns).

An assertion asks a lazy map only what it needs. The receptive-field properties (:func:`~cem_checks.checks.
check_receptive_field_within` with ``by="support"``) and :func:`~cem_checks.metrics.support_radius` run the
support stage only: one ring test "does anything beyond r px change the ROI output?" and the binary search for
the support radius (inside r when nothing lies beyond it), a handful of group tests; when something does lie
beyond r, a few more group tests find blocks of the farthest ring that change the ROI output alone, so the
failure names them. Every other metric, property or attribute (``result.effect``, ``result.to_frame()``, ...)
runs the full map, which reuses the support stage's group tests (:class:`cem_checks.engine.Job`). Once the map
exists, everything reads it.
"""

from __future__ import annotations

from typing import Any

from .checks import WORST_BLOCKS
from .engine import Job
from .result import CEMResult, SupportResult

__all__ = ["LazyMap"]


class LazyMap:
    """A map of one job (a model, image, task, ROI and settings) computed stage by stage, on first need.

    :meth:`map` returns the full :class:`~cem_checks.result.CEMResult` (computed once); :meth:`support_stage`
    the :class:`~cem_checks.result.SupportResult` of the support stage. Any other attribute is the full map's
    (``result.support`` is the map's support array, computing the map). :attr:`computed` says what has run: ``None``, ``"support"`` or ``"map"``.
    """

    def __init__(self, job: Job):
        self._job = job
        self._map: CEMResult | None = None
        self._support: SupportResult | None = None

    # ------------------------------------------------------------------------------------------ stages
    def map(self) -> CEMResult:
        """The full map (fast or paper mode, as the job's settings say), computed on the first call."""
        if self._map is None:
            self._map = self._job.map()
        return self._map

    def support_stage(self, within: float | None = None) -> SupportResult:
        """The support stage: with ``within``, whether anything beyond ``within`` px changes the ROI output, the
        support radius, and (when something does) up to a few blocks of the farthest ring that change it alone;
        without, the support radius alone. Group tests run before are reused, never repeated."""
        self._support = self._job.support(within, find_radius=True, refine=False, offenders=WORST_BLOCKS)
        return self._support

    @property
    def computed(self) -> str | None:
        """The furthest stage that has run: ``"map"``, ``"support"`` or None."""
        return "map" if self._map is not None else "support" if self._support is not None else None

    @property
    def result(self) -> CEMResult | SupportResult | None:
        """The result of the furthest stage that has run (None before any)."""
        return self._map if self._map is not None else self._support

    @property
    def job(self) -> Job:
        return self._job

    # -------------------------------------------------- the protocol metrics and checks use (cem_checks)
    def __cem_map__(self) -> CEMResult:
        return self.map()

    def __cem_support__(self, within: float | None) -> CEMResult | SupportResult:
        """What a support question reads: the support stage, exact in pixels (after a map, it reuses the map's
        group tests: at most the ring test at ``within`` is new)."""
        return self.support_stage(within)

    # ------------------------------------------------------------------------------------------ the rest
    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.map(), name)

    def __repr__(self) -> str:
        j = self._job
        return (f"LazyMap(model={type(j.model).__name__}, task={j.task.name!r}, roi={j.roi.as_tuple()}, "
                f"block_size={j.block_size}, mode={j.mode!r}, computed={self.computed!r})")
