"""Merge the boxes that several views or detectors found into one box per face.

Input everywhere is one ``(n, 5)`` array per *view* (a scale, a flip, a detector):
``x0, y0, x1, y1, score`` in the same image's pixels. Two merges:

- :func:`weighted_box_fusion` (WBF, Solovyev et al. 2021): boxes are taken by falling
  score and each joins the cluster whose fused box it overlaps most (IoU >=
  ``iou_threshold``), else starts one. A cluster's box is the score-weighted mean of
  its members, so views that disagree by a few pixels average out instead of one
  arbitrary view winning. Its score is the *mean over views* of each view's best
  score in the cluster (0 for a view that missed it): a face that every view sees
  keeps its score, a blip that one view of ten reports drops to a tenth. With
  ``score="rms"`` it is the root mean square over views instead: a face that k of n
  views see at score s gets s * sqrt(k / n) rather than s * k / n, a softer vote for
  faces that only some views can see (small faces, visible only when upsampled),
  while a weak blip in one view stays weak. With ``score="max"`` it is the best
  view's score: a union, where a face any view found keeps its score (what an
  ensemble of different detectors wants).
- :func:`nms_merge`: plain greedy NMS over all views' boxes, keeping the best box.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from veil.detection.compiled import LazyKernel
from veil.detection.nms import nms

FUSIONS = ("wbf", "nms")
#: How a WBF cluster's score comes from its views' best scores.
SCORES = ("mean", "rms", "max")
#: From this many boxes on, WBF's clustering loop may run compiled (numba): ~50x faster,
#: the same clusters; fewer boxes (one view, a handful of faces) never pay numba's import.
COMPILED_FROM = 256
#: The compiled loop, taken once the numpy loop on >= COMPILED_FROM boxes has cost what
#: loading numba costs, or at once where NMS has loaded numba already
#: (:class:`veil.detection.compiled.LazyKernel`).
COMPILED = LazyKernel("veil.detection._wbf_kernel", "cluster", "box fusion")


def _stack(views: Sequence[np.ndarray], skip_below: float) -> np.ndarray:
    """All views' boxes as ``(n, 6)``: coordinates, score, view index; by falling score."""
    parts = []
    for index, view in enumerate(views):
        boxes = np.asarray(view, dtype=np.float64).reshape(-1, 5)
        boxes = boxes[boxes[:, 4] >= skip_below]
        parts.append(np.hstack([boxes, np.full((len(boxes), 1), index, dtype=np.float64)]))
    stacked = np.vstack(parts) if parts else np.empty((0, 6))
    return stacked[np.argsort(-stacked[:, 4], kind="stable")]


def weighted_box_fusion(
    views: Sequence[np.ndarray],
    iou_threshold: float = 0.55,
    *,
    skip_below: float = 0.0,
    weights: Sequence[float] | None = None,
    score: str = "mean",
) -> np.ndarray:
    """One fused ``(k, 5)`` box per cluster of overlapping boxes, best first.

    ``weights`` (one per view, default all 1) scale each view's scores before
    fusion and its vote in the mean; ``skip_below`` drops boxes scoring less first.
    ``score`` is 'mean' or 'rms' (over views, missing views count 0) or 'max'.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    boxes, votes = fuse_votes(views, iou_threshold, skip_below=skip_below, weights=weights)
    if len(boxes) == 0:
        return np.empty((0, 5))
    out = np.hstack([boxes, score_votes(votes, score, weights)[:, None]])
    return out[np.argsort(-out[:, 4], kind="stable")]


def score_votes(votes: np.ndarray, score: str = "mean",
                weights: Sequence[float] | None = None) -> np.ndarray:
    """Each cluster's score from its views' (weighted) best scores ``(k, n_views)``
    (:func:`fuse_votes`): 'mean', 'rms' or 'max' (see :func:`weighted_box_fusion`)."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    w = _weights(weights, votes.shape[1])
    if score == "mean":
        return np.asarray(votes.sum(axis=1) / w.sum())
    if score == "rms":
        # votes hold w * s: the weighted mean of s^2 is sum((w s)^2 / w) / sum(w).
        squares = np.divide(votes ** 2, w, out=np.zeros_like(votes), where=w > 0)
        return np.asarray(np.sqrt(squares.sum(axis=1) / w.sum()))
    return np.asarray(votes.max(axis=1))


def fuse_votes(
    views: Sequence[np.ndarray],
    iou_threshold: float = 0.55,
    *,
    skip_below: float = 0.0,
    weights: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """WBF's clusters before they are scored: fused boxes ``(k, 4)`` and each view's best
    (weighted) score in each cluster ``(k, n_views)``, 0 where a view missed it.

    :func:`weighted_box_fusion` reduces the votes to one score (mean, rms, max); a
    learned rescoring (:mod:`veil.detection.rescore`) reads more from them: how many
    views saw the face, and at which scale the best one did.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    n_views = len(views)
    if n_views == 0:
        return np.empty((0, 4)), np.empty((0, 0))
    w = _weights(weights, n_views)
    weighted = [np.asarray(v, dtype=np.float64).reshape(-1, 5) * [1, 1, 1, 1, wi]
                for v, wi in zip(views, w, strict=True)]
    boxes = _stack(weighted, skip_below)
    if len(boxes) == 0:
        return np.empty((0, 4)), np.empty((0, n_views))
    fused, best, k = COMPILED.run(
        len(boxes) >= COMPILED_FROM,
        lambda kernel: kernel(np.ascontiguousarray(boxes), n_views, float(iou_threshold)),
        lambda: _cluster(boxes, n_views, iou_threshold))
    return fused[:k], best[:k]


def _weights(weights: Sequence[float] | None, n_views: int) -> np.ndarray:
    w = np.ones(n_views) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n_views,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"need one non-negative weight per view ({n_views}), got {weights}")
    return w


def _cluster(boxes: np.ndarray, n_views: int, iou_threshold: float
             ) -> tuple[np.ndarray, np.ndarray, int]:
    """WBF's clustering loop in numpy (see :mod:`veil.detection._wbf_kernel`, the same
    loop compiled): fused boxes, each view's best score per cluster, cluster count."""
    capacity = len(boxes)
    sums = np.zeros((capacity, 4))  # score-weighted coordinate sums of each cluster
    mass = np.zeros(capacity)  # summed scores of each cluster
    fused = np.zeros((capacity, 4))  # current fused boxes
    best = np.zeros((capacity, n_views))  # each view's best score in each cluster
    k = 0
    for x0, y0, x1, y1, box_score, view in boxes:
        target = -1
        if k:
            f = fused[:k]
            iw = np.minimum(f[:, 2], x1) - np.maximum(f[:, 0], x0)
            ih = np.minimum(f[:, 3], y1) - np.maximum(f[:, 1], y0)
            inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
            union = (f[:, 2] - f[:, 0]) * (f[:, 3] - f[:, 1]) + (x1 - x0) * (y1 - y0) - inter
            with np.errstate(divide="ignore", invalid="ignore"):
                iou = np.where(union > 0, inter / union, 0.0)
            j = int(np.argmax(iou))
            if iou[j] >= iou_threshold:
                target = j
        if target < 0:
            target, k = k, k + 1
        weight = max(box_score, 1e-12)  # a zero-score box still moves its own cluster
        sums[target] += weight * np.array([x0, y0, x1, y1])
        mass[target] += weight
        fused[target] = sums[target] / mass[target]
        v = int(view)
        best[target, v] = max(best[target, v], box_score)
    return fused, best, k


def nms_merge(
    views: Sequence[np.ndarray],
    iou_threshold: float = 0.3,
    *,
    skip_below: float = 0.0,
) -> np.ndarray:
    """Greedy NMS over every view's boxes: the best-scoring box of each cluster survives."""
    boxes = _stack(views, skip_below)
    keep = nms(boxes[:, :4], boxes[:, 4], iou_threshold)
    return boxes[keep, :5]


def fuse(
    views: Sequence[np.ndarray],
    method: str = "wbf",
    iou_threshold: float = 0.55,
    *,
    skip_below: float = 0.0,
    weights: Sequence[float] | None = None,
    score: str = "mean",
) -> np.ndarray:
    """Dispatch to :func:`weighted_box_fusion` or :func:`nms_merge` by name."""
    if method == "wbf":
        return weighted_box_fusion(views, iou_threshold, skip_below=skip_below, weights=weights,
                                   score=score)
    if method == "nms":
        return nms_merge(views, iou_threshold, skip_below=skip_below)
    raise ValueError(f"unknown fusion {method!r}; use one of {', '.join(FUSIONS)}")
