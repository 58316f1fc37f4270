"""Constants, :class:`FastOptions`, the phases of a map (as values) and argument validation shared by the stages."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from ..constants import MODES, PRECISIONS  # shared with the plugin and the CLI (torch-free)
from ..errors import CEMInputError, describe_value, validate_int

#: PSNR is capped here (an ROI reproduced exactly would otherwise give +inf dB).
MAX_PSNR_DB = 100.0
#: Draws are synthesised and cached in chunks of this many interventions.
CHUNK = 256
#: Default batch size on CPU: larger batches bring no throughput on a few cores.
CPU_BATCH = 8
#: Part of every cache key: results cached by another engine version are never read. 6: support radii in pixels
#: (ring tests of exactly the pixels beyond a bound), the traced reach confirmed by a group test.
ENGINE_VERSION = 6


@dataclass(frozen=True)
class FastOptions:
    """Settings of ``mode="fast"`` (see :mod:`cem_checks.engine` for what each mechanism guarantees)."""

    group_testing: bool = True
    group_draws: int = 3
    group_budget: float = 0.05
    crop: bool = True
    crop_atol: float = 1e-5
    adaptive: bool = True
    looks: tuple[int, ...] = (5, 10, 20, 35, 50)
    rel_precision: float = 0.3
    alpha: float = 0.05
    common_random_numbers: bool = True
    local_eval: bool = True

    def __post_init__(self):
        if isinstance(self.group_draws, bool) or not isinstance(self.group_draws, int) or self.group_draws < 1:
            raise CEMInputError(f"FastOptions.group_draws={self.group_draws!r} must be an integer >= 1 (e.g. 3).")
        if not (0 <= self.group_budget):
            raise CEMInputError(f"FastOptions.group_budget={self.group_budget!r} must be >= 0 (a fraction of the coarse budget).")
        if not (self.crop_atol >= 0):
            raise CEMInputError(f"FastOptions.crop_atol={self.crop_atol!r} must be >= 0.")
        if not self.looks or any((not isinstance(n, int)) or n < 2 for n in self.looks) or list(self.looks) != sorted(set(self.looks)):
            raise CEMInputError(f"FastOptions.looks={self.looks!r} must be increasing integers >= 2, e.g. (5, 10, 20, 35, 50).")
        if not (0 < self.rel_precision):
            raise CEMInputError(f"FastOptions.rel_precision={self.rel_precision!r} must be > 0 (e.g. 0.2 for 20 %).")
        if not (0 < self.alpha < 1):
            raise CEMInputError(f"FastOptions.alpha={self.alpha!r} must lie in (0, 1), e.g. 0.05.")


@dataclass(frozen=True)
class Phase:
    """A phase of draws. Its text (``str``) names the phase's random streams and its cache files, so it is
    stable across versions: ``coarse``, ``fine`` (paper mode), ``fine@<look>`` (fast mode's sequential looks),
    ``ring<d>`` (the group "every block farther than d px"; ``ring<d>-crop<y>-<x>-<h>-<w>`` in a verified crop),
    ``kd-<digest>`` (a group of the k-d split, named by
    a digest of its blocks, so a group is the same test in any split that reaches it), ``kd-block<i>`` (block i
    tested alone), ``local-check``."""

    kind: str
    index: int | None = None
    tag: str | None = None  # kd: the digest of the group's blocks

    def __str__(self) -> str:
        if self.index is None:
            text = self.kind
        elif self.kind == "fine":
            text = f"fine@{self.index}"
        else:
            text = f"{self.kind}{self.index}"
        return text if self.tag is None else f"{text}-{self.tag}"

    def crn_stream(self, draw: int) -> str:
        """The stream of the ``draw``-th patch of every block under common random numbers (the same across the
        looks of a phase)."""
        return f"{self.kind}-crn{draw}"


COARSE = Phase("coarse")
CONFIRM = Phase("confirm")  # normal-forward draws that settle the support of blocks drawn locally
FINE = Phase("fine")
LOCAL_CHECK = Phase("local-check")


def derive_seed(seed: int, *stream: Any) -> int:
    """A 63-bit seed derived from ``seed`` and the names of a stream (phase, chunk, purpose)."""
    digest = hashlib.sha256(":".join(map(str, (seed,) + stream)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def validate_common(*, seed: Any, batch_size: Any, progress: Any, precision: Any, threads: Any = None) -> int:
    """Validate the arguments every stage takes; returns the seed as an int."""
    seed = validate_int("seed", seed, 0)
    if threads is not None:
        validate_int("threads", threads, 1)
    if not (batch_size == "auto" or (not isinstance(batch_size, bool) and isinstance(batch_size, int) and batch_size >= 1)):
        raise CEMInputError(f"batch_size={batch_size!r} must be 'auto' or an integer >= 1.")
    from ..progress import Progress

    if progress is not None and not isinstance(progress, (bool, Progress)) and not callable(progress):
        raise CEMInputError(
            f"progress={progress!r} must be True (a bar), False (silent), None (a bar on a terminal, log lines "
            "otherwise), a function receiving the log lines, or a cem_checks.progress.Progress."
        )
    if precision not in PRECISIONS:
        raise CEMInputError(f"precision={precision!r} is unknown; expected one of {', '.join(map(repr, PRECISIONS))}.")
    return seed


def validate_map_settings(*, mode: Any, coarse: Any, fine: Any, tol_db: Any, fast: Any) -> tuple[int, int, float, FastOptions]:
    """Validate the settings of a map's estimation; returns ``(coarse, fine, tol_db, fast)``."""
    if mode not in MODES:
        raise CEMInputError(f"mode={mode!r} is not available; expected one of {', '.join(map(repr, MODES))}.")
    coarse = validate_int("coarse", coarse, 1)
    fine = validate_int("fine", fine, 1)
    if isinstance(tol_db, bool) or not isinstance(tol_db, (int, float)) or not (tol_db >= 0 and math.isfinite(tol_db)):
        raise CEMInputError(f"tol_db={tol_db!r} must be a finite number >= 0 (dB), e.g. 0.01.")
    if fast is None:
        fast = FastOptions()
    elif not isinstance(fast, FastOptions):
        raise CEMInputError(f"fast={describe_value(fast)} must be a cem_checks.FastOptions, e.g. FastOptions(crop=False).")
    return coarse, fine, tol_db, fast
