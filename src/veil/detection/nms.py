"""Greedy non-maximum suppression and box overlap, vectorised in numpy.

Every detector, and later the ensemble and tiling merges, reduce overlapping
candidates with the same rule, so it lives here once. The rule is deface's
(and the classic one): walk the boxes by falling score, keep a box, and drop
every later box whose IoU with it is ``>= iou_threshold``. Coordinates are
``x0, y0, x1, y1`` with no "+1" pixel convention.
"""

from __future__ import annotations

import numpy as np

from veil.detection.compiled import LazyKernel

#: From this many candidates on, the loop may run compiled (numba; the same boxes kept):
#: a profile's view at candidate score 0.05 has hundreds. Fewer never count toward it.
COMPILED_FROM = 256

#: The compiled loop, taken once the numpy loop on >= COMPILED_FROM candidates has cost
#: what loading numba costs (:class:`veil.detection.compiled.LazyKernel`): plain
#: CenterFace at deface's threshold meets such a crowd in one WIDER photo of 97, where
#: loading numba (~1 s) cost a quarter of `veil detect`'s time on 194 photos.
COMPILED = LazyKernel("veil.detection._nms_kernel", "suppress", "NMS")


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (n x 4) with every box in ``b`` (m x 4), as n x m."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes greedy NMS keeps, highest score first.

    The loop runs once per *kept* box; the overlap with all remaining boxes is one
    numpy expression, so thousands of candidates cost milliseconds. Arithmetic
    stays in the boxes' dtype so float32 input reproduces deface's decisions.
    """
    boxes = np.asarray(boxes).reshape(-1, 4)
    scores = np.asarray(scores).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    # Same ordering expression as deface, so ties break the same way.
    order = np.argsort(scores)[::-1]
    crowd = len(boxes) >= COMPILED_FROM and boxes.dtype in (np.float32, np.float64)
    return COMPILED.run(
        crowd,
        lambda kernel: kernel(np.ascontiguousarray(boxes), np.ascontiguousarray(order),
                              np.array([iou_threshold], dtype=boxes.dtype)),
        lambda: _greedy(boxes, order, iou_threshold))


def _greedy(boxes: np.ndarray, order: np.ndarray, iou_threshold: float) -> np.ndarray:
    """The numpy loop: once per kept box, its overlap with every remaining box."""
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0) * (y1 - y0)
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        iw = np.maximum(0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]))
        ih = np.maximum(0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]))
        inter = iw * ih
        with np.errstate(divide="ignore", invalid="ignore"):
            overlap = inter / (areas[i] + areas[rest] - inter)
        # A NaN overlap (two empty boxes) compares False, so the box survives.
        order = rest[~(overlap >= iou_threshold)]
    return np.asarray(keep, dtype=np.intp)
