"""Atomic file writes: a temporary file beside the target, renamed into place, so readers (and a run killed
at any moment) only ever see whole files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], *, fsync: bool = False) -> Path:
    """Create ``path``'s folder, call ``write`` on a temporary file beside it, then rename it to ``path``.

    With ``fsync`` the bytes reach the disk before the rename. On any error the temporary file is removed and
    the error propagates; ``path`` is left as it was. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of ``text`` in UTF-8."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
