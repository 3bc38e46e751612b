"""The tile grid: cores that cover the raster exactly once, and windows (core + halo) that give context.

A tile's *core* is one cell of a regular grid of ``tile × tile`` pixels (smaller at the right and bottom
edges when the tile size does not divide the raster). Its *window* is the core grown by ``halo`` pixels on
each side, clipped to the raster. The model sees the window; the stitch keeps only the core of each tile and
re-joins objects across cores using the overlap of neighbouring windows (:mod:`pipeline.stages.stitch`).

The halo should be at least the receptive field of the model and the size of the largest object that must
come out identical to a whole-image run; objects larger than the halo are still joined, but their labels
near the seam can then depend on the tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

from pipeline.errors import ParameterError

__all__ = ["Window", "Tile", "TileGrid", "validate_tiling"]


@dataclass(frozen=True, slots=True)
class Window:
    """A rectangle of pixels: rows ``[row, row + height)``, columns ``[col, col + width)``."""

    row: int
    col: int
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.height < 0 or self.width < 0:
            raise ValueError(f"window size must be non-negative, got {self.height}x{self.width}")

    @property
    def row_end(self) -> int:
        return self.row + self.height

    @property
    def col_end(self) -> int:
        return self.col + self.width

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.row, self.row_end), slice(self.col, self.col_end)

    @property
    def empty(self) -> bool:
        return self.height == 0 or self.width == 0

    def intersection(self, other: "Window") -> "Window":
        r0, c0 = max(self.row, other.row), max(self.col, other.col)
        r1, c1 = min(self.row_end, other.row_end), min(self.col_end, other.col_end)
        return Window(r0, c0, max(0, r1 - r0), max(0, c1 - c0))

    def expand(self, n: int, bounds: "Window | None" = None) -> "Window":
        w = Window(self.row - n, self.col - n, self.height + 2 * n, self.width + 2 * n)
        return w.intersection(bounds) if bounds is not None else w

    def relative_to(self, outer: "Window") -> tuple[slice, slice]:
        """Slices of this window inside the array of ``outer``."""
        return (slice(self.row - outer.row, self.row_end - outer.row), slice(self.col - outer.col, self.col_end - outer.col))


@dataclass(frozen=True, slots=True)
class Tile:
    """One grid cell: its index in row-major order, grid position, core and window."""

    index: int
    grid_row: int
    grid_col: int
    core: Window
    window: Window


@dataclass(frozen=True)
class TileGrid:
    """A ``tile × tile`` grid over a ``height × width`` raster, with a halo of context per tile."""

    height: int
    width: int
    tile: int
    halo: int

    def __post_init__(self) -> None:
        validate_tiling(self.tile, self.halo)
        if self.height <= 0 or self.width <= 0:
            raise ParameterError(f"raster size must be positive, got {self.height}x{self.width}")

    @property
    def shape(self) -> tuple[int, int]:
        """Number of tile rows and columns."""
        return math.ceil(self.height / self.tile), math.ceil(self.width / self.tile)

    @property
    def bounds(self) -> Window:
        return Window(0, 0, self.height, self.width)

    def __len__(self) -> int:
        r, c = self.shape
        return r * c

    def tile_at(self, grid_row: int, grid_col: int) -> Tile:
        rows, cols = self.shape
        if not (0 <= grid_row < rows and 0 <= grid_col < cols):
            raise IndexError(f"tile ({grid_row}, {grid_col}) outside grid {rows}x{cols}")
        r0, c0 = grid_row * self.tile, grid_col * self.tile
        core = Window(r0, c0, min(self.tile, self.height - r0), min(self.tile, self.width - c0))
        return Tile(grid_row * cols + grid_col, grid_row, grid_col, core, core.expand(self.halo, self.bounds))

    def __getitem__(self, index: int) -> Tile:
        rows, cols = self.shape
        if not 0 <= index < rows * cols:
            raise IndexError(f"tile index {index} outside 0..{rows * cols - 1}")
        return self.tile_at(index // cols, index % cols)

    def __iter__(self) -> Iterator[Tile]:
        for i in range(len(self)):
            yield self[i]

    def forward_neighbours(self, t: Tile) -> list[Tile]:
        """Neighbours to the right, below-left, below and below-right: each neighbouring pair once."""
        rows, cols = self.shape
        out = []
        for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):
            r, c = t.grid_row + dr, t.grid_col + dc
            if 0 <= r < rows and 0 <= c < cols:
                out.append(self.tile_at(r, c))
        return out

    def seam_band(self, a: Tile, b: Tile) -> Window:
        """Where two neighbouring tiles are compared: their shared window area, but only pixels within
        ``halo // 2`` of both cores, so that each side has at least half a halo of context there."""
        shared = a.window.intersection(b.window)
        h = max(1, self.halo // 2)
        return shared.intersection(a.core.expand(h)).intersection(b.core.expand(h))


def validate_tiling(tile: int, halo: int) -> None:
    if not isinstance(tile, int) or tile <= 0:
        raise ParameterError(f"--tile must be a positive number of pixels, got {tile!r}; use e.g. --tile 1024")
    if not isinstance(halo, int) or halo < 0:
        raise ParameterError(f"--halo must be zero or a positive number of pixels, got {halo!r}; use e.g. --halo 64")
    if halo >= tile:
        raise ParameterError(f"--halo ({halo}) must be smaller than --tile ({tile}); lower the halo or raise the tile size")
