"""Test-time augmentation around any detector: an image pyramid, flips, tiles, one merge.

A face the network misses at one resolution or orientation is often found at another
(on the 97 WIDER validation images, CenterFace's boxes from scales 1 and 2 with their
mirror images together reach 95% of the must-find faces at a low threshold, one view
alone 82%). :class:`MultiScaleDetector` runs its *base* detector on

- each scale of ``scales`` (> 1 upsamples: small images and small faces get more
  pixels; upsampling stops when the longer side would pass ``max_side``),
- each aspect of ``aspects`` (1: none; a > 1 stretches the width a-fold, a < 1 the
  height 1/a-fold): the network sees faces at other proportions, and faces narrower
  or wider than it learned from are found in the view that restores them,
- optionally the mirror image of each,
- with ``views``, photometric and rotated views too (gamma-brightened, equalised or
  grey pixels; the image turned by some degrees: :mod:`veil.detection.view_transforms`),
- tiles of ``tile_size`` px overlapping by ``tile_overlap`` px when a scaled image is
  larger than a tile, plus an overview of the whole image shrunk to one tile (for
  faces too large to lie whole in any tile); a tile's boxes that touch one of its
  inner edges are dropped, the overlapping neighbour sees that face whole,

maps every box back to the image, and merges them (weighted box fusion by default,
see :mod:`veil.detection.fusion`) so each face gets one box whose score is the mean
(or, with ``fusion_score="rms"``, the root mean square) of the views' scores. Views are
cut straight from the source image, so memory is bounded by the tile size whatever the
image size.

``box_scale`` (width, height factors about the box centre) converts the base
detector's box shape into the annotation convention, applied after merging.
``dedupe_iou`` then keeps one box per face where views disagreed enough on a face's
shape that fusion made two clusters of it: of two merged boxes overlapping that much,
the weaker goes (greedy NMS over the merged boxes).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from veil.boxes import Box
from veil.detection.base import Detector, check_image, create_detector
from veil.detection.fusion import FUSIONS, SCORES, fuse, fuse_votes, score_votes
from veil.detection.nms import nms, pairwise_iou
from veil.detection.rescore import Rescorer
from veil.detection.view_transforms import (
    check_photometric,
    check_rotation,
    photometric,
    rotation_matrix,
    unrotate_boxes,
)
from veil.errors import VeilError

#: Boxes within this many view pixels of a tile's inner edge were cut by it.
EDGE_MARGIN = 2.0
#: Pixels of views sent to the base detector in one call (bounds memory).
PIXEL_BUDGET = 12_000_000


@dataclass(frozen=True)
class View:
    """Where a view's pixels come from: ``pass_index`` groups a scale x flip pass."""

    pass_index: int
    scale_x: float  # view pixels per source pixel
    scale_y: float
    origin_x: int  # the tile's top-left corner in the scaled image
    origin_y: int
    width: int  # the view's size
    height: int
    flip: bool
    inner_edges: tuple[bool, bool, bool, bool]  # left, top, right, bottom borders another tile
    overview: bool = False
    photometric: str = "none"  # view_transforms.PHOTOMETRIC
    rotation: float = 0.0  # degrees the scaled image turns about its centre
    canvas: tuple[int, int] = (0, 0)  # the scaled image's size (what rotation turns)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins covering ``length`` px with tiles of ``tile`` px overlapping >= ``overlap``."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (count - 1)
    return [round(i * step) for i in range(count)]


def plan_views(
    width: int,
    height: int,
    scales: Sequence[float],
    *,
    flip: bool,
    tile_size: int,
    tile_overlap: int,
    max_side: int,
    size_multiple: int = 1,
    aspects: Sequence[float] = (1.0,),
    passes: Sequence[Sequence[Any]] | None = None,
) -> list[View]:
    """Every view of a ``width`` x ``height`` image, in a fixed order.

    The passes are every scale x aspect, each also mirrored with ``flip``; or, when
    ``passes`` is given, exactly those ``(scale, aspect, mirrored)`` triples (a view set
    chosen one view at a time), optionally extended to ``(scale, aspect, mirrored,
    photometric, rotation)`` (:mod:`veil.detection.view_transforms`). A rescaled
    view's sides are rounded to ``size_multiple`` (the base network's stride, e.g. 32),
    so the base detector needs no second resize.
    """
    longer = max(width, height)
    planned: list[tuple[tuple[int, int], bool, str, float]] = []
    if passes is None:
        sizes: list[tuple[int, int]] = []
        for scale in scales:
            for aspect in aspects:
                size = _view_size(width, height, scale, aspect, max_side, size_multiple)
                if size not in sizes:
                    sizes.append(size)
        flips = (False, True) if flip else (False,)
        planned = [(size, mirrored, "none", 0.0) for size in sizes for mirrored in flips]
    else:
        for scale, aspect, mirrored, *more in passes:
            look, turn = (str(more[0]), float(more[1])) if more else ("none", 0.0)
            item = (_view_size(width, height, scale, aspect, max_side, size_multiple),
                    bool(mirrored), look, turn)
            if item not in planned:
                planned.append(item)
    views: list[View] = []
    tiled = False
    for pass_index, ((w, h), mirrored, look, turn) in enumerate(planned):
        xs, ys = tile_starts(w, tile_size, tile_overlap), tile_starts(h, tile_size, tile_overlap)
        tiled |= len(xs) * len(ys) > 1
        for y in ys:
            for x in xs:
                tw, th = min(tile_size, w), min(tile_size, h)
                edges = (x > 0, y > 0, x + tw < w, y + th < h)
                views.append(View(pass_index, w / width, h / height, x, y, tw, th,
                                  mirrored, edges, photometric=look, rotation=turn,
                                  canvas=(w, h)))
    if tiled:
        shrink = min(1.0, tile_size / longer)
        w, h = max(1, round(width * shrink)), max(1, round(height * shrink))
        views.append(View(len(planned), w / width, h / height, 0, 0, w, h, False,
                          (False, False, False, False), overview=True))
    return views


def _view_size(width: int, height: int, scale: float, aspect: float, max_side: int,
               size_multiple: int) -> tuple[int, int]:
    """A pass's size: ``scale``, with ``aspect`` stretching one side (a > 1 widens, a < 1
    heightens, the other side never shrinks); upsampling stops at ``max_side``."""
    sx, sy = (scale * aspect, scale) if aspect >= 1 else (scale, scale / aspect)
    if sx > 1:
        sx = max(1.0, min(sx, max_side / width))
    if sy > 1:
        sy = max(1.0, min(sy, max_side / height))
    if aspect == 1 and scale > 1:
        sx = sy = max(1.0, min(scale, max_side / max(width, height)))
    if sx == sy == 1:
        return width, height
    return _rounded(width * sx, size_multiple), _rounded(height * sy, size_multiple)


def _rounded(length: float, multiple: int) -> int:
    return max(multiple, round(length / multiple) * multiple)


def render_view(
    image: np.ndarray, view: View, cache: dict[tuple[int, int], np.ndarray]
) -> np.ndarray:
    """The view's pixels. Downscaled images are resized whole (area averaging, cached per
    size); upscaled tiles are warped straight from the source so no huge image exists."""
    height, width = image.shape[:2]
    full_w, full_h = round(width * view.scale_x), round(height * view.scale_y)
    whole = view.width == full_w and view.height == full_h
    if view.rotation:
        pixels = _rotated(image, view, cache)
    elif (full_w, full_h) == (width, height):
        pixels = image[view.origin_y:view.origin_y + view.height,
                       view.origin_x:view.origin_x + view.width]
    elif whole or full_w * full_h <= width * height:
        key = (full_w, full_h)
        if key not in cache:
            shrinking = full_w * full_h < width * height
            cache[key] = cv2.resize(image, key, interpolation=cv2.INTER_AREA if shrinking
                                    else cv2.INTER_LINEAR)
        pixels = cache[key][view.origin_y:view.origin_y + view.height,
                            view.origin_x:view.origin_x + view.width]
    else:
        # The same sampling grid as cv2.resize (pixel centres at i + 0.5), shifted to the tile.
        sx, sy = view.scale_x, view.scale_y
        matrix = np.array([[sx, 0, 0.5 * sx - 0.5 - view.origin_x],
                           [0, sy, 0.5 * sy - 0.5 - view.origin_y]], dtype=np.float64)
        pixels = cv2.warpAffine(image, matrix, (view.width, view.height), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
    if view.flip:
        pixels = pixels[:, ::-1]
    return photometric(np.ascontiguousarray(pixels), view.photometric)


def _rotated(image: np.ndarray, view: View, cache: dict[tuple[int, int], np.ndarray]
             ) -> np.ndarray:
    """A rotated view's tile: the scaled image turned about its centre, warped straight
    from the source (or, when shrinking, from the area-averaged smaller image)."""
    height, width = image.shape[:2]
    full_w, full_h = view.canvas
    if full_w * full_h < width * height:
        key = (full_w, full_h)
        if key not in cache:
            cache[key] = cv2.resize(image, key, interpolation=cv2.INTER_AREA)
        source, scale = cache[key], np.eye(3)
    else:
        source = image
        sx, sy = view.scale_x, view.scale_y  # cv2.resize's grid: pixel centres at i + 0.5
        scale = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
    turn = np.vstack([rotation_matrix(full_w, full_h, view.rotation), [0, 0, 1]])
    shift = np.array([[1, 0, -view.origin_x], [0, 1, -view.origin_y], [0, 0, 1]], float)
    matrix = (shift @ turn @ scale)[:2]
    return cv2.warpAffine(source, matrix, (view.width, view.height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def boxes_to_source(boxes: Sequence[Box], view: View) -> np.ndarray:
    """``(n, 5)`` boxes in source pixels; boxes cut by an inner tile edge are dropped."""
    found = np.array([[b.x0, b.y0, b.x1, b.y1, b.score or 0.0] for b in boxes],
                     dtype=np.float64).reshape(-1, 5)
    if view.flip:
        found[:, [0, 2]] = view.width - found[:, [2, 0]]
    left, top, right, bottom = view.inner_edges
    cut = np.zeros(len(found), dtype=bool)
    if left:
        cut |= found[:, 0] <= EDGE_MARGIN
    if top:
        cut |= found[:, 1] <= EDGE_MARGIN
    if right:
        cut |= found[:, 2] >= view.width - EDGE_MARGIN
    if bottom:
        cut |= found[:, 3] >= view.height - EDGE_MARGIN
    found = found[~cut]
    found[:, [0, 2]] += view.origin_x
    found[:, [1, 3]] += view.origin_y
    if view.rotation:
        found = unrotate_boxes(found, *view.canvas, view.rotation)
    found[:, [0, 2]] /= view.scale_x
    found[:, [1, 3]] /= view.scale_y
    return found


def reshape_boxes(boxes: np.ndarray, box_scale: tuple[float, float]) -> np.ndarray:
    """Scale each box's width and height about its centre."""
    if box_scale == (1.0, 1.0) or len(boxes) == 0:
        return boxes
    out = boxes.copy()
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    half_w = (boxes[:, 2] - boxes[:, 0]) * box_scale[0] / 2
    half_h = (boxes[:, 3] - boxes[:, 1]) * box_scale[1] / 2
    out[:, 0], out[:, 2] = cx - half_w, cx + half_w
    out[:, 1], out[:, 3] = cy - half_h, cy + half_h
    return out


class MultiScaleDetector:
    """``base`` over a pyramid of ``scales``, flips and tiles, merged to one box per face.

    ``aspects`` stretch each scale's view in width (> 1) or height (< 1). ``views``
    (``(scale, aspect, flip)`` triples, or ``(scale, aspect, flip, photometric,
    rotation)``: :mod:`veil.detection.view_transforms`) replaces the scales x aspects x
    flips product with exactly those views (a set chosen one view at a time).
    ``threshold`` applies to the merged score; ``candidate_threshold`` is what the base
    detector reports per view (lower: a face seen weakly by several views still adds
    up). ``fusion`` is 'wbf' or 'nms' at ``fusion_iou``; ``fusion_score`` how WBF scores
    a face from its views ('mean', 'rms' or 'max'); ``dedupe_iou`` (None: off) a last
    NMS over the merged boxes. ``rescore`` (a :class:`~veil.detection.rescore.Rescorer`'s
    options; WBF only) replaces each fused box's score by a fitted model's, which
    ``threshold`` then applies to. ``base_options`` go to the base detector;
    ``batch_size`` and ``threads`` to it as well. ``source`` is the name its boxes carry.
    """

    def __init__(
        self,
        *,
        base: str = "centerface",
        base_options: dict[str, object] | None = None,
        scales: Sequence[float] = (1.0,),
        aspects: Sequence[float] = (1.0,),
        flip: bool = False,
        views: Sequence[Sequence[float | bool | str]] | None = None,
        threshold: float = 0.2,
        candidate_threshold: float = 0.05,
        fusion: str = "wbf",
        fusion_iou: float = 0.55,
        fusion_score: str = "mean",
        dedupe_iou: float | None = None,
        box_scale: Sequence[float] = (1.0, 1.0),
        rescore: Mapping[str, Any] | None = None,
        tile_size: int = 2048,
        tile_overlap: int = 256,
        max_side: int = 4096,
        batch_size: int = 8,
        threads: int | None = None,
        source: str = "multiscale",
    ) -> None:
        scales = tuple(float(s) for s in scales)
        if not scales or any(not math.isfinite(s) or s <= 0 for s in scales):
            raise VeilError(f"scales must be positive numbers, got {scales}")
        aspects = tuple(float(a) for a in aspects)
        if not aspects or any(not math.isfinite(a) or not 0.25 <= a <= 4 for a in aspects):
            raise VeilError(f"aspects must be numbers in [0.25, 4], got {aspects}")
        passes = None if views is None else tuple(_checked_view(v) for v in views)
        if passes is not None and not passes:
            raise VeilError("views must name at least one (scale, aspect, flip) view")
        if fusion not in FUSIONS:
            raise VeilError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        if not 0.0 < fusion_iou <= 1.0:
            raise VeilError(f"fusion_iou must be in (0, 1], got {fusion_iou}")
        if dedupe_iou is not None and not 0.0 < dedupe_iou <= 1.0:
            raise VeilError(f"dedupe_iou must be in (0, 1] or None, got {dedupe_iou}")
        if rescore is not None and fusion != "wbf":
            raise VeilError("rescore scores weighted box fusion's clusters: use fusion 'wbf'")
        if fusion_score not in SCORES:
            raise VeilError(
                f"fusion_score must be one of {', '.join(SCORES)}, got {fusion_score!r}")
        if not 0.0 <= threshold < 1.0 or not 0.0 <= candidate_threshold < 1.0:
            raise VeilError("threshold and candidate_threshold must be in [0, 1)")
        box_scale = tuple(float(s) for s in box_scale)
        if len(box_scale) != 2 or any(not 0.25 <= s <= 4 for s in box_scale):
            raise VeilError(f"box_scale must be two factors in [0.25, 4], got {box_scale}")
        if tile_size < 64 or not 0 <= tile_overlap < tile_size // 2:
            raise VeilError(
                f"tile_size must be >= 64 and tile_overlap in [0, tile_size / 2), got "
                f"{tile_size} and {tile_overlap}"
            )
        if max_side < 32:
            raise VeilError(f"max_side must be >= 32, got {max_side}")
        if base == "multiscale":
            raise VeilError("the base detector of multiscale cannot be multiscale itself")
        self.name = source
        self.base_name = base
        self.scales = scales
        self.aspects = aspects
        self.flip = bool(flip)
        self.passes = passes
        self.threshold = float(threshold)
        self.candidate_threshold = float(candidate_threshold)
        self.fusion = fusion
        self.fusion_iou = float(fusion_iou)
        self.fusion_score = fusion_score
        self.dedupe_iou = None if dedupe_iou is None else float(dedupe_iou)
        self.box_scale: tuple[float, float] = (box_scale[0], box_scale[1])
        self.rescore = None if rescore is None else Rescorer.from_options(rescore)
        self.tile_size = int(tile_size)
        self.tile_overlap = int(tile_overlap)
        self.max_side = int(max_side)
        self.base_options = dict(base_options or {})
        self.base: Detector = create_detector(
            base, threshold=self.candidate_threshold, batch_size=batch_size, threads=threads,
            **self.base_options,
        )

    @property
    def options(self) -> dict[str, object]:
        """The settings that shape the boxes, for run records."""
        return {
            "base": self.base_name, "base_options": self.base_options,
            "scales": list(self.scales), "aspects": list(self.aspects), "flip": self.flip,
            "views": None if self.passes is None else [list(p) for p in self.passes],
            "threshold": self.threshold,
            "candidate_threshold": self.candidate_threshold, "fusion": self.fusion,
            "fusion_iou": self.fusion_iou, "fusion_score": self.fusion_score,
            "dedupe_iou": self.dedupe_iou,
            "box_scale": list(self.box_scale),
            "rescore": None if self.rescore is None else self.rescore.options(),
            "tile_size": self.tile_size, "tile_overlap": self.tile_overlap,
            "max_side": self.max_side,
        }

    def views(self, width: int, height: int) -> list[View]:
        return plan_views(width, height, self.scales, flip=self.flip, tile_size=self.tile_size,
                          tile_overlap=self.tile_overlap, max_side=self.max_side,
                          size_multiple=getattr(self.base, "size_multiple", 1),
                          aspects=self.aspects, passes=self.passes)

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        """One list of merged boxes per image, best first."""
        arrays = [check_image(image, index) for index, image in enumerate(images)]
        per_image: list[list[tuple[View, np.ndarray]]] = [[] for _ in arrays]
        for index, view, boxes in self._run_views(arrays):
            per_image[index].append((view, boxes))
        return [self._merge(found, image.shape[1], image.shape[0])
                for found, image in zip(per_image, arrays, strict=True)]

    def _run_views(self, arrays: list[np.ndarray]) -> Iterator[tuple[int, View, np.ndarray]]:
        """Render views lazily and send them to the base detector within a pixel budget."""
        pending: list[tuple[int, View, np.ndarray]] = []
        pixels = 0
        for index, image in enumerate(arrays):
            cache: dict[tuple[int, int], np.ndarray] = {}
            for view in self.views(image.shape[1], image.shape[0]):
                rendered = render_view(image, view, cache)
                pending.append((index, view, rendered))
                pixels += rendered.shape[0] * rendered.shape[1]
                if pixels >= PIXEL_BUDGET:
                    yield from self._flush(pending)
                    pending, pixels = [], 0
        yield from self._flush(pending)

    def _flush(
        self, pending: list[tuple[int, View, np.ndarray]]
    ) -> Iterator[tuple[int, View, np.ndarray]]:
        if not pending:
            return
        found = self.base.detect([rendered for _, _, rendered in pending])
        for (index, view, _), boxes in zip(pending, found, strict=True):
            yield index, view, boxes_to_source(boxes, view)

    def _merge(self, found: list[tuple[View, np.ndarray]], width: int, height: int) -> list[Box]:
        passes: dict[int, list[np.ndarray]] = {}
        scales: dict[int, float] = {}
        overview: list[np.ndarray] = []
        for view, boxes in found:
            if view.overview:
                overview.append(boxes)
            else:
                passes.setdefault(view.pass_index, []).append(boxes)
                scales[view.pass_index] = math.sqrt(view.scale_x * view.scale_y)
        views = [np.vstack(parts) for _, parts in sorted(passes.items())]
        merged = merge_views(
            views, width, height, fusion=self.fusion, fusion_iou=self.fusion_iou,
            fusion_score=self.fusion_score, candidate_threshold=self.candidate_threshold,
            threshold=self.threshold, box_scale=self.box_scale, dedupe_iou=self.dedupe_iou,
            overview=np.vstack(overview) if overview else None, rescore=self.rescore,
            view_scales=[scales[i] for i in sorted(passes)])
        return [
            Box(float(x0), float(y0), float(x1), float(y1), score=float(min(score, 1.0)),
                source=self.name)
            for x0, y0, x1, y1, score in merged
        ]


def merge_views(
    views: Sequence[np.ndarray],
    width: int,
    height: int,
    *,
    fusion: str = "wbf",
    fusion_iou: float = 0.55,
    fusion_score: str = "mean",
    candidate_threshold: float = 0.0,
    threshold: float = 0.0,
    box_scale: tuple[float, float] = (1.0, 1.0),
    dedupe_iou: float | None = None,
    overview: np.ndarray | None = None,
    rescore: Rescorer | None = None,
    view_scales: Sequence[float] | None = None,
) -> np.ndarray:
    """One image's boxes ``(k, 5)`` from its views' boxes (each ``(n, 5)``, source pixels).

    Fusion, the overview's fill-in, the final threshold, box reshaping, the last NMS and
    clipping to the image, in that order: what :class:`MultiScaleDetector` does after
    its views ran, as a function of cached view outputs (so settings can be tuned and
    cross-validated without running the network again). With ``rescore`` (WBF only),
    fused boxes scoring below its floor go and the rest are scored by it from their
    views' votes (``view_scales``: each view's pixels per source pixel); the overview's
    boxes keep their own scores.
    """
    if rescore is None:
        merged = fuse(views, fusion, fusion_iou, skip_below=candidate_threshold,
                      score=fusion_score)
    else:
        merged = rescored(views, width, height, rescore, view_scales or [1.0] * len(views),
                          fusion_iou=fusion_iou, fusion_score=fusion_score,
                          candidate_threshold=candidate_threshold)
    if overview is not None and len(overview):
        merged = _fill_in(merged, overview, fusion_iou)
    return finish_boxes(merged, width, height, threshold=threshold, box_scale=box_scale,
                        dedupe_iou=dedupe_iou)


def rescored(views: Sequence[np.ndarray], width: int, height: int, rescore: Rescorer,
             view_scales: Sequence[float], *, fusion_iou: float, fusion_score: str,
             candidate_threshold: float) -> np.ndarray:
    """WBF's boxes ``(k, 5)`` scored by ``rescore``, best first (see :func:`merge_views`)."""
    if len(view_scales) != len(views):
        raise VeilError(f"need one scale per view ({len(views)}), got {len(view_scales)}")
    boxes, votes = fuse_votes(views, fusion_iou, skip_below=candidate_threshold)
    if len(boxes) == 0:
        return np.empty((0, 5))
    keep = score_votes(votes, fusion_score) >= rescore.floor
    boxes, votes = boxes[keep], votes[keep]
    out = np.hstack([boxes, rescore(boxes, votes, view_scales, width, height)[:, None]])
    return out[np.argsort(-out[:, 4], kind="stable")]


def finish_boxes(merged: np.ndarray, width: int, height: int, *, threshold: float,
                 box_scale: tuple[float, float], dedupe_iou: float | None) -> np.ndarray:
    """The steps after fusion: threshold, reshape, last NMS, clip, drop empty boxes.

    Each step keeps or changes boxes by their own score order only, so the boxes kept
    at a threshold are those of a lower threshold that score above it: one call at a low
    threshold gives every higher threshold's boxes (what tuning needs).
    """
    merged = merged[merged[:, 4] >= threshold]
    merged = reshape_boxes(merged, box_scale)
    if dedupe_iou is not None and len(merged) > 1:
        merged = merged[nms(merged[:, :4], merged[:, 4], dedupe_iou)]
    merged[:, [0, 2]] = np.clip(merged[:, [0, 2]], 0, width)
    merged[:, [1, 3]] = np.clip(merged[:, [1, 3]], 0, height)
    keep = (merged[:, 2] > merged[:, 0]) & (merged[:, 3] > merged[:, 1])
    keep &= np.isfinite(merged).all(axis=1)
    return merged[keep]


def _checked_view(view: Sequence[float | bool | str]
                  ) -> tuple[float, float, bool] | tuple[float, float, bool, str, float]:
    """A ``(scale, aspect, flip)`` or ``(scale, aspect, flip, photometric, rotation)``
    view, checked like ``scales`` and ``aspects``."""
    try:
        scale, aspect, mirrored, *more = view
        scale, aspect = float(scale), float(aspect)
        if len(more) not in (0, 2):
            raise ValueError
    except (TypeError, ValueError):
        raise VeilError("a view is (scale, aspect, flip) or (scale, aspect, flip, "
                        f"photometric, rotation), got {view!r}") from None
    if not math.isfinite(scale) or scale <= 0 or not math.isfinite(aspect) or not (
            0.25 <= aspect <= 4):
        raise VeilError(f"a view needs scale > 0 and aspect in [0.25, 4], got {view!r}")
    if not more:
        return scale, aspect, bool(mirrored)
    if not isinstance(more[0], str):
        raise VeilError(f"a view's photometric transform is a name, got {more[0]!r}")
    try:
        turn = float(more[1])
    except (TypeError, ValueError):
        raise VeilError(f"a view's rotation is degrees, got {more[1]!r}") from None
    return scale, aspect, bool(mirrored), check_photometric(more[0]), check_rotation(turn)


def _fill_in(merged: np.ndarray, extra: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Add the overview's boxes that no merged box already covers (large, cut faces)."""
    if len(extra) == 0:
        return merged
    if len(merged):
        extra = extra[pairwise_iou(extra[:, :4], merged[:, :4]).max(axis=1) < iou_threshold]
    out = np.vstack([merged, extra])
    return out[np.argsort(-out[:, 4], kind="stable")]
