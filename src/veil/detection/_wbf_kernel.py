"""The weighted-box-fusion clustering loop, compiled by numba.

Imported only through :mod:`veil.detection.fusion` when a fusion has enough boxes to pay
for it (importing numba costs a few hundred ms). The loop is the same arithmetic, in the
same order, as fusion's numpy path, so both give the same clusters; kept apart so
numba's cache keys on this small file alone.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def cluster(boxes: np.ndarray, n_views: int, iou_threshold: float
            ) -> tuple[np.ndarray, np.ndarray, int]:  # pragma: no cover - compiled
    """Clusters of ``boxes`` ``(n, 6)`` (x0, y0, x1, y1, score, view; by falling score).

    Returns the fused boxes ``(n, 4)``, each view's best score per cluster ``(n, V)``
    and the number of clusters ``k`` (rows past ``k`` are unused).
    """
    n = boxes.shape[0]
    sums = np.zeros((n, 4))
    mass = np.zeros(n)
    fused = np.zeros((n, 4))
    best = np.zeros((n, n_views))
    k = 0
    for i in range(n):
        x0, y0, x1, y1 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        box_score = boxes[i, 4]
        target = -1
        top = -1.0
        area = (x1 - x0) * (y1 - y0)
        for j in range(k):
            iw = min(fused[j, 2], x1) - max(fused[j, 0], x0)
            ih = min(fused[j, 3], y1) - max(fused[j, 1], y0)
            inter = max(iw, 0.0) * max(ih, 0.0)
            union = (fused[j, 2] - fused[j, 0]) * (fused[j, 3] - fused[j, 1]) + area - inter
            iou = inter / union if union > 0 else 0.0
            if iou > top:
                top = iou
                target = j
        if target < 0 or top < iou_threshold:
            target = k
            k += 1
        weight = max(box_score, 1e-12)
        sums[target, 0] += weight * x0
        sums[target, 1] += weight * y0
        sums[target, 2] += weight * x1
        sums[target, 3] += weight * y1
        mass[target] += weight
        for c in range(4):
            fused[target, c] = sums[target, c] / mass[target]
        v = int(boxes[i, 5])
        best[target, v] = max(best[target, v], box_score)
    return fused, best, k
