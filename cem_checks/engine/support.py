"""The support stage: which blocks can change the ROI output at all, decided exactly by group testing.

A *group test* intervenes on every block of a group at once, ``draws`` times with independent natural patches,
and compares the ROI output bit for bit with the baseline computed under the same batch shape. If it never
changed, no block of the group can change the ROI output: each is outside the support, with effect exactly 0.

- *Rings, exact in pixels.* The group "every input pixel farther than d px from the ROI footprint"
  (:meth:`SupportSearch.beyond`) answers "does anything beyond d px change the ROI output?" in one test, whatever
  the block size: the blocks wholly beyond d are replaced, and a block straddling d only on its pixels beyond d
  (the rest keeps its content). A binary search over d (:meth:`SupportSearch.radius`) finds the support radius:
  the distance of the farthest pixel that changes it. Once a ring is shown not to change it, the further tests
  run in a verified crop of the blocks within that ring (the verified crop of :mod:`.crop`), at a fraction of the
  cost of the full input.
- *The traced reach, confirmed by the model.* For a model that :func:`cem_checks.local_eval.build_plan` traces
  (local operations only, at any resolution), the graph says which input box the ROI output reads (each
  convolution's halo). A trace may miss what the model really runs (forward hooks, in-place updates of views,
  an overridden ``forward``), so the box decides nothing until the traced graph's baseline ROI output equals the
  model's and one group test on the full input, replacing every pixel outside the box, leaves the ROI output
  unchanged (:meth:`SupportSearch._check_reach`). Then the blocks wholly outside are resolved, rings beyond the
  box need no test of their own, and the tests run in a verified crop of the blocks inside it. A later failed
  check of the traced graph (local evaluation's) stops its use for what is still to decide.
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

import torch

from .crop import verified_crop
from .draws import Engine, Frame, PixelMask
from .options import FastOptions, Phase


class SupportSearch:
    """Group tests over the full input of one job, remembered across stages (see the module docstring)."""

    def __init__(self, eng: Engine, draws: int, crop: FastOptions | None = None):
        self.eng, self.draws = eng, draws
        self.crop = crop  # FastOptions whose crop_atol verifies crops; None: every test on the full input
        self.frame: Frame = eng.full
        self.in_frame = np.ones(eng.grid.n_blocks, dtype=bool)
        self.frame_info: dict[str, Any] = {"crop": None, "crop_check": "not needed"}
        self._reach: np.ndarray | None = None  # blocks the verified traced reach admits (all when untraced)
        self.reach_ruled_out = np.zeros(eng.grid.n_blocks, dtype=bool)  # blocks the reach check ruled out
        self.reach_radius: int | None = None  # the farthest pixel (px) of the verified traced box
        self.reach_info = "not traced"
        self.dist = eng.distance.ravel()  # each block's nearest pixel (px)
        self.far = eng.far_distance.ravel()  # each block's farthest pixel (px)
        self.max_level = int(eng.pixel_distance.max())  # the farthest pixel of the input
        self.rings: dict[int, bool] = {}  # d -> did "every pixel farther than d px" change the ROI output
        self.settled_rings: set[int] = set()  # rings the verified traced reach settled without a test of their own
        self.groups: dict[str, bool] = {}  # k-d group (digest of its blocks) -> changed
        self.alone: dict[int, bool] = {}  # block tested alone -> changed
        self.alone_beyond: dict[tuple[int, int], bool] = {}  # (block, d): its pixels farther than d px -> changed
        self.kd_ruled_out = np.zeros(self.dist.size, dtype=bool)  # blocks in a k-d group (or alone) that never changed
        self.tests_run = 0  # group tests run (not reused) by this search

    # ------------------------------------------------------------------------------------ rings
    def _level(self, d: float) -> int:
        """The ring "farther than d px" as a whole number of px (pixel distances are integers)."""
        return min(self.max_level, max(0, int(np.floor(d))))

    def beyond(self, d: float) -> bool:
        """Does any input pixel farther than ``d`` px from the ROI footprint change the ROI output? One group test
        that replaces exactly those pixels (blocks straddling the bound only on their side of it); none when no
        pixel lies that far, or when a stage of this job already asked."""
        level = self._level(d)
        if level >= self.max_level:
            return False  # no pixel lies beyond the farthest one
        if level not in self.rings:
            self._narrow()
            if self.reach_radius is not None and level >= self.reach_radius:
                # every pixel that far lies outside the traced box, which the reach check showed not to matter
                self.rings[level] = False
                self.settled_rings.add(level)
                return False
            # blocks outside the frame are known not to change the ROI output (the frame is a verified crop)
            group = np.flatnonzero((self.far > level) & self.in_frame)
            self.rings[level] = bool(group.size) and self.eng.group_changed(
                Phase("ring", level, tag=self._frame_tag()), group, self.draws, self.frame,
                pixels=self.eng.beyond_mask(level))
            self.tests_run += bool(group.size)
        return self.rings[level]

    @property
    def reach(self) -> np.ndarray:
        """(n_blocks,) bool: the blocks that can reach the ROI output (see :meth:`_check_reach`); every block when
        the model is not traced or its trace was not confirmed."""
        if self._reach is None:
            self._reach = np.ones(self.dist.size, dtype=bool)
            if self.crop is not None and self.crop.crop and self.eng.runner.precision == "fp32":
                self._check_reach()
        return self._reach

    def _check_reach(self) -> None:
        """The traced reach, used only once the real model has confirmed it. For a model that
        :func:`cem_checks.local_eval.build_plan` traces, the graph says which input box the ROI output reads (each
        convolution's halo). The trace may miss what the model really runs (hooks, in-place updates of views, an
        overridden ``forward``), so the box decides nothing until (1) the traced graph's baseline ROI output
        equals the model's (within ``crop_atol``), and (2) one group test on the full input, replacing every pixel
        outside the box (``draws`` joint draws, as any group test), leaves the ROI output bit-identical. Then the
        blocks wholly outside the box are resolved (effect exactly 0), rings beyond the box need no test of their
        own, and the tests run in a verified crop of the blocks inside it."""
        from ..local_eval import traced_reach
        from .local import frame_evaluator, local_plan

        eng = self.eng
        sl = eng.full.sl
        roi = (sl[2].start, sl[2].stop, sl[3].start, sl[3].stop)
        box, why, roi_base = traced_reach(eng.runner.model, eng.full.x.to(eng.runner.dtype), roi,
                                          local_plan(eng, eng.full.x),
                                          make=lambda plan, x, roi: frame_evaluator(eng, plan, eng.full))
        if box is None:
            self.reach_info = f"not traced: {why}"
            return
        y0, y1, x0, x1 = box
        model_roi = eng.full.baseline(1)[0]
        atol = self.crop.crop_atol * max(1.0, float(model_roi.abs().max()))
        diff = float((roi_base.to(model_roi.device) - model_roi).abs().max())
        if not diff <= atol:
            self.reach_info = (f"not used: the traced graph's baseline ROI output differs from the model's by {diff:.3g} "
                               f"(> {atol:.2g}): the model runs more than its trace shows (hooks, in-place updates "
                               "of views, an overridden forward?)")
            return
        h, w = eng.pixel_distance.shape
        inside = np.zeros((h, w), dtype=bool)
        inside[max(0, y0): y1, max(0, x0): x1] = True
        b = eng.b
        r, c = np.divmod(np.arange(self.dist.size), eng.grid.cols)
        touches = (r * b < y1) & ((r + 1) * b > y0) & (c * b < x1) & ((c + 1) * b > x0)
        reach_radius = int(eng.pixel_distance[inside].max()) if inside.any() else 0
        outside = ~inside
        where = f"(y {y0}:{y1}, x {x0}:{x1})"
        if outside.any():
            # every pixel outside the box (those farther than reach_radius px, and those of a box narrower than the
            # Chebyshev square around the ROI), in one group of masked blocks
            mask = PixelMask(f"outside{y0}-{y1}-{x0}-{x1}", torch.as_tensor(outside, device=eng.device))
            blocks = np.flatnonzero(outside.reshape(eng.grid.rows, b, eng.grid.cols, b).any(axis=(1, 3)))
            changed = eng.group_changed(Phase("reach", tag=f"{y0}-{y1}-{x0}-{x1}"), blocks, self.draws, eng.full,
                                        pixels=mask)
            self.tests_run += 1
            if changed:
                self.reach_info = (f"refuted: replacing the input outside the traced box {where} changed the ROI "
                                   "output, so the model runs more than its trace shows (hooks, in-place updates of "
                                   "views, an overridden forward?); every block is tested")
                return
        self._reach = touches
        self.reach_ruled_out = ~touches
        self.reach_radius = reach_radius
        self.reach_info = (f"traced and confirmed: the ROI output reads the input box {where}; one group test "
                           "replacing everything outside it left the ROI output unchanged")

    def disable_reach(self, why: str) -> None:
        """Stop using the traced reach for what is still to decide (a check of the traced graph failed later);
        what its confirming group test ruled out stays ruled out."""
        if self._reach is not None and not self._reach.all():
            self._reach = np.ones(self.dist.size, dtype=bool)
            self.reach_radius = None
            self.reach_info += f"; no longer used: {why}"

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
        """(lo, hi): the pixel distances between which the support radius lies, from the rings asked so far (a
        ring d that changed: radius > d; one that did not: radius <= d)."""
        lo, hi = 0, self.max_level  # nothing lies beyond the farthest pixel
        if self.reach_radius is not None:
            hi = self.reach_radius  # nothing beyond the confirmed traced reach
        for level, changed in self.rings.items():
            if changed:
                lo = max(lo, level + 1)
            else:
                hi = min(hi, level)
        return lo, max(lo, hi)  # a contradiction (a farther ring changed, a nearer one did not) keeps the farther

    def radius(self) -> int:
        """The support radius (input px, exact): the distance of the farthest pixel that changes the ROI output, by
        a binary search over the pixel rings, starting from what earlier stages established. When a quiet ring
        bounds the radius (a receptive-field bound, or the confirmed traced reach), the ring just inside it is
        probed first: a model that uses its receptive field up to the bound is settled in one test. Once a ring
        is known to change and nothing bounds the radius, the farthest ring is probed next: a global model is
        settled in one more test."""
        self.reach  # noqa: B018 - the confirmed traced reach bounds the search (one group test, once)
        lo, hi = self._bounds()
        if lo < hi < self.max_level:
            if self.beyond(hi - 1):
                lo = hi
            else:
                hi -= 1
        edge = False
        while lo < hi:
            if lo > 0 and hi == self.max_level and not edge:
                edge, mid = True, hi - 1
            else:
                mid = (lo + hi) // 2
            if self.beyond(mid):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def radius_known(self) -> bool:
        lo, hi = self._bounds()
        return lo == hi

    @property
    def ring_tests(self) -> int:
        """Ring tests asked (run or reused; not those the traced reach settled)."""
        return len(self.rings) - len(self.settled_rings)

    @property
    def group_tests(self) -> int:
        """Distinct group tests asked by this search (run, or reused from the cache)."""
        reach = int(self.reach_radius is not None and bool(self.reach_ruled_out.any()))
        return self.ring_tests + len(self.groups) + len(self.alone) + len(self.alone_beyond) + reach

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
               roi_blocks: bool = False, root: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """k-d refinement of the blocks within ``radius`` (outside the ROI). Groups are taken breadth-first; each
        test costs ``draws``; testing goes on while the draws spent stay within ``budget`` plus ``reward`` per
        block ruled out so far. Without ``singles`` single blocks are left to the caller (fast mode's coarse
        draws settle them). With ``singles`` they are tested alone, and where the support is dense (a group that
        changed has a sibling that changed too) the group goes straight to single blocks, skipping the splits
        that would change anyway; with ``roi_blocks`` the ROI's own blocks are tested alone after the split.

        A test asked before (by this job, or cached) is reused, but counts against the budget like a new one, so
        the outcome does not depend on what ran before. ``root``: the blocks to refine instead (e.g. those that no
        locally evaluated draw changed), tested whole first. Returns the blocks this refinement ruled out (bool,
        n_blocks) and a summary: tests asked, blocks ruled out."""
        given = root is not None
        if not given:
            root = np.flatnonzero((self.dist <= radius) & (self.dist > 0) & self.reach)
        # With a radius above 0 the root holds the ring just below it, already seen to change: split it untested.
        if radius > 0 and root.size > 1 and not given:
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

    def offenders(self, radius: int, want: int, max_tests: int) -> list[int]:
        """Find up to ``want`` blocks holding pixels at ``radius`` px (the support radius: the farthest pixels that
        change the ROI output) whose pixels at that distance change it without the others: a k-d split of those
        blocks, depth first, recursing into groups that changed, each test replacing the pixels farther than
        ``radius - 1`` px only; at most ``max_tests`` group tests. Returns the blocks found (supported)."""
        if radius <= 0:
            return []
        level = radius - 1
        mask = self.eng.beyond_mask(level)
        ring = np.flatnonzero((self.far > level) & (self.dist <= radius) & self.reach)
        found = [b for (b, d), changed in self.alone_beyond.items() if changed and d == level]
        queue = [ring] if ring.size else []
        asked = 0
        while queue and len(found) < want and asked < max_tests:
            group = queue.pop(0)
            if group.size == 1 and (int(group[0]), level) in self.alone_beyond:
                continue
            asked += 1
            if group.size == 1:
                block = int(group[0])
                self._narrow()
                changed = self.eng.group_changed(Phase("kd-block", block, tag=f"beyond{level}{self._tag_suffix()}"),
                                                 group, self.draws, self.frame, pixels=mask)
                self.alone_beyond[(block, level)] = changed
                self.tests_run += 1
                if changed:
                    found.append(block)
                continue
            ids = np.sort(group).astype(np.int64)
            tag = f"{hashlib.sha256(ids.tobytes()).hexdigest()[:16]}-beyond{level}{self._tag_suffix()}"
            if tag not in self.groups:
                self._narrow()
                self.groups[tag] = self.eng.group_changed(Phase("kd", tag=tag), ids, self.draws, self.frame,
                                                          pixels=mask)
                self.tests_run += 1
            if self.groups[tag]:
                queue = self._halves(group) + queue  # depth first: reach single blocks soon
        return found

    def _tag_suffix(self) -> str:
        t = self._frame_tag()
        return "" if t is None else f"-{t}"

    # ------------------------------------------------------------------------------------ verdicts
    def verdicts(self) -> tuple[np.ndarray, np.ndarray]:
        """``(support, resolved)`` bool arrays (n_blocks,): a block is *resolved* when a test decided it on its
        own (tested alone, or some of its pixels changed the ROI output) or ruled it out with its group (a ring, a
        k-d group or the traced reach's check that never changed); it is in the *support* when it (or some of its
        pixels) changed the ROI output without other blocks."""
        resolved = self.kd_ruled_out | self.reach_ruled_out
        for level, changed in self.rings.items():
            if not changed:
                resolved |= self.dist > level
        support = np.zeros(self.dist.size, dtype=bool)
        for block, changed in self.alone.items():
            resolved[block] = True
            support[block] = changed
        for (block, _), changed in self.alone_beyond.items():
            if changed:  # some of its pixels change the ROI output; a quiet part decides nothing of the rest
                resolved[block] = support[block] = True
        return support, resolved
