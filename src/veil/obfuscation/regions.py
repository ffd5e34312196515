"""Integer rectangle arithmetic for region-only obfuscation.

Rectangles are ``(x0, y0, x1, y1)`` integer pixel bounds, half-open, held as rows of an
``int64`` array of shape ``(n, 4)`` so that hundreds of faces cost a few numpy calls,
not Python loops.

Two facts about Pillow decide the exactness of blurring crops instead of whole images:

* ``ImageDraw.rectangle`` converts float coordinates with a C ``(int)`` cast, i.e.
  truncation toward zero, and fills the *inclusive* integer rectangle clipped to the
  image. Truncation is not shift-invariant for negative numbers, so we truncate once in
  image coordinates (:func:`pillow_fill_rects`) and only ever shift integers.
* ``ImageFilter.GaussianBlur(sigma)`` is 3 passes of an extended box blur per axis whose
  integer radius ``R`` comes from Gwosdek et al.'s formula; each pass reads ``R + 1``
  pixels each side (the far pixel with a fractional weight) and clamps at the edges, so
  an output pixel depends only on input within ``3 * (R + 1)`` pixels
  (:func:`gaussian_support`). All arithmetic in it is integer, so a crop that reaches
  that far (or stops at the real image border) gives bit-identical pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

GAUSSIAN_PASSES = 3
"""Pillow's GaussianBlur runs this many box-blur passes per axis."""

SAFETY_MARGIN = 1
"""Extra pixels read around every crop beyond the derived support. Reading more never
changes the result, so this is cheap insurance; the tests show the support itself is
tight (one pixel less breaks equality with the whole-image blur)."""

CROP_OVERHEAD_PX = 1500
"""Fixed cost of processing one crop, in pixel-equivalents (measured: ~50 us of Python and
Pillow call overhead against ~36 ns per pixel of RGBA blur); it decides when crops merge."""


def box_blur_radius(sigma: float, passes: int = GAUSSIAN_PASSES) -> float:
    """The float box radius Pillow's GaussianBlur uses for standard deviation ``sigma``.

    Same formula as Pillow (Gwosdek et al. 2011, eqs. 7, 11, 14), in double precision;
    Pillow computes it in single precision, hence the slack in :func:`gaussian_support`.
    """
    sigma2 = sigma * sigma / passes
    length = math.sqrt(12.0 * sigma2 + 1.0)
    whole = math.floor((length - 1.0) / 2.0)
    frac = (2 * whole + 1) * (whole * (whole + 1) - 3 * sigma2)
    frac /= 6 * (sigma2 - (whole + 1) * (whole + 1))
    return whole + frac


def gaussian_support(sigma: float, passes: int = GAUSSIAN_PASSES) -> int:
    """How far (in pixels, per axis) GaussianBlur(sigma) reads: ``passes * (R + 1)``.

    ``R`` is rounded up when the radius is within 1e-3 of the next integer, so a single- vs
    double-precision disagreement can only make the support larger, never too small.
    """
    if sigma <= 0:
        return 0
    radius = math.floor(box_blur_radius(sigma, passes) + 1e-3)
    return passes * (radius + 1)


def pillow_fill_rects(xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
    """Half-open integer rectangles that ``ImageDraw.rectangle(xyxy, fill=...)`` paints.

    Pillow truncates each float toward zero and fills the inclusive rectangle; we return
    ``(trunc(x0), trunc(y0), trunc(x1) + 1, trunc(y1) + 1)`` clamped to ``[-1, size + 1]``
    (clamping first keeps huge coordinates away from int64 overflow without changing
    which pixels of the image are painted). Not clipped to the image: see :func:`clip`.
    """
    t = np.trunc(xyxy)
    t[:, 2:] += 1
    limit = np.array([width, height, width, height], dtype=np.float64) + 1
    return np.clip(t, -1, limit).astype(np.int64)


_FAR = float(2**40)


def covering_rects(xyxy: np.ndarray) -> np.ndarray:
    """Half-open integer rectangles of every pixel a float box touches (floor/ceil).

    A pixel ``[x, x + 1)`` is touched when it overlaps ``(x0, x1)`` with positive length,
    so a box edge exactly on a pixel boundary does not pull in the next pixel.
    """
    out = np.concatenate([np.floor(xyxy[:, :2]), np.ceil(xyxy[:, 2:])], axis=1)
    # Far-out coordinates are clamped only to keep int64 safe; the grid origin of a box
    # (mosaic) therefore stays exact for any box within 2**40 pixels.
    return np.clip(out, -_FAR, _FAR).astype(np.int64)


def clip(rects: np.ndarray, width: int, height: int) -> np.ndarray:
    """Rectangles clipped to the image, empty ones dropped."""
    if len(rects) == 0:
        return rects.reshape(0, 4).astype(np.int64)
    out = rects.copy()
    out[:, 0::2] = np.clip(out[:, 0::2], 0, width)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, height)
    keep = (out[:, 0] < out[:, 2]) & (out[:, 1] < out[:, 3])
    return out[keep]


def grow(rects: np.ndarray, margin: int) -> np.ndarray:
    """Rectangles enlarged by ``margin`` pixels on every side (not clipped)."""
    return rects + np.array([-margin, -margin, margin, margin], dtype=np.int64)


def area(rects: np.ndarray) -> np.ndarray:
    return (rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1])


def _rect(values: Sequence[int] | np.ndarray) -> tuple[int, int, int, int]:
    a, b, c, d = (int(v) for v in values)
    return a, b, c, d


_LOWER = np.array([True, True, False, False] * 2)
"""Which of the 8 values of a (crop, output) row are lower corners (min on merge)."""


def _bucket(groups: np.ndarray, tile: int) -> np.ndarray:
    """Merge (crop, output) rows whose crop centres share a ``tile`` x ``tile`` cell: a
    linear-time thinning before the pairwise search (see :func:`merge_regions`)."""
    x0, y0 = groups[:, 0].min(), groups[:, 1].min()
    extent = max(groups[:, 2].max() - x0, groups[:, 3].max() - y0, 1)
    per_side = -(-int(extent) // tile)
    cx = ((groups[:, 0] + groups[:, 2]) // 2 - x0) // tile
    cy = ((groups[:, 1] + groups[:, 3]) // 2 - y0) // tile
    return _merge_by_key(groups, cy * (per_side + 1) + cx)


BUCKET_ABOVE = 8
"""With more crops than this, crops whose centres are close are merged up front."""

PREMERGE_ABOVE = 4
"""With more crops than this, near-free merges are done in one vectorised step first."""

PREMERGE_SLACK = 1.5
"""A pair is near-free to merge when the merged crop costs at most this times the dearer
of the two (tuned on WIDER: same total cost as pure best-first, 2-3x less search time)."""

AGGLOMERATE_MAX = 64
"""The pairwise search never sees more crops than this (coarser tiles until it fits)."""


def merge_regions(
    crops: np.ndarray, outputs: np.ndarray
) -> list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """Group (crop, output) rectangle pairs so that the total blurring cost is low.

    ``crops[i]`` is what must be read to compute ``outputs[i]`` exactly. Merging i and j
    gives crop = bbox(crop_i, crop_j), output = bbox(output_i, output_j); that stays exact
    because growing the merged output by the blur support still lands inside the merged
    crop. Merging pays when crops overlap (shared pixels would be blurred twice) or are
    small and close (each crop has a fixed overhead). Pairs merge best-first while a merge
    lowers the cost; crowds are first thinned by tiles so the pairwise search stays small.
    """
    groups = np.concatenate([crops, outputs], axis=1).astype(np.int64)
    if len(groups) > BUCKET_ABOVE:
        # A crop is wider than its output by twice the blur reach; crops whose centres
        # share a reach-sized tile overlap at least by their outputs, so merging pays.
        reach = int(((crops[:, 2:] - crops[:, :2]) - (outputs[:, 2:] - outputs[:, :2])).max())
        tile = max(reach, 8)
        groups = _bucket(groups, tile)
        while len(groups) > AGGLOMERATE_MAX:
            tile *= 2
            groups = _bucket(groups, tile)
    if len(groups) > PREMERGE_ABOVE:
        groups = _premerge(groups)
    if len(groups) > 1:
        groups = _agglomerate(groups)
    return [(_rect(g[:4]), _rect(g[4:])) for g in groups.tolist()]


def _premerge(groups: np.ndarray) -> np.ndarray:
    """Merge connected groups of near-free pairs (see PREMERGE_SLACK) in one step."""
    lo = groups[:, [0, 1, 4, 5]]
    hi = groups[:, [2, 3, 6, 7]]
    cost = _cost(lo, hi)
    merged = _cost(np.minimum(lo[:, None], lo[None, :]), np.maximum(hi[:, None], hi[None, :]))
    linked = merged <= PREMERGE_SLACK * np.maximum(cost[:, None], cost[None, :])
    n = len(groups)
    labels = np.arange(n)
    while True:  # connected components by min-label propagation
        spread = np.where(linked, labels[None, :], n).min(axis=1)
        spread = spread[spread]
        if np.array_equal(spread, labels):
            break
        labels = spread
    return _merge_by_key(groups, labels)


def _merge_by_key(groups: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """One bounding (crop, output) row per distinct key."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    ordered = groups[order]
    lower = np.minimum.reduceat(ordered, starts, axis=0)
    upper = np.maximum.reduceat(ordered, starts, axis=0)
    return np.where(_LOWER, lower, upper)


def _cost(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Estimated cost, in pixel-equivalents, of blurring a crop for its output rectangle.

    Rows come split into lower (cx0, cy0, ox0, oy0) and upper (cx1, cy1, ox1, oy1)
    corners. The engine blurs rows over the whole crop, then columns over the output's
    columns only (at the crop's height); Pillow spends about 42% / 58% of a blur on the
    two axes. Plus a fixed overhead per crop.
    """
    crop_h = hi[..., 1] - lo[..., 1]
    rows = (hi[..., 0] - lo[..., 0]) * crop_h
    columns = (hi[..., 2] - lo[..., 2]) * crop_h
    return 0.42 * rows + 0.58 * columns + CROP_OVERHEAD_PX


def _agglomerate(groups: np.ndarray) -> np.ndarray:
    """Best-first pairwise merging; the gain matrix is updated one row per merge."""
    lo = groups[:, [0, 1, 4, 5]].astype(np.float64)
    hi = groups[:, [2, 3, 6, 7]].astype(np.float64)
    n = len(groups)
    cost = _cost(lo, hi)
    gain = cost[:, None] + cost[None, :] - _cost(
        np.minimum(lo[:, None], lo[None, :]), np.maximum(hi[:, None], hi[None, :])
    )
    np.fill_diagonal(gain, -np.inf)
    alive = np.ones(n, dtype=bool)
    while True:
        i, j = divmod(int(np.argmax(gain)), n)
        if not gain[i, j] > 0:
            break
        lo[i] = np.minimum(lo[i], lo[j])
        hi[i] = np.maximum(hi[i], hi[j])
        cost[i] -= gain[i, j] - cost[j]
        alive[j] = False
        row = cost[i] + cost - _cost(np.minimum(lo[i], lo), np.maximum(hi[i], hi))
        row[~alive] = -np.inf
        row[i] = -np.inf
        gain[j, :] = -np.inf
        gain[:, j] = -np.inf
        gain[i, :] = row
        gain[:, i] = row
    lo, hi = lo[alive].astype(np.int64), hi[alive].astype(np.int64)
    return np.concatenate([lo[:, :2], hi[:, :2], lo[:, 2:], hi[:, 2:]], axis=1)
