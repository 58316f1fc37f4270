"""The support stage: which blocks can change the ROI output at all, decided exactly by group testing.

A *group test* intervenes on every block of a group at once, ``draws`` times with independent natural patches,
and compares the ROI output bit for bit with the baseline computed under the same batch shape. If it never
changed, no block of the group can change the ROI output: each is outside the support, with effect exactly 0.

- *Rings.* The group "every block farther than d px from the ROI" (:meth:`SupportSearch.beyond`) answers
  "does anything beyond d px change the ROI output?" in one test. A binary search over d
  (:meth:`SupportSearch.radius`) finds the support radius: the farthest ring that changes it. Once a ring is
  shown not to change it, the further tests run in a verified crop of the blocks within that ring (the
  verified crop of :mod:`.crop`), at a fraction of the cost of the full input.
- *The traced reach.* For a model that :func:`cem_checks.local_eval.build_plan` traces (local operations only,
  at any resolution), the graph itself says which input box the ROI output reads (each convolution's halo): a
  block outside it cannot change the ROI output (exactly, without a test), and the tests run in a verified
  crop of the blocks inside it. A ring wholly outside needs no test.
- *k-d refinement* (:meth:`SupportSearch.refine`). The blocks within the radius are split in halves along the
  longer side of their bounding box, recursing into halves that changed, down to single blocks (tested alone
  when asked), within a budget of draws.

*Assumption:* a block that can change the ROI output does so under a random joint replacement of its group (no
exact cancellation between blocks, and no dependence confined to a set of contents that random natural patches
miss), which holds for generic weights; ``draws`` independent joint draws guard each verdict.

Every test is remembered by the search, so the stages of one job (a receptive-field check, then a full map)
never repeat one; a k-d group is named by its blocks, so a group reached by two splits (fast mode's, the
support stage's) is one test, cached and reused across runs under that name.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from .crop import verified_crop
from .draws import Engine, Frame
from .options import FastOptions, Phase


class SupportSearch:
    """Group tests over the full input of one job, remembered across stages (see the module docstring)."""

    def __init__(self, eng: Engine, draws: int, crop: FastOptions | None = None):
        self.eng, self.draws = eng, draws
        self.crop = crop  # FastOptions whose crop_atol verifies crops; None: every test on the full input
        self.frame: Frame = eng.full
        self.in_frame = np.ones(eng.grid.n_blocks, dtype=bool)
        self.frame_info: dict[str, Any] = {"crop": None, "crop_check": "not needed"}
        self._reach: np.ndarray | None = None  # blocks the traced graph lets reach the ROI output (all when untraced)
        self.reach_info = "not traced"
        self.dist = eng.distance.ravel()
        self.levels = np.unique(self.dist)
        self.rings: dict[int, bool] = {}  # ring level d -> did "farther than d px" change the ROI output
        self.settled_rings: set[int] = set()  # rings the traced graph settled without a test
        self.groups: dict[str, bool] = {}  # k-d group (digest of its blocks) -> changed
        self.alone: dict[int, bool] = {}  # block tested alone -> changed
        self.kd_ruled_out = np.zeros(self.dist.size, dtype=bool)  # blocks in a k-d group (or alone) that never changed
        self.tests_run = 0  # group tests run (not reused) by this search

    # ------------------------------------------------------------------------------------ rings
    def _level_index(self, d: float) -> int:
        """Index of the largest ring level <= ``d`` (the ring "farther than d" equals "farther than that level")."""
        return max(0, int(np.searchsorted(self.levels, d, side="right")) - 1)

    def beyond(self, d: float) -> bool:
        """Does anything farther than ``d`` input px from the ROI change its output? One group test (none when
        nothing lies that far, or when a stage of this job already asked)."""
        k = self._level_index(d)
        if k == len(self.levels) - 1:
            return False  # nothing beyond the farthest ring
        level = int(self.levels[k])
        if level not in self.rings:
            self._narrow()
            if not (self.reach & (self.dist > level)).any():  # the traced graph settles it: no path from there
                self.rings[level] = False
                self.settled_rings.add(level)
                return False
            # blocks outside the frame are known not to change the ROI output (the frame is a verified crop)
            group = np.flatnonzero((self.dist > level) & self.in_frame)
            self.rings[level] = bool(group.size) and self.eng.group_changed(
                Phase("ring", level, tag=self._frame_tag()), group, self.draws, self.frame)
            self.tests_run += bool(group.size)
        return self.rings[level]

    @property
    def reach(self) -> np.ndarray:
        """(n_blocks,) bool: the blocks that can reach the ROI output through the model's traced graph (for a model
        that :func:`cem_checks.local_eval.build_plan` accepts: the reach of every operation, e.g. each
        convolution's halo, clipped to the map); every block when the model cannot be traced. A block outside is resolved: no
        path of the graph leads from it to the ROI, so its effect is exactly 0 without a test."""
        if self._reach is None:
            self._reach = np.ones(self.dist.size, dtype=bool)
            eng = self.eng
            if self.crop is not None and self.crop.crop and eng.runner.precision == "fp32":
                from ..local_eval import traced_reach

                sl = eng.full.sl
                roi = (sl[2].start, sl[2].stop, sl[3].start, sl[3].stop)
                box, why = traced_reach(eng.runner.model, eng.full.x.to(eng.runner.dtype), roi)
                if box is None:
                    self.reach_info = f"not traced: {why}"
                else:
                    y0, y1, x0, x1 = box
                    b = eng.b
                    r, c = np.divmod(np.arange(self.dist.size), eng.grid.cols)
                    self._reach = (r * b < y1) & ((r + 1) * b > y0) & (c * b < x1) & ((c + 1) * b > x0)
                    self.reach_info = f"traced: the ROI output reads the input box (y {y0}:{y1}, x {x0}:{x1})"
        return self._reach

    def _frame_tag(self) -> str | None:
        f = self.frame
        return None if f is self.eng.full else f"crop{f.y0}-{f.x0}-{f.h}-{f.w}"

    def _narrow(self) -> None:
        """Before a test: when a ring showed that nothing beyond d px changes the ROI output, run the test in a
        verified crop of the blocks within d px (a rectangle: the Chebyshev neighbourhood of the ROI footprint)
        (:mod:`.crop`); the verdicts are those of the full input, at a fraction of the cost. After a crop fails
        its check, the search stays on the full input."""
        if self.crop is None or not self.crop.crop:
            return
        quiet = [level for level, changed in self.rings.items() if not changed]
        inside = self.reach & (self.dist <= min(quiet) if quiet else True)
        if inside.all() or not (self.in_frame & ~inside).any():
            return
        frame, info = verified_crop(self.eng, inside, self.crop, cache=self.eng.support_cache)
        self.frame_info = info
        if frame is self.eng.full:
            self.crop = None  # the model's output on a crop differs (or it cannot run on one): stay on the input
        else:
            self.frame, self.in_frame = frame, inside

    def _bounds(self) -> tuple[int, int]:
        """Indices (lo, hi) of the ring levels between which the radius lies, from the rings asked so far."""
        lo, hi = 0, len(self.levels) - 1  # nothing lies beyond the farthest ring
        for level, changed in self.rings.items():
            k = self._level_index(level)
            if changed:
                lo = max(lo, k + 1)
            else:
                hi = min(hi, k)
        return lo, max(lo, hi)  # a contradiction (a farther ring changed, a nearer one did not) keeps the farther

    def radius(self) -> int:
        """The support radius (input px): the distance of the farthest ring that changes the ROI output, by a
        binary search over the ring levels (starting from what earlier stages established). When a quiet ring
        bounds the radius (a receptive-field bound asked before), the ring just inside it is probed first: a
        model that uses its receptive field up to the bound is then settled in one test."""
        lo, hi = self._bounds()
        if lo < hi < len(self.levels) - 1:
            if self.beyond(int(self.levels[hi - 1])):
                lo = hi
            else:
                hi -= 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self.beyond(int(self.levels[mid])):
                lo = mid + 1
            else:
                hi = mid
        return int(self.levels[lo])

    def radius_known(self) -> bool:
        lo, hi = self._bounds()
        return lo == hi

    @property
    def ring_tests(self) -> int:
        """Ring tests asked (run or reused; not those the traced graph settled)."""
        return len(self.rings) - len(self.settled_rings)

    @property
    def group_tests(self) -> int:
        """Distinct group tests asked by this search (run, or reused from the cache)."""
        return self.ring_tests + len(self.groups) + len(self.alone)

    # ------------------------------------------------------------------------------------ k-d split
    def _halves(self, group: np.ndarray) -> list[np.ndarray]:
        cols, rows = self.eng.grid.cols, self.eng.grid.rows
        r, c = np.divmod(group, cols)
        if np.ptp(r) >= np.ptp(c):
            order = np.argsort(r * cols + c, kind="stable")
        else:
            order = np.argsort(c * rows + r, kind="stable")
        half = group.size // 2
        return [group[order[:half]], group[order[half:]]]

    def group_test(self, group: np.ndarray) -> bool:
        """Did a joint replacement of ``group`` change the ROI output? A single block is tested alone
        (``kd-block<i>``); a larger group is named by a digest of its sorted blocks (``kd-<digest>``), so the same
        group is the same test (the same draws, memo and cache entry) whichever split reaches it."""
        if group.size == 1:
            block = int(group[0])
            if block not in self.alone:
                self._narrow()
                self.alone[block] = self.eng.group_changed(Phase("kd-block", block, tag=self._frame_tag()), group,
                                                           self.draws, self.frame)
                self.tests_run += 1
            return self.alone[block]
        ids = np.sort(group).astype(np.int64)
        tag = hashlib.sha256(ids.tobytes()).hexdigest()[:16]
        if tag not in self.groups:
            self._narrow()
            frame_tag = self._frame_tag()
            self.groups[tag] = self.eng.group_changed(Phase("kd", tag=tag if frame_tag is None else f"{tag}-{frame_tag}"),
                                                      ids, self.draws, self.frame)
            self.tests_run += 1
        return self.groups[tag]

    def refine(self, radius: int, budget: float, reward: float = 0.0, singles: bool = False,
               roi_blocks: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
        """k-d refinement of the blocks within ``radius`` (outside the ROI). Groups are taken breadth-first; each
        test costs ``draws``; testing goes on while the draws spent stay within ``budget`` plus ``reward`` per
        block ruled out so far. Without ``singles`` single blocks are left to the caller (fast mode's coarse
        draws settle them). With ``singles`` they are tested alone, and where the support is dense (a group that
        changed has a sibling that changed too) the group goes straight to single blocks, skipping the splits
        that would change anyway; with ``roi_blocks`` the ROI's own blocks are tested alone after the split.

        A test asked before (by this job, or cached) is reused, but counts against the budget like a new one, so
        the outcome does not depend on what ran before. Returns the blocks this refinement ruled out (bool,
        n_blocks) and a summary: tests asked, blocks ruled out."""
        root = np.flatnonzero((self.dist <= radius) & (self.dist > 0) & self.reach)
        # With a radius above 0 the root holds the ring just below it, already seen to change: split it untested.
        if radius > 0 and root.size > 1:
            a, b = self._halves(root)
            queue = [(a, b), (b, a)]
        else:
            queue = [(root, None)]
        tail = [(np.array([b]), None) for b in np.flatnonzero((self.dist == 0) & self.reach)] if roi_blocks else []
        spent, ruled_out, asked = 0, 0, 0
        mask = np.zeros(self.dist.size, dtype=bool)
        changed_of: dict[int, bool] = {}  # id(group) -> changed, for the dense rule
        while (queue or tail) and spent + self.draws <= budget + ruled_out * reward:
            group, sibling = queue.pop(0) if queue else tail.pop(0)
            if group.size == 0 or (group.size == 1 and not singles):
                continue  # a single block is settled by the caller
            changed = self.group_test(group)
            changed_of[id(group)] = changed
            asked += 1
            spent += self.draws
            if not changed:
                mask[group] = True
                ruled_out += group.size
            elif group.size > 1:
                dense = singles and sibling is not None and changed_of.get(id(sibling), False)
                if dense:
                    queue += [(np.array([b]), None) for b in group]
                else:
                    a, b = self._halves(group)
                    queue += [(a, b), (b, a)]
        self.kd_ruled_out |= mask
        return mask, {"tests": asked, "ruled_out": ruled_out}

    def offenders(self, level: int, want: int, max_tests: int) -> list[int]:
        """Find up to ``want`` blocks of the ring at ``level`` px (a ring known to change the ROI output) that
        change it alone: a k-d split of the ring, depth first, recursing into groups that changed, single blocks
        tested alone, at most ``max_tests`` group tests. Returns the blocks found (supported, tested alone)."""
        ring = np.flatnonzero((self.dist == level) & self.reach)
        found = [b for b, changed in self.alone.items() if changed and self.dist[b] == level]
        queue = [ring] if ring.size else []
        asked = 0
        while queue and len(found) < want and asked < max_tests:
            group = queue.pop(0)
            if group.size == 1 and int(group[0]) in self.alone:
                continue
            asked += 1
            if not self.group_test(group):
                self.kd_ruled_out[group] = True
            elif group.size == 1:
                found.append(int(group[0]))
            else:
                queue = self._halves(group) + queue  # depth first: reach single blocks soon
        return found

    # ------------------------------------------------------------------------------------ verdicts
    def verdicts(self) -> tuple[np.ndarray, np.ndarray]:
        """``(support, resolved)`` bool arrays (n_blocks,): a block is *resolved* when a test decided it on its
        own (tested alone) or ruled it out with its group (a ring or k-d group that never changed); it is in
        the *support* when it changed the ROI output tested alone."""
        resolved = self.kd_ruled_out | ~self.reach
        for level, changed in self.rings.items():
            if not changed:
                resolved |= self.dist > level
        support = np.zeros(self.dist.size, dtype=bool)
        for block, changed in self.alone.items():
            resolved[block] = True
            support[block] = changed
        return support, resolved
