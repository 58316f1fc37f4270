"""Regions of interest and the block grid over the model input.

Coordinates: ``x`` is a column, ``y`` a row, both counted from the top-left corner. ROIs are given in
output pixels; blocks, footprints and distances are in input pixels (``_px``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ROIError, describe_value


@dataclass(frozen=True)
class ROI:
    """A square region of interest in output pixels: top-left column ``x``, row ``y`` and side ``size``."""

    x: int
    y: int
    size: int

    @classmethod
    def parse(cls, roi: Any) -> "ROI":
        """Accept an :class:`ROI`, an ``(x, y, size)`` sequence or a mapping with those keys."""
        if isinstance(roi, ROI):
            return roi
        if isinstance(roi, dict) and set(roi) == {"x", "y", "size"}:
            values = (roi["x"], roi["y"], roi["size"])
        elif isinstance(roi, (tuple, list)) and len(roi) == 3:
            values = tuple(roi)
        else:
            raise ROIError(
                f"roi {describe_value(roi)} is not understood; expected (x, y, size) in output pixels, "
                "e.g. roi=(40, 40, 16), or cem_checks.ROI(x=40, y=40, size=16)."
            )
        ints = []
        for name, v in zip(("x", "y", "size"), values):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ROIError(f"roi {name}={v!r} must be an integer number of output pixels; got {type(v).__name__}.")
            ints.append(int(v))
        x, y, size = ints
        if x < 0 or y < 0:
            raise ROIError(f"roi (x={x}, y={y}, size={size}) has a negative corner; x and y must be >= 0.")
        if size < 1:
            raise ROIError(f"roi size={size} must be >= 1 output pixel.")
        return cls(x, y, size)

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.x, self.y, self.size)

    def footprint(self, scale: int) -> tuple[int, int, int, int]:
        """The ROI in input pixels as half-open bounds ``(x0, y0, x1, y1)``; requires alignment to ``scale``."""
        return (self.x // scale, self.y // scale, (self.x + self.size) // scale, (self.y + self.size) // scale)

    def validate(self, output_hw: tuple[int, int], scale: int) -> None:
        """Raise :class:`ROIError` unless the ROI lies inside an output of ``output_hw`` and is scale-aligned."""
        H, W = output_hw
        if self.x + self.size > W or self.y + self.size > H:
            raise ROIError(
                f"roi (x={self.x}, y={self.y}, size={self.size}) reaches column {self.x + self.size} and row "
                f"{self.y + self.size}, outside the {W}x{H} (width x height) model output; choose x + size <= {W} "
                f"and y + size <= {H}."
            )
        if scale > 1 and (self.x % scale or self.y % scale or self.size % scale):
            fix = ROI(self.x - self.x % scale, self.y - self.y % scale, max(scale, self.size - self.size % scale))
            raise ROIError(
                f"roi (x={self.x}, y={self.y}, size={self.size}) is not aligned with the x{scale} scale: x, y and "
                f"size must be multiples of {scale} so that the ROI covers whole input pixels; e.g. use "
                f"roi=({fix.x}, {fix.y}, {fix.size})."
            )


@dataclass(frozen=True)
class BlockGrid:
    """The grid of square blocks of side ``block_size`` (input px) over an ``height`` x ``width`` input."""

    height: int
    width: int
    block_size: int

    @property
    def rows(self) -> int:
        return self.height // self.block_size

    @property
    def cols(self) -> int:
        return self.width // self.block_size

    @property
    def n_blocks(self) -> int:
        return self.rows * self.cols

    def tops_lefts(self) -> tuple[np.ndarray, np.ndarray]:
        """Row-major (n_blocks,) arrays of each block's top and left input pixel."""
        r, c = np.divmod(np.arange(self.n_blocks), self.cols)
        return r * self.block_size, c * self.block_size

    def distance(self, footprint: tuple[int, int, int, int]) -> np.ndarray:
        """(rows, cols) int Chebyshev gap in input px from each block to the footprint ``(x0, y0, x1, y1)``.

        0 means the block overlaps the footprint, 1 that it is adjacent; a model whose receptive field has
        radius r input px can only affect blocks with distance <= r.
        """
        x0, y0, x1, y1 = footprint
        b = self.block_size
        top = np.arange(self.rows) * b
        left = np.arange(self.cols) * b
        dy = np.maximum(0, np.maximum(top - (y1 - 1), y0 - (top + b - 1)))
        dx = np.maximum(0, np.maximum(left - (x1 - 1), x0 - (left + b - 1)))
        return np.maximum(dy[:, None], dx[None, :]).astype(np.int64)

    def pixel_distance(self, footprint: tuple[int, int, int, int]) -> np.ndarray:
        """(height, width) int Chebyshev distance in input px from each input pixel to the footprint
        ``(x0, y0, x1, y1)``: 0 inside it, 1 for the pixels touching it. A model whose receptive field has radius
        r input px cannot be affected by a pixel farther than r; a block's :meth:`distance` is the least distance
        of its pixels, :meth:`far_distance` the greatest."""
        x0, y0, x1, y1 = footprint
        ys, xs = np.arange(self.height), np.arange(self.width)
        dy = np.maximum(0, np.maximum(ys - (y1 - 1), y0 - ys))
        dx = np.maximum(0, np.maximum(xs - (x1 - 1), x0 - xs))
        return np.maximum(dy[:, None], dx[None, :]).astype(np.int64)

    def far_distance(self, footprint: tuple[int, int, int, int]) -> np.ndarray:
        """(rows, cols) int: the distance (input px, as :meth:`pixel_distance`) of each block's farthest pixel."""
        b = self.block_size
        d = self.pixel_distance(footprint)[: self.rows * b, : self.cols * b]
        return d.reshape(self.rows, b, self.cols, b).max(axis=(1, 3))
