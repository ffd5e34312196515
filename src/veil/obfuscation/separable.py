"""Pillow's GaussianBlur of an RGBA image, computed only on given rectangles, axis by axis.

``GaussianBlur(sigma)`` is three passes of an extended box blur along rows, then three
along columns, each pass reading ``r + 1`` pixels either side (``r`` = the integer part
of the float box radius ``R``), clamping at the image edges and rounding to 8 bits. Rows
are independent in the row passes and columns in the column passes, so the exact result
on a set of rectangles needs:

* a **row stage**: the row-blurred image on every output rectangle grown vertically by
  ``3 (r + 1)``, in disjoint row pieces, each read ``3 (r + 1)`` wider on the sides that
  are not the image border (those clamp the same way in the crop) and written back in
  place;
* a **column stage**: each output rectangle, transposed so that columns are rows, from
  the row stage's values.

When ``R`` is known exactly (:func:`box_radius`), every pass runs on its own and the crop
shrinks by ``r + 1`` per side between passes, so later passes touch fewer pixels;
otherwise each stage is one ``gaussian_blur`` call along its axis, which is exact by
construction. :func:`mask_reach` says how far from the painted rects the blurred mask,
and so the output, can change at all.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from veil.obfuscation._common import Rect
from veil.obfuscation.regions import GAUSSIAN_PASSES, gaussian_support

_TRANSPOSE = Image.Transpose.TRANSPOSE

MASK_REACH_UP_TO = 1024
"""Above this reach (sigma ~ 340) :func:`mask_reach` returns the reach itself: its probe
images grow with it, and such faces are a small part of an image anyway."""
_SINGLE = struct.Struct("f")

MAX_SIGMA = 1e6
"""Beyond this (faces millions of pixels across) :func:`box_radius` leaves the radius to
Pillow rather than derive it in single precision."""


def _f32(value: float) -> float:
    """``value`` rounded to single precision. For + - * / and sqrt of single-precision
    operands, rounding the double result is the correctly rounded single result."""
    return _SINGLE.unpack(_SINGLE.pack(value))[0]


def _radius_candidates(sigma: float) -> list[float]:
    """Pillow's single-precision box radius for ``sigma`` (its ``_gaussian_blur_radius``)
    as a C compiler may evaluate it: plain single precision, with ``l (l + 1) - 3 sigma2``
    fused into one rounding (FMA targets), or each statement in double (x87)."""
    s = _f32(sigma)
    sigma2 = _f32(_f32(s * s) / GAUSSIAN_PASSES)
    length = _f32(math.sqrt(12.0 * sigma2 + 1.0))
    whole = float(math.floor((length - 1.0) / 2.0))
    near = whole * (whole + 1)  # exact, as are 2 l + 1 and (l + 1)^2
    tail = _f32(6 * _f32(sigma2 - (whole + 1) * (whole + 1)))
    plain = _f32(_f32((2 * whole + 1) * _f32(near - _f32(3 * sigma2))) / tail)
    fused = _f32(_f32((2 * whole + 1) * _f32(near - 3 * sigma2)) / tail)
    wide = _f32(_f32((2 * whole + 1) * (near - 3 * sigma2)) / (6 * (sigma2 - (whole + 1) ** 2)))
    return [_f32(whole + frac) for frac in (plain, fused, wide)]


def box_weights(radius: float) -> tuple[int, int, int]:
    """``(r, ww, fw)``: all that a box pass of float radius ``radius`` depends on, as
    Pillow derives it: the integer radius, the weight of each whole pixel and of each of
    the two far ones (in units of 2^-24)."""
    whole = int(radius)
    ww = int(_f32(float(1 << 24) / _f32(radius * 2 + 1)))
    return whole, ww, ((1 << 24) - (2 * whole + 1) * ww) // 2


@lru_cache(maxsize=1)
def _formula_matches_pillow() -> bool:
    """Whether box passes with :func:`box_radius` reproduce this Pillow's GaussianBlur,
    checked once per process on a few sigmas (a later Pillow could change its formula)."""
    for sigma in (0.37, 1.9, 4.6, 12.3):
        radius = _radius(sigma)
        if radius is None:
            continue
        side = 6 * (int(radius) + 1) + 9
        noise = (np.arange(side * (side + 5) * 4, dtype=np.int64) * 2654435761 >> 11) % 256
        image = Image.frombytes("RGBA", (side + 5, side), noise.astype(np.uint8).tobytes())
        expected = image.im.gaussian_blur((sigma, sigma))
        got = image.im.box_blur((radius, radius), GAUSSIAN_PASSES)
        if image._new(got).tobytes() != image._new(expected).tobytes():
            return False
    return True


def _radius(sigma: float) -> float | None:
    """The plain evaluation's radius if every evaluation gives the same ``(r, ww)``."""
    candidates = _radius_candidates(sigma)
    if len({box_weights(c) for c in candidates}) != 1:
        return None
    return candidates[0]


@lru_cache(maxsize=64)
def box_radius(sigma: float) -> float | None:
    """The float box radius Pillow's ``GaussianBlur(sigma)`` uses, or None if unsure.

    Every plausible evaluation of Pillow's single-precision formula must give the same
    integer radius and box weight; otherwise (and if this Pillow disagrees with the
    formula) the caller blurs each axis with ``gaussian_blur`` itself, which needs no
    radius but cannot shrink its crop between passes.
    """
    if not 0 < sigma < MAX_SIGMA:
        return None
    radius = _radius(sigma)
    if radius is None or not _formula_matches_pillow():
        return None
    return radius


@lru_cache(maxsize=256)
def mask_reach(sigma: float, reach: int) -> int:
    """How far from the black pixels of a black-on-white mask ``GaussianBlur(sigma)`` can
    leave it below 255 (Chebyshev distance); ``reach`` is the blur's support, an upper
    bound. The kernel's far end rounds away, so the answer is a few pixels less.

    The worst case for a pixel with no black within ``t`` is everything else black. Its
    rows through the white ``2t + 1`` square are black-white-black and the others black,
    so Pillow's own blur of those rows, then of the pixel's column, gives its value: all
    ``t`` at once, two small images. A mask with less black is never darker (each pass
    is monotone), and Pillow's edge clamping only repeats pixels of the worst case.
    """
    if reach > MASK_REACH_UP_TO:
        return reach
    first = max(0, 3 * reach // 4 - 2)  # never below this in practice; a larger t is safe
    spans = range(first, reach + 1)
    size, centre = 4 * reach + 1, 2 * reach
    rows = bytearray(size * len(spans))
    for k, t in enumerate(spans):
        rows[k * size + centre - t:k * size + centre + t + 1] = b"\xff" * (2 * t + 1)
    across = Image.frombytes("L", (size, len(spans)), bytes(rows)).im.gaussian_blur(
        (sigma, 0.0))
    columns = bytearray(size * len(spans))
    for k, t in enumerate(spans):
        value = across.getpixel((centre, k))
        columns[k * size + centre - t:k * size + centre + t + 1] = bytes((value,)) * (2 * t + 1)
    down = Image.frombytes("L", (size, len(spans)), bytes(columns)).im.gaussian_blur(
        (sigma, 0.0))
    for k, t in enumerate(spans):
        if down.getpixel((centre, k)) == 255:
            return t
    return reach


@dataclass(frozen=True)
class Blur:
    """One GaussianBlur: ``sigma``, the exact box radius when known, and the reach."""

    sigma: float
    radius: float | None
    step: int
    """Pixels one pass reads either side: ``r + 1``."""

    @property
    def reach(self) -> int:
        """Pixels the whole blur reads either side along an axis (``3 (r + 1)``)."""
        return GAUSSIAN_PASSES * self.step

    @property
    def mask_reach(self) -> int:
        """How far from a black pixel the blurred mask can be below 255: beyond it the
        paper's blend keeps the original pixel (see :func:`mask_reach`)."""
        return mask_reach(self.sigma, self.reach)

    @classmethod
    def of(cls, sigma: float) -> Blur:
        radius = box_radius(sigma)
        if radius is not None:
            return cls(sigma, radius, int(radius) + 1)
        # Unsure of Pillow's radius: the support estimate, one pixel to spare.
        return cls(sigma, None, -(-(gaussian_support(sigma) + 1) // GAUSSIAN_PASSES))

    def along_rows(self, im, lo: int, start: int, stop: int, limit: int):
        """Row-blur the core image ``im``, whose columns are ``[lo, lo + width)`` of a line
        of length ``limit``, for its columns ``[start, stop)``; those must lie at least
        :attr:`reach` inside, except where ``im`` ends at the line's end (clamping there
        is real). Returns ``(blurred, left)``: a core image whose first column is column
        ``left``, exact on ``[start, stop)``, wrong within :attr:`reach` outside it."""
        if self.radius is None:
            return im.gaussian_blur((self.sigma, 0.0)), lo
        for k in range(GAUSSIAN_PASSES - 1, -1, -1):
            im = im.box_blur((self.radius, 0.0), 1)
            if k:  # keep what the remaining k passes read
                keep_lo = max(start - k * self.step, 0)
                keep_hi = min(stop + k * self.step, limit)
                width, height = im.size
                if keep_lo > lo or keep_hi < lo + width:
                    im = im.crop((keep_lo - lo, 0, keep_hi - lo, height))
                lo = keep_lo
        return im, lo

    @property
    def gap(self) -> int:
        """Row pieces of one band must be this far apart for :func:`row_stage` to write in
        place: a piece's wrong margin then never reaches what another piece reads."""
        return (4 if self.radius is not None else 6) * self.step


def row_stage(image, origin: tuple[int, int], pieces: Sequence[Rect], blur: Blur,
              width: int) -> None:
    """Row-blur ``image`` (an RGBA core placed at ``origin`` in image coordinates) in
    place on each piece. Pieces are disjoint; pieces sharing rows are at least
    :attr:`Blur.gap` apart; ``image`` holds every piece widened by the reach (clipped to
    the image, of width ``width``, where the clamping is real)."""
    ox, oy = origin
    reach = blur.reach
    for x0, y0, x1, y1 in pieces:
        lo, hi = max(x0 - reach, 0), min(x1 + reach, width)
        crop = image.crop((lo - ox, y0 - oy, hi - ox, y1 - oy))
        done, left = blur.along_rows(crop, lo, x0, x1, width)
        done_width = done.size[0]
        image.paste(done, (left - ox, y0 - oy, left + done_width - ox, y1 - oy))


def column_piece(image, origin: tuple[int, int], piece: Rect, blur: Blur, height: int):
    """The fully blurred RGBA core of ``piece`` from the row-blurred ``image`` (RGBA core
    at ``origin``, holding the piece grown by the reach vertically, clipped)."""
    ox, oy = origin
    x0, y0, x1, y1 = piece
    lo, hi = max(y0 - blur.reach, 0), min(y1 + blur.reach, height)
    column = image.crop((x0 - ox, lo - oy, x1 - ox, hi - oy)).transpose(_TRANSPOSE)
    done, left = blur.along_rows(column, lo, y0, y1, height)
    if left != y0 or done.size[0] != y1 - y0:
        done = done.crop((y0 - left, 0, y1 - left, x1 - x0))
    return done.transpose(_TRANSPOSE)
