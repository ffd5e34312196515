"""Pillow's box-blur pass, run down axis 0 of an array, compiled by numba.

Imported only through :mod:`.array_stages` (importing numba costs a few hundred ms, and
the first call compiles, or loads the machine code numba cached). Kept apart so that
numba's cache keys on this small file alone.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_HALF = 1 << 23


@njit(cache=True, nogil=True)
def vertical_box_pass(src: np.ndarray, dst: np.ndarray, radius: int, ww: int,
                      fw: int) -> None:  # pragma: no cover - compiled
    """One pass of ``ImagingLineBoxBlur`` along axis 0 of ``src`` (rows x bytes, uint8).

    Output row y is ``(S * ww + E * fw + 2^23) >> 24`` with S the sum of rows
    ``y - radius .. y + radius`` and E that of rows ``y - radius - 1`` and
    ``y + radius + 1``, indices clamped to the array: Pillow's integer arithmetic
    exactly (its sums fit in 32 bits; 64 here). The inner loop runs along a row, so it
    vectorises, and no transpose is needed.
    """
    height, length = src.shape
    last = height - 1
    acc = np.empty(length, np.int64)
    for j in range(length):
        acc[j] = np.int64(src[0, j]) * (radius + 1)
    for y in range(radius):
        row = min(y, last)
        for j in range(length):
            acc[j] += np.int64(src[row, j])
    for y in range(height):
        add = min(y + radius, last)
        drop = max(y - radius - 1, 0)
        far = min(y + radius + 1, last)
        for j in range(length):
            acc[j] += np.int64(src[add, j]) - np.int64(src[drop, j])
            edge = np.int64(src[drop, j]) + np.int64(src[far, j])
            dst[y, j] = (acc[j] * ww + edge * fw + _HALF) >> 24
