"""Progress of a map, stage by stage: a tqdm bar on a terminal, log lines elsewhere (CI logs, scripts).

A :class:`Progress` follows one map (one :class:`~cem_checks.engine.Job`): each stage (``support``, ``coarse``,
``confirm``, ``fine``) starts with its total of draws when it is known in advance (the fine stage's is its cap:
sequential sampling may stop early), and the draws are counted as they run.

- ``"bar"``: one tqdm bar per map, its description the stage, its total the stage's.
- ``"log"``: once the map has run for :data:`LOG_EVERY_S` seconds, a line ``cem: <label>: <stage> <done>/<total>
  draws, <elapsed> s`` at each stage's start, and within a stage at most every :data:`LOG_EVERY_S` seconds:
  short maps stay silent, a long one shows it is alive.
- ``"off"``: nothing.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

#: The shortest interval between two log lines, and how long a map runs before its first one.
LOG_EVERY_S = 10.0
MODES = ("bar", "log", "off")


def _stderr_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Progress:
    """Progress of one map (see the module docstring). ``write`` receives the log lines (default: stderr)."""

    def __init__(self, mode: str = "off", label: str = "map", write: Callable[[str], Any] | None = None,
                 every_s: float | None = None):
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r}; expected one of {MODES}")
        self.mode, self.label = mode, label
        self.every_s = LOG_EVERY_S if every_s is None else every_s
        self.write = write or _stderr_line
        self.stage_name: str | None = None
        self.total: int | None = None
        self.done = 0
        self.started = time.monotonic()
        self.last_line = float("-inf")
        self.bar = None
        self.lines = 0

    @classmethod
    def auto(cls, progress: Any, label: str = "map") -> "Progress":
        """The progress of ``compute_cem(progress=...)``: True a bar, False nothing, None a bar on a terminal and
        log lines elsewhere, a callable the log lines it receives, a :class:`Progress` itself."""
        if isinstance(progress, Progress):
            return progress
        if progress is True:
            return cls("bar", label)
        if progress is False:
            return cls("off", label)
        if progress is None:
            return cls("bar" if sys.stderr.isatty() else "log", label)
        return cls("log", label, write=progress)

    def stage(self, name: str, total: int | None = None) -> None:
        """A new stage begins: ``total`` draws (None: not known in advance)."""
        self.stage_name, self.total, self.done = name, total, 0
        if self.mode == "bar":
            if self.bar is None:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=f"CEM {name}", unit="img", leave=False, file=sys.stderr)
            else:
                self.bar.reset(total=total)
                self.bar.set_description(f"CEM {name}")
        elif self.mode == "log":
            self._log(force=True)

    def update(self, n: int) -> None:
        """``n`` more draws of the stage ran."""
        self.done += n
        if self.total is not None and self.done > self.total:
            self.total = self.done
            if self.bar is not None:
                self.bar.total = self.total
        if self.mode == "bar" and self.bar is not None:
            self.bar.update(n)
        elif self.mode == "log":
            self._log()

    def _log(self, force: bool = False) -> None:
        now = time.monotonic()
        if now - self.started < self.every_s or (not force and now - self.last_line < self.every_s):
            return
        total = "?" if self.total is None else str(self.total)
        self.write(f"cem: {self.label}: {self.stage_name} {self.done}/{total} draws, {now - self.started:.0f} s")
        self.last_line = now
        self.lines += 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
