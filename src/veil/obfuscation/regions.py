"""Integer rectangle arithmetic for region-only obfuscation.

Rectangles are ``(x0, y0, x1, y1)`` integer pixel bounds, half-open. A face image has a
handful of them, so plain Python tuples are cheaper than numpy here.

Two facts about Pillow decide the exactness of blurring pieces instead of whole images:

* ``ImageDraw.rectangle`` converts float coordinates with a C ``(int)`` cast, i.e.
  truncation toward zero, and fills the *inclusive* integer rectangle clipped to the
  image. Truncation is not shift-invariant for negative numbers, so we truncate once in
  image coordinates (:func:`pillow_fill_rect`) and only ever shift integers.
* ``ImageFilter.GaussianBlur(sigma)`` is 3 passes of an extended box blur per axis whose
  integer radius ``r`` comes from Gwosdek et al.'s formula; each pass reads ``r + 1``
  pixels each side (the far pixel with a fractional weight) and clamps at the edges, so
  an output pixel depends only on input within ``3 * (r + 1)`` pixels
  (:func:`gaussian_support`). All arithmetic in it is integer, so a piece that reaches
  that far (or stops at the real image border) gives bit-identical pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from veil.obfuscation._common import Rect

GAUSSIAN_PASSES = 3
"""Pillow's GaussianBlur runs this many box-blur passes per axis."""


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


def pillow_fill_rect(x0: float, y0: float, x1: float, y1: float, width: int,
                     height: int) -> Rect:
    """The half-open integer rectangle ``ImageDraw.rectangle((x0, y0, x1, y1))`` paints.

    Pillow truncates each float toward zero and fills the inclusive rectangle: we return
    ``(trunc(x0), trunc(y0), trunc(x1) + 1, trunc(y1) + 1)`` clamped to ``[-1, size + 1]``
    (which changes no painted pixel of the image; clamping the floats first keeps
    infinities out of ``int``). Not clipped: see :func:`clip_rects`.
    """
    return (int(min(max(x0, -1.0), width + 1.0)), int(min(max(y0, -1.0), height + 1.0)),
            int(min(max(x1, -2.0), float(width))) + 1,
            int(min(max(y1, -2.0), float(height))) + 1)


def clip_rects(rects: Sequence[Rect], width: int, height: int) -> list[Rect]:
    """Rectangles clipped to the image, empty ones dropped."""
    clipped = []
    for x0, y0, x1, y1 in rects:
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if x0 < x1 and y0 < y1:
            clipped.append((x0, y0, x1, y1))
    return clipped


def grow_rects(rects: Sequence[Rect], margin: int) -> list[Rect]:
    """Rectangles enlarged by ``margin`` pixels on every side (not clipped)."""
    return [(x0 - margin, y0 - margin, x1 + margin, y1 + margin) for x0, y0, x1, y1 in rects]


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


def _runs(mask: int, xs: Sequence[int], bridge: float) -> list[tuple[int, int]]:
    """Runs of set bits of ``mask`` as pixel ranges ``(xs[first], xs[past_last])``,
    lowest first, with gaps narrower than ``bridge`` pixels filled."""
    runs: list[tuple[int, int]] = []
    while mask:
        low = (mask & -mask).bit_length() - 1
        shifted = mask >> low
        length = (~shifted & (shifted + 1)).bit_length() - 1
        mask = (shifted >> length) << (low + length)
        if runs and xs[low] - runs[-1][1] < bridge:
            runs[-1] = (runs[-1][0], xs[low + length])
        else:
            runs.append((xs[low], xs[low + length]))
    return runs


def _row_masks(rects: Sequence[Rect], xs: list[int], ys: list[int]) -> list[int]:
    """Per row of the compressed grid, the covered cells as bits of an int."""
    column = {v: i for i, v in enumerate(xs)}
    row = {v: i for i, v in enumerate(ys)}
    if len(rects) <= 32:
        masks = [0] * (len(ys) - 1)
        for x0, y0, x1, y1 in rects:
            bits = (1 << column[x1]) - (1 << column[x0])
            for i in range(row[y0], row[y1]):
                masks[i] |= bits
        return masks
    # Crowds: coverage counts by a 2D difference array, then one int per row.
    corners = np.array([(row[y0], column[x0], row[y1], column[x1])
                        for x0, y0, x1, y1 in rects], dtype=np.intp)
    counts = np.zeros((len(ys), len(xs)), dtype=np.int32)
    for (r, c), sign in (((0, 1), 1), ((0, 3), -1), ((2, 1), -1), ((2, 3), 1)):
        np.add.at(counts, (corners[:, r], corners[:, c]), sign)
    covered = counts.cumsum(axis=0).cumsum(axis=1)[:-1] > 0
    packed = np.packbits(covered, axis=1, bitorder="little")
    return [int.from_bytes(line.tobytes(), "little") for line in packed]


def _join(runs: list[tuple[int, int]], limit: float) -> list[tuple[int, int]]:
    """Runs (sorted, disjoint) with the gaps narrower than ``limit`` filled."""
    joined = [runs[0]] if runs else []
    for start, stop in runs[1:]:
        if start - joined[-1][1] < limit:
            joined[-1] = (joined[-1][0], stop)
        else:
            joined.append((start, stop))
    return joined


def _merge(first: list[tuple[int, int]], second: list[tuple[int, int]], limit: float
           ) -> list[tuple[int, int]]:
    """The union of two sorted lists of disjoint runs, with gaps under ``limit`` filled."""
    merged: list[tuple[int, int]] = []
    i = j = 0
    while i < len(first) or j < len(second):
        if j == len(second) or (i < len(first) and first[i][0] <= second[j][0]):
            start, stop = first[i]
            i += 1
        else:
            start, stop = second[j]
            j += 1
        if merged and start - merged[-1][1] < limit:
            if stop > merged[-1][1]:
                merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return merged


def band_cover(rects: Sequence[Rect], bridge: int, joint: float = 0.0) -> list[Rect]:
    """Disjoint rectangles covering the union of ``rects``: bands of consecutive rows,
    each cut into runs of columns.

    Made for work that runs along rows (a row blur), which costs per pixel of a run plus
    ``bridge`` pixels per run and row for its ends, plus a fixed cost per rectangle worth
    ``joint`` pixels of one row. Runs of a band closer than ``bridge + joint / height``
    are joined (blurring the gap is cheaper than another pair of ends and another call),
    so runs of a band are at least ``bridge`` apart; neighbouring bands are merged into
    one (runs united) when that costs less than keeping them apart. With ``joint = 0``
    the cover is exact up to the bridged gaps. Pure Python on a compressed grid: a
    handful of faces costs microseconds.
    """
    if len(rects) <= 1:
        return list(rects)
    xs = sorted({v for r in rects for v in (r[0], r[2])})
    ys = sorted({v for r in rects for v in (r[1], r[3])})
    tops: list[int] = []
    rows: list[list[tuple[int, int]]] = []
    last_mask = -1
    for i, mask in enumerate(_row_masks(rects, xs, ys)):
        if mask == last_mask:
            continue
        last_mask = mask
        runs = _runs(mask, xs, bridge)
        if not rows or runs != rows[-1]:
            tops.append(ys[i])
            rows.append(runs)
    tops.append(ys[-1])
    # Bands as [top, bottom, runs, cost of one row of them]; merged while cheaper.
    bands: list[list] = []
    for top, bottom, runs in zip(tops, tops[1:], rows, strict=False):
        if joint and len(runs) > 1:
            runs = _join(runs, bridge + joint / (bottom - top))
        cost = bridge * len(runs)
        for start, stop in runs:
            cost += stop - start
        if bands:
            band = bands[-1]
            if runs == band[2]:
                band[1] = bottom
                continue
            if joint and runs:
                above, kept, kept_cost = band[0], band[2], band[3]
                if len(runs) == 1 and len(kept) == 1:  # the common case, quickly
                    (a, b), (c, d) = runs[0], kept[0]
                    if max(a, c) - min(b, d) < bridge + joint / (bottom - above):
                        merged = [(min(a, c), max(b, d))]
                    else:
                        merged = sorted((runs[0], kept[0]))
                else:
                    merged = _merge(kept, runs, bridge + joint / (bottom - above))
                merged_cost = bridge * len(merged)
                for start, stop in merged:
                    merged_cost += stop - start
                if ((bottom - above) * merged_cost + joint * len(merged)
                        <= (top - above) * kept_cost + (bottom - top) * cost
                        + joint * (len(kept) + len(runs))):
                    band[1:] = [bottom, merged, merged_cost]
                    continue
        bands.append([top, bottom, runs, cost])
    return [(start, top, stop, bottom) for top, bottom, runs, _ in bands
            for start, stop in runs]


def transposed(rects: Sequence[Rect]) -> list[Rect]:
    """Rectangles with x and y swapped, to run a row function along columns."""
    return [(y0, x0, y1, x1) for x0, y0, x1, y1 in rects]
