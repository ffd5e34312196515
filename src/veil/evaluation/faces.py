"""Face detection metrics, exactly as DESIGN.md defines them.

Inputs are plain mappings ``key -> list[Box]`` (ground truth and predictions) plus,
optionally, ``key -> list[bool]`` saying which ground-truth boxes are *invalid*
(WIDER FACE's ``invalid`` flag). Everything is measured at the stored resolution.

Definitions (the names DESIGN.md uses):

- **must-find face**: a valid ground-truth face at least ``min_height`` px tall.
  Every other ground-truth face is *ignored*: matching one is no false positive,
  missing one is no miss.
- **recall@IoU0.5**: must-find faces matched one-to-one at IoU >= ``iou``. Detections
  are taken by descending score (ties in their listed order); each takes the
  still-unmatched must-find face it overlaps most. A detection that finds none takes
  an ignored face it overlaps (and is then neither true nor false); otherwise it is a
  false positive, duplicates of an already matched face included. This is COCO's
  greedy rule, with WIDER FACE's treatment of ignored faces and duplicates.
- **coverage recall**: must-find faces with >= ``coverage`` of their area under the
  union of the detections (computed exactly by coordinate compression). It asks
  what obfuscation asks: is the face hidden, whatever the boxes' shapes?
- **region coverage recall** (with ``method``): the same, under the union of the
  pixels the obfuscation method changes for those detections
  (:func:`veil.obfuscation.affected_region`, the function the methods themselves are
  held to): the paper's blur enlarges every box by a tenth of its longer side and
  feathers it, so a box a little too small can still hide the face.
- **precision**: detections that overlap *any* ground-truth face (ignored ones too,
  duplicates too) at IoU >= ``iou``, over all detections.
- **AP**: the area under the precision/recall curve of the matching above, all-point
  interpolated (precision made monotone from the right). Points are taken only
  between distinct scores, so the order of tied scores cannot change AP.

Height bins (``< 16``, ``16-32``, ``32-64``, ``64+`` px) repeat the evaluation with
the valid faces of the bin as the targets, every other face ignored, and an unmatched
detection counted only in the bin of its own height (COCO's rule for area ranges).
The ``< 16`` bin's faces are not must-find at the default ``min_height``; it shows
how many of them are found anyway.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from veil.boxes import Box
from veil.detection.nms import pairwise_iou

#: Face-height bins: (name, lowest height, first height above the bin).
HEIGHT_BINS: tuple[tuple[str, float, float], ...] = (
    ("<16", 0.0, 16.0),
    ("16-32", 16.0, 32.0),
    ("32-64", 32.0, 64.0),
    ("64+", 64.0, math.inf),
)

TRUE, FALSE, IGNORED = 1, 0, -1


@dataclass(frozen=True)
class FaceMetrics:
    """Counts and rates for one scope (all faces, or one height bin)."""

    must_find: int  # target faces
    found: int  # targets matched one-to-one at IoU >= iou
    covered: int  # targets with >= coverage of their area under the union of detections
    detections: int  # detections counted for precision
    precise: int  # of those, the ones overlapping any ground-truth face at IoU >= iou
    ap: float  # NaN without targets
    region_covered: int | None = None  # targets >= coverage under the method's region

    @property
    def region_coverage_recall(self) -> float:
        """Share of targets under the obfuscation method's region (NaN without one)."""
        return math.nan if self.region_covered is None else _ratio(self.region_covered,
                                                                   self.must_find)

    @property
    def recall(self) -> float:
        return _ratio(self.found, self.must_find)

    @property
    def coverage_recall(self) -> float:
        return _ratio(self.covered, self.must_find)

    @property
    def precision(self) -> float:
        return _ratio(self.precise, self.detections)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = asdict(self)
        out.update(recall=self.recall, coverage_recall=self.coverage_recall,
                   precision=self.precision)
        if self.region_covered is None:
            del out["region_covered"]
        else:
            out["region_coverage_recall"] = self.region_coverage_recall
        return {k: _json_number(v) for k, v in out.items()}


@dataclass(frozen=True)
class UncoveredImage:
    """An image with must-find faces that the detections leave (partly) visible."""

    key: str
    must_find: int
    uncovered: tuple[Box, ...]  # the must-find faces under the coverage bar
    coverage: tuple[float, ...]  # the share of each one's area under detections

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key, "must_find": self.must_find,
            "uncovered": [
                {**box.to_dict(), "coverage": round(share, 4)}
                for box, share in zip(self.uncovered, self.coverage, strict=True)
            ],
        }


@dataclass(frozen=True)
class FaceEvaluation:
    """The whole evaluation: overall metrics, per-bin metrics, what was left uncovered."""

    overall: FaceMetrics
    bins: dict[str, FaceMetrics]
    uncovered: list[UncoveredImage]
    images: int  # ground-truth images evaluated
    faces: int  # ground-truth faces, ignored ones included
    missing_predictions: list[str] = field(default_factory=list)  # GT keys absent from PRED
    unknown_predictions: int = 0  # PRED keys absent from GT (not evaluated)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": {k: _json_number(v) for k, v in self.settings.items()},
            "images": self.images,
            "faces": self.faces,
            "overall": self.overall.to_dict(),
            "bins": {name: m.to_dict() for name, m in self.bins.items()},
            "images_with_uncovered_faces": len(self.uncovered),
            "uncovered": [u.to_dict() for u in self.uncovered],
            "missing_predictions": len(self.missing_predictions),
            "missing_prediction_examples": self.missing_predictions[:20],
            "unknown_predictions": self.unknown_predictions,
        }


def evaluate_faces(
    ground_truth: Mapping[str, Sequence[Box]],
    predictions: Mapping[str, Sequence[Box]],
    *,
    invalid: Mapping[str, Sequence[bool]] | None = None,
    iou: float = 0.5,
    min_height: float = 16.0,
    coverage: float = 0.7,
    min_score: float | None = None,
    method: str | None = None,
    method_options: Mapping[str, Any] | None = None,
    sizes: Mapping[str, tuple[int, int]] | None = None,
) -> FaceEvaluation:
    """Evaluate ``predictions`` against ``ground_truth`` (see the module docstring).

    Every ground-truth image is evaluated; one absent from ``predictions`` has no
    detections (all its must-find faces are misses). Prediction keys absent from the
    ground truth are counted in ``unknown_predictions`` and otherwise left out.
    Detections scoring below ``min_score`` are dropped first; a box without a score
    ranks above every scored box.

    ``method`` (an obfuscation method's name, with ``method_options``) adds region
    coverage: coverage under the pixels that method changes for the detections; it
    needs every image's ``(width, height)`` in ``sizes`` (the region is clipped to the
    image, and some methods scale with it). The list of uncovered faces then lists the
    faces the method leaves visible.
    """
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou must be in (0, 1], got {iou}")
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    region = None
    if method is not None:
        region = _region_function(method, dict(method_options or {}))
        unsized = [key for key in ground_truth if sizes is None or key not in sizes]
        if unsized:
            raise ValueError(
                f"coverage under method {method!r} needs the size of every image; "
                f"{len(unsized)} unknown, e.g. {unsized[0]}"
            )
    images = [
        _ImageData.build(key, ground_truth[key], predictions.get(key, ()),
                         None if invalid is None else invalid.get(key), iou, min_score,
                         None if region is None or sizes is None
                         else functools.partial(region, sizes[key]))
        for key in ground_truth
    ]
    overall = _evaluate_scope(images, iou, coverage, min_height, 0.0, math.inf, overall=True)
    bins = {
        name: _evaluate_scope(images, iou, coverage, 0.0, low, high, overall=False)
        for name, low, high in HEIGHT_BINS
    }
    return FaceEvaluation(
        overall=overall,
        bins=bins,
        uncovered=_uncovered(images, min_height, coverage),
        images=len(images),
        faces=sum(len(image.gt) for image in images),
        missing_predictions=sorted(key for key in ground_truth if key not in predictions),
        unknown_predictions=sum(key not in ground_truth for key in predictions),
        settings={"iou": iou, "min_height": min_height, "coverage": coverage,
                  "min_score": min_score, "method": method,
                  "method_options": dict(method_options or {}) or None},
    )


def _region_function(method: str, options: dict[str, Any]) -> Callable[..., Any]:
    """``(size, boxes) -> rectangles`` the method changes; checked once, up front."""
    from veil.errors import VeilError
    from veil.obfuscation import affected_region

    try:
        affected_region((1, 1), [], method, **options)
    except VeilError as exc:
        raise ValueError(str(exc)) from None
    return functools.partial(_affected, method=method, options=options)


def _affected(size: tuple[int, int], boxes: Sequence[Box], *, method: str,
              options: dict[str, Any]) -> np.ndarray:
    from veil.obfuscation import affected_region

    return np.asarray(affected_region(size, boxes, method, **options),
                      dtype=np.float64).reshape(-1, 4)


@dataclass(frozen=True)
class OperatingCurve:
    """Recall and precision at every score threshold, from one matching of all detections.

    Greedy matching takes detections by falling score, so the detections kept by a
    threshold are matched exactly as if the others did not exist: one pass over all
    detections gives the metrics at every threshold (what tuning a threshold needs,
    hundreds of times, without re-evaluating).
    """

    scores: np.ndarray  # every detection's score, highest first
    true: np.ndarray  # (bool) matched a must-find face one-to-one
    precise: np.ndarray  # (bool) overlaps some ground-truth face at IoU >= iou
    must_find: int

    def at(self, threshold: float) -> tuple[float, float]:
        """``(recall, precision)`` of the detections scoring >= ``threshold``."""
        kept = int(np.searchsorted(-self.scores, -threshold, side="right"))
        found, precise = int(self.true[:kept].sum()), int(self.precise[:kept].sum())
        return _ratio(found, self.must_find), _ratio(precise, kept)

    def best_recall(self, min_precision: float) -> tuple[float, float, float]:
        """The highest recall whose precision is >= ``min_precision``: ``(recall,
        precision, threshold)``, the threshold being the lowest score kept (NaNs when no
        threshold reaches that precision)."""
        if len(self.scores) == 0 or self.must_find == 0:
            return math.nan, math.nan, math.nan
        last = np.append(self.scores[1:] != self.scores[:-1], True)  # whole ties only
        found = np.cumsum(self.true)[last]
        precise = np.cumsum(self.precise)[last]
        kept = np.flatnonzero(last) + 1
        ok = precise >= min_precision * kept - 1e-9
        if not ok.any():
            return math.nan, math.nan, math.nan
        i = int(np.flatnonzero(ok)[np.argmax(found[ok])])
        return (float(found[i] / self.must_find), float(precise[i] / kept[i]),
                float(self.scores[kept[i] - 1]))


def operating_curve(
    ground_truth: Mapping[str, Sequence[Box]],
    predictions: Mapping[str, Sequence[Box] | np.ndarray],
    *,
    invalid: Mapping[str, Sequence[bool]] | None = None,
    iou: float = 0.5,
    min_height: float = 16.0,
) -> OperatingCurve:
    """The :class:`OperatingCurve` of ``predictions`` (boxes, or ``(n, 5)`` arrays with
    the score last) over every ground-truth image, by :func:`evaluate_faces`' rules."""
    scores, true, precise = [], [], []
    must_find = 0
    for key in ground_truth:
        image = _ImageData.build(key, ground_truth[key], predictions.get(key, ()),
                                 None if invalid is None else invalid.get(key), iou, None,
                                 coverage=False)
        targets = image.gt_valid & (image.gt_height >= min_height)
        label, _ = _greedy_match(image.iou, image.overlaps, targets, iou)
        must_find += int(targets.sum())
        scores.append(image.det_score)
        true.append(label == TRUE)
        precise.append(image.overlaps.any(axis=1))
    all_scores = np.concatenate(scores) if scores else np.empty(0)
    order = np.argsort(-all_scores, kind="stable")
    return OperatingCurve(
        all_scores[order],
        (np.concatenate(true) if true else np.empty(0, bool))[order],
        (np.concatenate(precise) if precise else np.empty(0, bool))[order],
        must_find,
    )


def invalid_flags(
    extras: Mapping[str, Sequence[Mapping[str, Any]]],
) -> dict[str, list[bool]] | None:
    """WIDER FACE's per-box ``invalid`` flags from per-box extra fields, or None.

    ``extras`` is ``key -> [fields of box i]`` (``FacesFile.box_extras``). A box is
    invalid when it carries a non-zero ``invalid``; None when no box has the flag.
    """
    if not any("invalid" in fields for boxes in extras.values() for fields in boxes):
        return None
    return {
        key: [bool(fields.get("invalid", 0)) for fields in boxes] for key, boxes in extras.items()
    }


def covered_fraction(face: Box | Sequence[float], detections: Sequence[Box] | np.ndarray) -> float:
    """The share of ``face``'s area under the union of ``detections``, exactly."""
    target = np.asarray(face.as_xyxy() if isinstance(face, Box) else face, dtype=np.float64)
    return float(_covered_fractions(target[None, :], _as_array(detections))[0])


def union_area(rects: np.ndarray) -> float:
    """Area of the union of axis-aligned rectangles ``(n, 4)`` by coordinate compression.

    The distinct x and y edges cut the plane into cells that each rectangle either
    fills or misses, so marking the cells each one fills and summing their areas is
    exact (no sampling); the cost is one slice assignment per rectangle.
    """
    rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
    rects = rects[(rects[:, 2] > rects[:, 0]) & (rects[:, 3] > rects[:, 1])]
    if len(rects) == 0:
        return 0.0
    xs = np.unique(rects[:, 0::2])
    ys = np.unique(rects[:, 1::2])
    ix = np.searchsorted(xs, rects[:, 0::2])
    iy = np.searchsorted(ys, rects[:, 1::2])
    filled = np.zeros((len(xs) - 1, len(ys) - 1), dtype=bool)
    for (x0, x1), (y0, y1) in zip(ix, iy, strict=True):
        filled[x0:x1, y0:y1] = True
    return float(np.diff(xs) @ filled @ np.diff(ys))


# --------------------------------------------------------------------------- internals


@dataclass
class _ImageData:
    """One image's arrays, computed once and shared by every scope."""

    key: str
    gt: np.ndarray  # (m, 4)
    gt_boxes: list[Box]
    gt_height: np.ndarray  # (m,)
    gt_valid: np.ndarray  # (m,) bool
    det: np.ndarray  # (n, 4), in matching order (descending score, ties as listed)
    det_score: np.ndarray  # (n,)
    det_height: np.ndarray  # (n,)
    overlaps: np.ndarray  # (n, m) bool: IoU >= iou
    iou: np.ndarray  # (n, m)
    coverage: np.ndarray  # (m,) share of each face under the union of detections
    region_coverage: np.ndarray | None  # (m,) ... under the method's region, if asked

    @classmethod
    def build(
        cls,
        key: str,
        gt_boxes: Sequence[Box],
        det_boxes: Sequence[Box] | np.ndarray,
        invalid: Sequence[bool] | None,
        iou: float,
        min_score: float | None,
        region: Callable[[Sequence[Box]], np.ndarray] | None = None,
        *,
        coverage: bool = True,
    ) -> _ImageData:
        """``det_boxes`` are Boxes or an ``(n, 5)`` array (score last); ``coverage=False``
        skips the coverage shares (left at 0), which only matching does not need."""
        gt_boxes = list(gt_boxes)
        if invalid is not None and len(invalid) != len(gt_boxes):
            raise ValueError(
                f"{key}: {len(invalid)} invalid flags for {len(gt_boxes)} ground-truth boxes"
            )
        gt = _as_array(gt_boxes)
        if isinstance(det_boxes, np.ndarray):
            rows = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 5)
            det, scores = rows[:, :4], rows[:, 4].copy()
        else:
            scores = np.array([math.inf if b.score is None else float(b.score)
                               for b in det_boxes], dtype=np.float64)
            det = _as_array(det_boxes)
        keep = np.ones(len(det), dtype=bool) if min_score is None else scores >= min_score
        keep &= np.isfinite(det).all(axis=1) & (det[:, 2] > det[:, 0]) & (det[:, 3] > det[:, 1])
        region_coverage = None
        if region is not None:
            kept = ([Box(*map(float, d), score=float(c)) for d, c in zip(det[keep], scores[keep],
                                                                         strict=True)]
                    if isinstance(det_boxes, np.ndarray)
                    else [box for box, k in zip(det_boxes, keep, strict=True) if k])
            region_coverage = _covered_fractions(gt, region(kept))
        det, scores = det[keep], scores[keep]
        order = np.argsort(-scores, kind="stable")
        det, scores = det[order], scores[order]
        ious = pairwise_iou(det, gt)
        valid = np.ones(len(gt), dtype=bool)
        if invalid is not None:
            valid = ~np.asarray(invalid, dtype=bool).reshape(-1)
        return cls(
            key=key, gt=gt, gt_boxes=gt_boxes, gt_height=gt[:, 3] - gt[:, 1], gt_valid=valid,
            det=det, det_score=scores, det_height=det[:, 3] - det[:, 1],
            overlaps=ious >= iou, iou=ious,
            coverage=_covered_fractions(gt, det) if coverage else np.zeros(len(gt)),
            region_coverage=region_coverage,
        )


def _evaluate_scope(
    images: Sequence[_ImageData],
    iou: float,
    coverage: float,
    min_height: float,
    low: float,
    high: float,
    *,
    overall: bool,
) -> FaceMetrics:
    """Metrics with targets = valid faces of height in [max(low, min_height), high).

    ``overall``: every face and detection is in scope for precision. Otherwise (a bin)
    faces outside [low, high) are out of scope: a detection matching only those is
    left out, an unmatched detection counts only if its own height is in the bin.
    """
    must_find = found = covered = counted = precise = 0
    region_covered: int | None = None
    labels: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for image in images:
        in_bin = (image.gt_height >= low) & (image.gt_height < high)
        targets = image.gt_valid & in_bin & (image.gt_height >= min_height)
        label, matched = _greedy_match(image.iou, image.overlaps, targets, iou)
        must_find += int(targets.sum())
        found += int(matched.sum())
        covered += int((image.coverage[targets] >= coverage).sum())
        if image.region_coverage is not None:
            region_covered = (region_covered or 0) + int(
                (image.region_coverage[targets] >= coverage).sum())
        if overall:
            det_in_scope = np.ones(len(image.det), dtype=bool)
            hits = image.overlaps.any(axis=1)
        else:
            det_height_in_bin = (image.det_height >= low) & (image.det_height < high)
            hits = image.overlaps[:, in_bin].any(axis=1)
            misses_all = ~image.overlaps.any(axis=1)
            det_in_scope = hits | (misses_all & det_height_in_bin)
            # An unmatched detection of another bin's size is that bin's false positive.
            label = np.where((label == FALSE) & misses_all & ~det_height_in_bin, IGNORED, label)
        counted += int(det_in_scope.sum())
        precise += int((hits & det_in_scope).sum())
        labels.append(label)
        scores.append(image.det_score)
    ap = average_precision(np.concatenate(scores) if scores else np.empty(0),
                           np.concatenate(labels) if labels else np.empty(0, int), must_find)
    return FaceMetrics(must_find, found, covered, counted, precise, ap, region_covered)


def _greedy_match(
    ious: np.ndarray, overlaps: np.ndarray, targets: np.ndarray, iou: float
) -> tuple[np.ndarray, np.ndarray]:
    """Label each detection (already in score order) TRUE, FALSE or IGNORED.

    Returns the labels and which ground-truth faces were matched. Only detections that
    overlap a target need the sequential loop; the rest are decided in one expression.
    """
    n = ious.shape[0]
    overlaps_target = overlaps[:, targets].any(axis=1) if n else np.zeros(0, dtype=bool)
    overlaps_ignored = overlaps[:, ~targets].any(axis=1) if n else np.zeros(0, dtype=bool)
    label = np.where(overlaps_ignored & ~overlaps_target, IGNORED, FALSE)
    matched = np.zeros(len(targets), dtype=bool)
    for d in np.flatnonzero(overlaps_target):
        free = targets & ~matched & (ious[d] >= iou)
        if free.any():
            best = int(np.argmax(np.where(free, ious[d], -1.0)))
            matched[best] = True
            label[d] = TRUE
        elif overlaps_ignored[d]:
            label[d] = IGNORED
        # else: a duplicate of an already matched face, a false positive
    return label, matched


def average_precision(scores: np.ndarray, labels: np.ndarray, positives: int) -> float:
    """All-point interpolated AP of detections labelled TRUE / FALSE / IGNORED.

    The curve has one point per distinct score (all detections at or above it), so
    tied scores count together; precision is made non-increasing in recall before the
    area is summed. NaN when there are no positives.
    """
    if positives <= 0:
        return math.nan
    keep = labels != IGNORED
    scores, labels = np.asarray(scores)[keep], np.asarray(labels)[keep]
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], labels[order] == TRUE
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    last_of_score = np.append(scores[1:] != scores[:-1], True)
    tp, fp = tp[last_of_score], fp[last_of_score]
    recall = np.concatenate([[0.0], tp / positives])
    precision = np.concatenate([[1.0], tp / (tp + fp)])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall) * precision[1:]))


def _covered_fractions(faces: np.ndarray, detections: np.ndarray) -> np.ndarray:
    """For each face ``(m, 4)``, the share of its area under the union of detections."""
    out = np.zeros(len(faces), dtype=np.float64)
    if len(faces) == 0 or len(detections) == 0:
        return out
    lo = np.maximum(faces[:, None, :2], detections[None, :, :2])
    hi = np.minimum(faces[:, None, 2:], detections[None, :, 2:])
    touching = (hi > lo).all(axis=2)  # (m, n): the detection covers part of the face
    areas = (faces[:, 2] - faces[:, 0]) * (faces[:, 3] - faces[:, 1])
    for i in np.flatnonzero(touching.any(axis=1) & (areas > 0)):
        clipped = np.concatenate([lo[i, touching[i]], hi[i, touching[i]]], axis=1)
        out[i] = union_area(clipped) / areas[i]
    return out


def _uncovered(
    images: Sequence[_ImageData], min_height: float, coverage: float
) -> list[UncoveredImage]:
    """Images with must-find faces under the coverage bar, most uncovered faces first."""
    out = []
    for image in images:
        targets = image.gt_valid & (image.gt_height >= min_height)
        shares = image.coverage if image.region_coverage is None else image.region_coverage
        short = np.flatnonzero(targets & (shares < coverage))
        if len(short):
            out.append(UncoveredImage(
                image.key, int(targets.sum()),
                tuple(image.gt_boxes[i] for i in short),
                tuple(float(shares[i]) for i in short),
            ))
    out.sort(key=lambda u: (-len(u.uncovered), u.key))
    return out


def _as_array(boxes: Sequence[Box] | np.ndarray) -> np.ndarray:
    if isinstance(boxes, np.ndarray):
        return boxes.astype(np.float64).reshape(-1, 4)
    return np.array([b.as_xyxy() for b in boxes], dtype=np.float64).reshape(-1, 4)


def _ratio(a: int, b: int) -> float:
    return a / b if b else math.nan


def _json_number(value: Any) -> Any:
    """NaN (an undefined rate) becomes None, so the JSON output stays standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
