"""Greedy NMS's loop, compiled by numba.

Imported only through :mod:`veil.detection.nms` when there are enough candidates to pay
for it (the profiles' views report candidates from score 0.05: hundreds per view). The
arithmetic is :func:`veil.detection.nms.nms`'s, in the boxes' dtype and in the same
order, so both keep the same boxes; kept apart so numba's cache keys on this file alone.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, error_model="numpy")
def suppress(boxes: np.ndarray, order: np.ndarray, iou_threshold: np.ndarray
             ) -> np.ndarray:  # pragma: no cover - compiled
    """Indices greedy NMS keeps: ``boxes`` ``(n, 4)`` walked in ``order``; a later box
    goes when its IoU with a kept one is >= ``iou_threshold[0]`` (an array of the boxes'
    dtype, so the comparison happens in that dtype, as numpy's does)."""
    n = order.shape[0]
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x1 - x0) * (y1 - y0)
    zero = np.zeros(1, dtype=areas.dtype)  # a zero of the boxes' dtype
    threshold = iou_threshold[0]
    removed = np.zeros(n, dtype=np.bool_)
    keep = np.empty(n, dtype=np.intp)
    k = 0
    for a in range(n):
        if removed[a]:
            continue
        i = order[a]
        keep[k] = i
        k += 1
        for b in range(a + 1, n):
            if removed[b]:
                continue
            j = order[b]
            # numpy's ufuncs, as in nms(): NaN propagates like there
            iw = np.maximum(zero[0], np.minimum(x1[i], x1[j]) - np.maximum(x0[i], x0[j]))
            ih = np.maximum(zero[0], np.minimum(y1[i], y1[j]) - np.maximum(y0[i], y0[j]))
            inter = iw * ih
            overlap = inter / (areas[i] + areas[j] - inter)
            # A NaN overlap (two empty boxes) compares False, so the box survives.
            if overlap >= threshold:
                removed[b] = True
    return keep[:k]
