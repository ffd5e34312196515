"""The paper's mask-composite blur and minimalBlur, computed face region by face region.

Both published methods blur the whole image and a whole-image mask, then blend. veil
gets the same pixels from pieces of the image: a pixel can only change where the blurred
mask is below 255, i.e. within the blur's reach of a painted box, and the blurred values
there depend only on pixels within that reach again (:mod:`.regions`, :mod:`.separable`
derive both from Pillow's algorithm). What keeps it cheap and bit-exact:

* the mask rides along as the alpha band of the RGBA image being blurred: Pillow stores
  RGB in 4 bytes a pixel and blurs the padding byte anyway, so the mask's blur is free;
* the blur runs axis by axis on disjoint pieces (:mod:`.pieces`): rows once over what
  the column passes read, columns only where pixels can change, every pass on just what
  the next one reads (:mod:`.separable`);
* each pass runs down axis 0 of a numpy array in a numba kernel with Pillow's integer
  arithmetic (:mod:`.array_stages`): columns as they lie, rows on one transposed copy,
  so no pass is scalar and no piece is transposed twice (Pillow's own passes, which
  run along rows only, remain the path without numba);
* composite(original, blurred, m) = blend(m, blurred, original) is the same integer
  expression as pasting the blurred piece over the original through 255 - m, so the
  result is pasted in place instead of copied around.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from veil.boxes import Box
from veil.obfuscation import array_stages
from veil.obfuscation import regions as rg
from veil.obfuscation._common import (
    ImageLike,
    Rect,
    check_fraction,
    image_size,
)
from veil.obfuscation.pieces import plan_pieces
from veil.obfuscation.separable import Blur, column_piece, row_stage


@dataclass(frozen=True)
class BlurPlan:
    """What a mask-composite blur does to one image, in integer pixel rectangles.

    ``black``: half-open rects painted black in the mask (unclipped, as Pillow would fill
    them), ``sigma``: the GaussianBlur radius, ``inside``: rects painted black into the
    *blurred* mask afterwards (minimalBlur's force-inside), or None.
    """

    black: list[Rect]
    sigma: float
    inside: list[Rect] | None = None

    def regions(self, width: int, height: int) -> list[Rect]:
        """Where the blurred mask can drop below 255 (one rect per box reaching the image):
        outside these rectangles the output equals the input exactly."""
        if self.sigma <= 0:
            return []
        near = Blur.of(self.sigma).mask_reach
        return rg.clip_rects(rg.grow_rects(rg.clip_rects(self.black, width, height), near),
                             width, height)

    def reads(self, width: int, height: int) -> list[Rect]:
        """The input pixels :func:`run_plan` reads (empty when it changes nothing): a
        canvas that holds the image's pixels there, whatever it holds elsewhere, gets the
        same output inside :meth:`regions`."""
        black = rg.clip_rects(self.black, width, height)
        if self.sigma <= 0 or not black:
            return []
        return [plan_pieces(black, Blur.of(self.sigma), width, height).read]


_NOTHING = BlurPlan([], 0.0)


def _usable(boxes: Sequence[Box]) -> list[tuple[float, float, float, float]]:
    """Boxes with finite coordinates and sides, x0 < x1 and y0 < y1, as float tuples: the
    rule of :func:`veil.boxes.usable_boxes`, silently (callers wanting messages call it)."""
    usable = []
    for box in boxes:
        x0, y0, x1, y1 = float(box.x0), float(box.y0), float(box.x1), float(box.y1)
        # Finite sides also rule out infinite and (overflowing) astronomically far corners.
        if x0 < x1 and y0 < y1 and math.isfinite(x1 - x0) and math.isfinite(y1 - y0):
            usable.append((x0, y0, x1, y1))
    return usable


def paper_plan(
    size: tuple[int, int], boxes: Sequence[Box], sigma_fraction: float = 0.1,
    expand_fraction: float = 0.1,
) -> BlurPlan:
    """The ICML 2022 blur: per-box enlargement by its longer side, sigma by the longest."""
    sigma_fraction = check_fraction("sigma_fraction", sigma_fraction)
    expand_fraction = check_fraction("expand_fraction", expand_fraction)
    usable = _usable(boxes)
    if not usable:
        return _NOTHING
    # The same float operations as the released code, so coordinates agree to the bit.
    black, longest = [], 0.0
    for x0, y0, x1, y1 in usable:
        longer = max(x1 - x0, y1 - y0)
        longest = max(longest, longer)
        margin = expand_fraction * longer
        black.append(rg.pillow_fill_rect(x0 - margin, y0 - margin, x1 + margin, y1 + margin,
                                         *size))
    return BlurPlan(black, sigma_fraction * longest)


def minimal_plan(
    size: tuple[int, int], boxes: Sequence[Box], sigma_fraction: float = 0.1,
    expand_fraction: float = 0.15, min_diagonal_fraction: float = 0.025,
    force_inside: bool = False,
) -> BlurPlan:
    """minimalBlur: one enlargement and sigma for all boxes, from the largest diagonal."""
    sigma_fraction = check_fraction("sigma_fraction", sigma_fraction)
    expand_fraction = check_fraction("expand_fraction", expand_fraction)
    min_diagonal_fraction = check_fraction("min_diagonal_fraction", min_diagonal_fraction)
    usable = _usable(boxes)
    if not usable:
        return _NOTHING
    # np.hypot (C's hypot) and this order of operations, as in minimalBlur, so the floats
    # agree to the bit.
    xyxy = np.array(usable)
    max_diag = float(min_diagonal_fraction * np.hypot(*size))
    diagonals = np.hypot(xyxy[:, 3] - xyxy[:, 1], xyxy[:, 2] - xyxy[:, 0])
    max_diag = max(float(diagonals.max()), max_diag)
    margin = expand_fraction * max_diag
    black = [rg.pillow_fill_rect(x0 - margin, y0 - margin, x1 + margin, y1 + margin, *size)
             for x0, y0, x1, y1 in usable]
    inside = [rg.pillow_fill_rect(*box, *size) for box in usable] if force_inside else None
    return BlurPlan(black, sigma_fraction * max_diag, inside)


def _rgba_source(rgb, box: Rect, black: list[Rect]):
    """RGBA core image of ``box`` of the RGB core ``rgb``, with the paper's mask as alpha
    (255, black rects 0). Pasting RGB into RGBA copies four bytes a pixel, and a shifted
    paste clips to the target, so the input is not cropped first; putband sets the
    alpha."""
    x0, y0, x1, y1 = box
    size = (x1 - x0, y1 - y0)
    source = Image.core.new("RGBA", size)
    width, height = rgb.size
    source.paste(rgb, (-x0, -y0, width - x0, height - y0))
    mask = Image.core.fill("L", size, 255)
    _paint_black(mask, black, box)
    source.putband(mask, 3)
    return source


def run_plan(image: ImageLike, plan: BlurPlan, *, in_place: bool = False) -> ImageLike:
    """Apply a blur plan region by region; pixel-identical to the whole-image computation.

    Only pixels within :attr:`Blur.mask_reach` of a painted rect can change. They are
    covered by disjoint column pieces; the row-blurred image (mask as alpha) is computed
    on those pieces grown by the blur's reach vertically, in row pieces read the reach
    wider (or up to the image border, where Pillow's edge clamping then agrees); each
    column piece is then column-blurred from it and blended in through its blurred mask.
    Pixels are read from the input, never from the output, so nearby regions cannot feed
    one another. ``in_place``: blend into ``image`` itself (a PIL image Pillow does not
    mark read-only) instead of a copy: the pieces are disjoint and read from a copy of
    what they read, so the pixels are the same, and a caller that discards its canvas
    saves copying the whole picture.
    """
    width, height = image_size(image)
    black = rg.clip_rects(plan.black, width, height)
    if plan.sigma <= 0 or not black:
        return image if in_place and isinstance(image, Image.Image) else image.copy()
    if not isinstance(image, Image.Image):
        return np.array(run_plan(Image.fromarray(np.ascontiguousarray(image)), plan))
    image.load()
    blur = Blur.of(plan.sigma)
    pieces = plan_pieces(black, blur, width, height)
    read = pieces.read
    source = _rgba_source(image.im, read, black)
    inside = None if plan.inside is None else rg.clip_rects(plan.inside, width, height)
    out = image if in_place and not image.readonly else image.copy()  # mapped: copy
    target = out.im
    if array_stages.available(blur):
        transposed = array_stages.transposed_pixels(np.asarray(image._new(source)))
        array_stages.row_stage_array(transposed, read[:2], pieces.rows, blur, width)
        rows = array_stages.transposed_pixels(transposed)
        for piece in pieces.columns:
            pixels = array_stages.column_piece_array(rows, read[:2], piece, blur, height)
            blurred, weight = _as_cores(pixels, inside, piece)
            target.paste(blurred, piece, weight)
        return out
    row_stage(source, read[:2], pieces.rows, blur, width)
    for piece in pieces.columns:
        blurred = column_piece(source, read[:2], piece, blur, height)
        alpha = blurred.getband(3)
        if inside:
            _paint_black(alpha, inside, piece)
        # Pasting RGBA into RGB copies the colour bytes; the weight is the blurred share.
        target.paste(blurred, piece, alpha.chop_invert())
    return out


def _as_cores(pixels: np.ndarray, inside: list[Rect] | None, piece: Rect):
    """The blurred RGBA piece and its paste weight (255 - blurred mask; 255 where
    ``inside`` rects force full blur) as Pillow core images sharing the arrays' memory."""
    height, width = pixels.shape[:2]
    weight = np.subtract(255, pixels[..., 3], dtype=np.uint8)
    if inside:
        x0, y0, x1, y1 = piece
        for a, b, c, d in inside:
            a, b, c, d = max(a, x0) - x0, max(b, y0) - y0, min(c, x1) - x0, min(d, y1) - y0
            if a < c and b < d:
                weight[b:d, a:c] = 255
    size = (width, height)
    blurred = Image.frombuffer("RGBA", size, pixels, "raw", "RGBA", 0, 1)
    return blurred.im, Image.frombuffer("L", size, weight, "raw", "L", 0, 1).im


def _paint_black(mask, rects: list[Rect], box: Rect) -> None:
    """Paint the parts of ``rects`` inside ``box`` black in ``mask`` (which covers box)."""
    x0, y0, x1, y1 = box
    for a, b, c, d in rects:
        a, b, c, d = max(a, x0) - x0, max(b, y0) - y0, min(c, x1) - x0, min(d, y1) - y0
        if a < c and b < d:
            mask.paste(0, (a, b, c, d))


def blur(
    image: ImageLike,
    boxes: Sequence[Box],
    *,
    sigma_fraction: float = 0.1,
    expand_fraction: float = 0.1,
    in_place: bool = False,
) -> ImageLike:
    """The paper's Gaussian blur, pixel-identical to its released whole-image code.

    Each box is enlarged by ``expand_fraction`` x its longer side and painted into a mask;
    image and mask are blurred with sigma = ``sigma_fraction`` x the longest box side in
    the image and the blurred image is blended in through the blurred mask, so the blur
    fades out around each face instead of ending at a hard edge. ``in_place``: write
    into a PIL ``image`` instead of a copy (:func:`run_plan`).
    """
    return run_plan(image, paper_plan(image_size(image), boxes, sigma_fraction,
                                      expand_fraction), in_place=in_place)


def minimal_blur(
    image: ImageLike,
    boxes: Sequence[Box],
    *,
    sigma_fraction: float = 0.1,
    expand_fraction: float = 0.15,
    min_diagonal_fraction: float = 0.025,
    force_inside: bool = False,
    in_place: bool = False,
) -> ImageLike:
    """The follow-up "minimalBlur": one blur size per image, set by the largest face.

    The largest true diagonal (at least ``min_diagonal_fraction`` of the image diagonal,
    so tiny faces still get a real blur) sets both the enlargement of every box
    (``expand_fraction`` x) and sigma (``sigma_fraction`` x). ``force_inside`` makes the
    boxes themselves fully blurred, for tiny faces next to enormous ones. ``in_place``
    as for :func:`blur`.
    """
    plan = minimal_plan(image_size(image), boxes, sigma_fraction, expand_fraction,
                        min_diagonal_fraction, bool(force_inside))
    return run_plan(image, plan, in_place=in_place)


def blur_regions(
    size: tuple[int, int], boxes: Sequence[Box], *, sigma_fraction: float = 0.1,
    expand_fraction: float = 0.1,
) -> list[Rect]:
    """Rectangles outside which :func:`blur` leaves pixels unchanged."""
    return paper_plan(size, boxes, sigma_fraction, expand_fraction).regions(*size)


def blur_reads(
    size: tuple[int, int], boxes: Sequence[Box], *, sigma_fraction: float = 0.1,
    expand_fraction: float = 0.1,
) -> list[Rect]:
    """Rectangles holding every pixel :func:`blur` reads."""
    return paper_plan(size, boxes, sigma_fraction, expand_fraction).reads(*size)


def minimal_blur_reads(
    size: tuple[int, int], boxes: Sequence[Box], *, sigma_fraction: float = 0.1,
    expand_fraction: float = 0.15, min_diagonal_fraction: float = 0.025,
    force_inside: bool = False,
) -> list[Rect]:
    """Rectangles holding every pixel :func:`minimal_blur` reads."""
    plan = minimal_plan(size, boxes, sigma_fraction, expand_fraction, min_diagonal_fraction,
                        bool(force_inside))
    return plan.reads(*size)


def minimal_blur_regions(
    size: tuple[int, int], boxes: Sequence[Box], *, sigma_fraction: float = 0.1,
    expand_fraction: float = 0.15, min_diagonal_fraction: float = 0.025,
    force_inside: bool = False,
) -> list[Rect]:
    """Rectangles outside which :func:`minimal_blur` leaves pixels unchanged."""
    plan = minimal_plan(size, boxes, sigma_fraction, expand_fraction, min_diagonal_fraction,
                        bool(force_inside))
    return plan.regions(*size)
