"""Both stages of the region-only blur on numpy arrays, passes compiled by numba.

Pillow blurs along rows only: a column blur is a transpose, a row blur and a transpose
back, and each of its scalar passes costs more than the arithmetic needs. Here every
pass runs down axis 0 of a 2D array (:mod:`._box_pass`, Pillow's integer arithmetic
exactly), whose inner loop runs along memory and vectorises: the column stage works on
the image as it is, the row stage on one transposed copy of the region it reads. Same
pixels as :func:`veil.obfuscation.separable.row_stage` and
:func:`~veil.obfuscation.separable.column_piece`; the tests hold both paths to the
whole-image reference. Without numba (or with ``VEIL_NO_NUMBA=1``) the Pillow path runs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache

import numpy as np

from veil.obfuscation._common import Rect
from veil.obfuscation.regions import GAUSSIAN_PASSES
from veil.obfuscation.separable import Blur, box_weights

Kernel = Callable[[np.ndarray, np.ndarray, int, int, int], None]


@cache
def _kernel() -> Kernel | None:
    if os.environ.get("VEIL_NO_NUMBA", "") not in ("", "0"):
        return None
    try:
        from veil.obfuscation._box_pass import vertical_box_pass
    except ImportError:  # numba missing on this platform: Pillow does it
        return None
    except RuntimeError as exc:  # e.g. numba finds nowhere writable for its cache
        warnings.warn(f"the blur runs without numba ({exc})", RuntimeWarning, stacklevel=2)
        return None
    return vertical_box_pass


_compiled = True


@contextmanager
def compiled_passes(enabled: bool) -> Iterator[None]:
    """Within the block, use (or, with ``enabled=False``, skip) the numba passes.

    Same pixels either way. Loading the compiled passes costs most of a second per process
    (numba's import and its dispatcher), which a job with few faced images never wins
    back: a stage that knows its size turns them off, and numba is then not even imported.
    """
    global _compiled
    before, _compiled = _compiled, enabled
    try:
        yield
    finally:
        _compiled = before


def available(blur: Blur) -> bool:
    """Whether the array path can run ``blur`` exactly (numba present, radius known)."""
    return _compiled and blur.radius is not None and _kernel() is not None


def _passes(block: np.ndarray, lo: int, start: int, stop: int, limit: int,
            blur: Blur) -> np.ndarray:
    """Blur ``block`` (lines ``[lo, lo + len)`` of an axis of length ``limit``, as a 2D
    C-order array) along axis 0; returns lines ``[start, stop)``, exact.

    Mirrors :meth:`Blur.along_rows`: each pass clamps at the ends of what it is given,
    which is the real border or at least the remaining passes' reach from
    ``[start, stop)``, and keeps only what the remaining passes read.
    """
    kernel = _kernel()
    if kernel is None or blur.radius is None:
        raise RuntimeError("the array stages need numba and a known box radius")
    radius, ww, fw = box_weights(blur.radius)
    for k in range(GAUSSIAN_PASSES - 1, -1, -1):
        out = np.empty_like(block)
        kernel(block, out, radius, ww, fw)
        keep_lo, keep_hi = max(start - k * blur.step, 0), min(stop + k * blur.step, limit)
        block = out[keep_lo - lo:keep_hi - lo]  # whole lines of a C array: still C order
        lo = keep_lo
    return block


def transposed_pixels(pixels: np.ndarray) -> np.ndarray:
    """``(h, w, 4)`` uint8 pixels as a new, writable ``(w, h, 4)`` array in C order: one
    32-bit transpose."""
    height, width = pixels.shape[:2]
    words = np.ascontiguousarray(pixels).view(np.uint32).reshape(height, width)
    return words.T.copy().view(np.uint8).reshape(width, height, 4)


def row_stage_array(columns_first: np.ndarray, origin: tuple[int, int],
                    pieces: Sequence[Rect], blur: Blur, width: int) -> None:
    """:func:`veil.obfuscation.separable.row_stage` on the transposed RGBA region
    ``columns_first`` (``(w, h, 4)``, its ``[0, 0]`` at image point ``origin``), in place.

    Only each piece's exact pixels are written back, so pieces cannot disturb what
    another reads (they are disjoint, and those sharing rows lie apart anyway).
    """
    ox, oy = origin
    reach = blur.reach
    for x0, y0, x1, y1 in pieces:
        lo, hi = max(x0 - reach, 0), min(x1 + reach, width)
        block = np.ascontiguousarray(columns_first[lo - ox:hi - ox, y0 - oy:y1 - oy])
        done = _passes(block.reshape(hi - lo, -1), lo, x0, x1, width, blur)
        columns_first[x0 - ox:x1 - ox, y0 - oy:y1 - oy] = done.reshape(x1 - x0, y1 - y0, 4)


def column_piece_array(rows: np.ndarray, origin: tuple[int, int], piece: Rect, blur: Blur,
                       height: int) -> np.ndarray:
    """The fully blurred RGBA pixels of ``piece`` (``(h, w, 4)`` uint8, C order) from the
    row-blurred ``rows`` (``(H, W, 4)`` at image point ``origin``, holding the piece
    grown by the reach vertically, clipped to the image of ``height`` rows)."""
    ox, oy = origin
    x0, y0, x1, y1 = piece
    lo, hi = max(y0 - blur.reach, 0), min(y1 + blur.reach, height)
    block = np.ascontiguousarray(rows[lo - oy:hi - oy, x0 - ox:x1 - ox])
    done = _passes(block.reshape(hi - lo, -1), lo, y0, y1, height, blur)
    return done.reshape(y1 - y0, x1 - x0, 4)
