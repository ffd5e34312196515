"""The downstream metrics: top-1, CelebA's mean attribute accuracy and per-attribute AP,
and PASCAL VOC's mAP at IoU 0.5.

VOC mAP follows the official devkit: per class, detections of all test images sorted by
score; each is matched to the unmatched ground-truth box of its image with the highest
IoU if that IoU is >= 0.5 (a true positive), a box marked ``difficult`` makes it neither
true nor false, anything else is a false positive; recall counts only non-difficult
boxes. AP is the 11-point interpolated precision (VOC2007) or the area under the
monotone precision envelope (VOC2010 and later). Matching happens inside one image, so
it is done once (:func:`match_detections`); AP then takes per-image *weights*, which is
how a bootstrap over test images recomputes mAP without matching again (an image drawn
twice counts twice).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

IOU_THRESHOLD = 0.5


# --------------------------------------------------------------------------- classification


def top1(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(np.mean(scores.argmax(1) == labels)) if len(labels) else float("nan")


def attribute_correct(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(images, attributes) bool: the attribute is predicted right (probability >= 0.5)."""
    return (probs >= 0.5) == labels.astype(bool)


def attribute_ap(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision of each attribute column (NaN where it has no positive)."""
    from sklearn.metrics import average_precision_score

    out = np.full(labels.shape[1], np.nan)
    for a in range(labels.shape[1]):
        if labels[:, a].any():
            out[a] = average_precision_score(labels[:, a], scores[:, a])
    return out


# --------------------------------------------------------------------------- detection


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (n, 4) with every box in ``b`` (m, 4), x0 y0 x1 y1."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


@dataclass
class ImageDetections:
    """One test image: what the detector said and what is there (labels 0-based)."""

    boxes: np.ndarray  # (d, 4) float
    scores: np.ndarray  # (d,)
    labels: np.ndarray  # (d,) int
    gt_boxes: np.ndarray  # (g, 4)
    gt_labels: np.ndarray  # (g,)
    gt_difficult: np.ndarray  # (g,) bool


@dataclass
class Matched:
    """Every scored detection of a test set, matched once, ready for (weighted) AP."""

    num_classes: int
    label: np.ndarray  # (D,) class of each kept detection
    score: np.ndarray  # (D,)
    tp: np.ndarray  # (D,) bool; detections that hit a difficult box are dropped
    image: np.ndarray  # (D,) index of its image
    positives: np.ndarray  # (images, classes) non-difficult ground-truth boxes


def match_image(det: ImageDetections, cls: int, iou_threshold: float = IOU_THRESHOLD
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, tp, keep) of one image's class-``cls`` detections, in descending score
    order; ``keep`` is False for detections matched to a difficult box (ignored)."""
    mine = np.flatnonzero(det.labels == cls)
    order = mine[np.argsort(-det.scores[mine], kind="stable")]
    gt = np.flatnonzero(det.gt_labels == cls)
    overlaps = box_iou(det.boxes[order].reshape(-1, 4), det.gt_boxes[gt].reshape(-1, 4))
    used = np.zeros(len(gt), bool)
    tp = np.zeros(len(order), bool)
    keep = np.ones(len(order), bool)
    for i in range(len(order)):
        if not len(gt):
            break
        j = int(np.argmax(overlaps[i]))
        if overlaps[i, j] >= iou_threshold:
            if det.gt_difficult[gt[j]]:
                keep[i] = False
            elif not used[j]:
                tp[i] = used[j] = True
    return det.scores[order], tp, keep


def match_detections(images: Sequence[ImageDetections], num_classes: int,
                     iou_threshold: float = IOU_THRESHOLD) -> Matched:
    labels, scores, tps, owners = [], [], [], []
    positives = np.zeros((len(images), num_classes), np.int64)
    for index, det in enumerate(images):
        easy = ~det.gt_difficult.astype(bool)
        positives[index] = np.bincount(det.gt_labels[easy].astype(np.int64),
                                       minlength=num_classes)[:num_classes]
        for cls in np.unique(det.labels).tolist():
            s, tp, keep = match_image(det, int(cls), iou_threshold)
            labels.append(np.full(int(keep.sum()), cls, np.int64))
            scores.append(s[keep])
            tps.append(tp[keep])
            owners.append(np.full(int(keep.sum()), index, np.int64))

    def join(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    return Matched(num_classes, join(labels, np.int64), join(scores, np.float64),
                   join(tps, bool), join(owners, np.int64), positives)


def ap_from_curve(recall: np.ndarray, precision: np.ndarray, method: str) -> np.ndarray:
    """AP of each row of (curves, points) recall/precision arrays (ascending recall)."""
    recall = np.atleast_2d(recall)
    precision = np.atleast_2d(precision)
    if method == "11point":
        out = np.zeros(len(recall))
        for t in np.linspace(0, 1, 11):
            reached = np.where(recall >= t, precision, 0.0)
            out += (reached.max(axis=1) if reached.shape[1] else 0.0) / 11
        return out
    if method != "area":
        raise ValueError(f"AP method must be 11point or area, not {method!r}")
    zeros = np.zeros((len(recall), 1))
    r = np.hstack([zeros, recall, zeros + 1])
    p = np.hstack([zeros, precision, zeros])
    envelope = np.maximum.accumulate(p[:, ::-1], axis=1)[:, ::-1]
    return np.sum((r[:, 1:] - r[:, :-1]) * envelope[:, 1:], axis=1)


def class_ap(matched: Matched, method: str, weights: np.ndarray | None = None) -> np.ndarray:
    """AP per class; ``weights`` (resamples, images) gives one row per resample.
    NaN for a class without positives."""
    w = np.ones((1, matched.positives.shape[0])) if weights is None else np.atleast_2d(weights)
    out = np.full((len(w), matched.num_classes), np.nan)
    npos = w @ matched.positives  # (resamples, classes)
    for cls in range(matched.num_classes):
        mine = np.flatnonzero(matched.label == cls)
        order = mine[np.argsort(-matched.score[mine], kind="stable")]
        hit = matched.tp[order]
        per = w[:, matched.image[order]]  # (resamples, detections)
        ctp = np.cumsum(per * hit, axis=1)
        cfp = np.cumsum(per * ~hit, axis=1)
        rows = npos[:, cls] > 0
        if not len(order):
            out[rows, cls] = 0.0
            continue
        # An image left out of a resample (weight 0) repeats the previous point of the
        # curve, which changes neither the envelope nor the 11-point maxima.
        recall = ctp[rows] / npos[rows, cls][:, None]
        precision = ctp[rows] / np.maximum(ctp[rows] + cfp[rows], np.finfo(float).eps)
        out[rows, cls] = ap_from_curve(recall, precision, method)
    return out if weights is not None else out[0]


def mean_ap(matched: Matched, method: str, weights: np.ndarray | None = None
            ) -> np.ndarray | float:
    """mAP over the classes with positives (one per resample when ``weights``)."""
    per = class_ap(matched, method, weights)
    if weights is None:
        return float(np.nanmean(per)) if np.isfinite(per).any() else float("nan")
    with np.errstate(all="ignore"):
        return np.nanmean(per, axis=1)
