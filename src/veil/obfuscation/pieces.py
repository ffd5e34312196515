"""Where the region-only blur computes: the row and column pieces of one image.

A column piece is a rectangle of output (blended) pixels; a row piece a rectangle of the
row-blurred image that column pieces read (see :mod:`.separable`). Both are disjoint
band covers (:func:`.regions.band_cover`) whose runs are joined when the gap costs less
to blur than another piece: a piece costs ~10 us of Python and Pillow calls, a pixel of
a line ~16 ns (three passes at ~5.25 ns), and neighbouring bands merge on the same
terms. In a cost model fitted to those numbers this is within a few percent of the
cheapest of several snapping lattices on the WIDER sample; crowds are snapped to a
lattice first anyway, which costs as little and keeps their planning quick. The numba
passes (:mod:`.array_stages`) make pixels cheaper than that, yet on WIDER the engine's time
moved by under 3% for any join cost from 500 to 8000 pixels: one constant serves both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from veil.obfuscation import regions as rg
from veil.obfuscation._common import Rect
from veil.obfuscation.separable import Blur

EXACT_UP_TO = 32
"""Images with at most this many painted rects get an exact cover; crowds a lattice."""

LATTICE = 8
"""Lattice step (pixels) for crowds: as cheap to blur as the exact cover (the joins below
do most of the merging) and much quicker to plan, the grid being smaller."""


@dataclass(frozen=True)
class Pieces:
    columns: list[Rect]
    """Disjoint, covering every pixel the blur can change; blended one by one."""
    rows: list[Rect]
    """Disjoint, covering the columns grown by the reach vertically."""
    read: Rect
    """Bounding box of the rows grown by the reach sideways: what the row stage reads."""


def _snap(rects: Sequence[Rect], step: int, width: int, height: int) -> list[Rect]:
    """Rectangles grown outwards to multiples of ``step`` (within the image)."""
    if step == 1:
        return list(rects)
    return [(x0 - x0 % step, y0 - y0 % step, min(x1 + -x1 % step, width),
             min(y1 + -y1 % step, height)) for x0, y0, x1, y1 in rects]


JOINT = 500.0
"""Fixed cost of one piece (~8-11 us of Python and 8-12 Pillow calls) in pixels of one
line of its stage (three passes at ~5.25 ns each): runs of a band closer than this over
the band's height are joined (see :func:`.regions.band_cover`)."""


def cover(outputs: Sequence[Rect], blur: Blur, lattice: int, width: int, height: int
          ) -> Pieces:
    """Pieces covering ``outputs`` (clipped to the image), snapped to ``lattice``."""
    reach = blur.reach
    columns = rg.transposed(rg.band_cover(
        rg.transposed(_snap(outputs, lattice, width, height)), blur.gap, JOINT))
    needed = [(x0, max(y0 - reach, 0), x1, min(y1 + reach, height))
              for x0, y0, x1, y1 in columns]
    rows = rg.band_cover(_snap(needed, lattice, width, height), blur.gap, JOINT)
    read = (max(min(r[0] for r in rows) - reach, 0), min(r[1] for r in rows),
            min(max(r[2] for r in rows) + reach, width), max(r[3] for r in rows))
    return Pieces(columns, rows, read)


def plan_pieces(black: Sequence[Rect], blur: Blur, width: int, height: int) -> Pieces:
    """Pieces for blurring around the ``black`` rects (clipped to the image, non-empty):
    column pieces cover every pixel within :attr:`Blur.mask_reach` of one."""
    near = blur.mask_reach
    outputs = [(max(x0 - near, 0), max(y0 - near, 0), min(x1 + near, width),
                min(y1 + near, height)) for x0, y0, x1, y1 in black]
    lattice = 1 if len(outputs) <= EXACT_UP_TO else LATTICE
    return cover(outputs, blur, lattice, width, height)
