"""The paper's mask-composite blur and minimalBlur, computed face region by face region.

Both published methods blur the whole image and a whole-image mask, then blend. veil
gets the same pixels from crops: a pixel can only change where the blurred mask is below
255, i.e. within the blur's reach of a painted box, and the blurred values there depend
only on pixels within that reach again (:mod:`.regions` derives both from Pillow's
algorithm). Three things keep it cheap and bit-exact:

* the mask rides along as the alpha band of an RGBA crop: Pillow stores RGB in 4 bytes
  a pixel and blurs the padding byte anyway, so the mask's blur costs nothing;
* rows are blurred over the whole crop but columns only over the output's columns
  (Pillow does rows then columns, rounding in between, so two calls are identical);
* composite(original, blurred, m) = blend(m, blurred, original) is the same integer
  expression as pasting the blurred crop over the original through 255 - m, so the
  result is pasted in place instead of copied around.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from veil.boxes import Box
from veil.obfuscation import regions as rg
from veil.obfuscation._common import (
    ImageLike,
    Rect,
    as_rects,
    check_fraction,
    image_size,
    usable_array,
)


@dataclass(frozen=True)
class BlurPlan:
    """What a mask-composite blur does to one image, in integer pixel rectangles.

    ``black``: half-open rects painted black in the mask (unclipped, as Pillow would fill
    them), ``sigma``: the GaussianBlur radius, ``inside``: rects painted black into the
    *blurred* mask afterwards (minimalBlur's force-inside), or None.
    """

    black: np.ndarray
    sigma: float
    inside: np.ndarray | None = None

    def regions(self, width: int, height: int) -> np.ndarray:
        """Where the blurred mask can drop below 255 (one rect per box reaching the image):
        outside these rectangles the output equals the input exactly."""
        black = rg.clip(self.black, width, height)
        if self.sigma <= 0 or len(black) == 0:
            return black[:0]
        return rg.clip(rg.grow(black, rg.gaussian_support(self.sigma)), width, height)


_NOTHING = BlurPlan(np.zeros((0, 4), dtype=np.int64), 0.0)


def paper_plan(
    size: tuple[int, int], boxes: Sequence[Box], sigma_fraction: float = 0.1,
    expand_fraction: float = 0.1,
) -> BlurPlan:
    """The ICML 2022 blur: per-box enlargement by its longer side, sigma by the longest."""
    sigma_fraction = check_fraction("sigma_fraction", sigma_fraction)
    expand_fraction = check_fraction("expand_fraction", expand_fraction)
    xyxy = usable_array(boxes)
    if len(xyxy) == 0:
        return _NOTHING
    # The same float operations as the released code, so coordinates agree to the bit.
    longer = np.maximum(xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1])
    margin = (expand_fraction * longer)[:, None]
    enlarged = np.concatenate([xyxy[:, :2] - margin, xyxy[:, 2:] + margin], axis=1)
    sigma = sigma_fraction * float(longer.max())
    return BlurPlan(rg.pillow_fill_rects(enlarged, *size), sigma)


def minimal_plan(
    size: tuple[int, int], boxes: Sequence[Box], sigma_fraction: float = 0.1,
    expand_fraction: float = 0.15, min_diagonal_fraction: float = 0.025,
    force_inside: bool = False,
) -> BlurPlan:
    """minimalBlur: one enlargement and sigma for all boxes, from the largest diagonal."""
    sigma_fraction = check_fraction("sigma_fraction", sigma_fraction)
    expand_fraction = check_fraction("expand_fraction", expand_fraction)
    min_diagonal_fraction = check_fraction("min_diagonal_fraction", min_diagonal_fraction)
    xyxy = usable_array(boxes)
    if len(xyxy) == 0:
        return _NOTHING
    # np.hypot and this order of operations, as in minimalBlur, so the floats agree.
    max_diag = float(min_diagonal_fraction * np.hypot(*size))
    diagonals = np.hypot(xyxy[:, 3] - xyxy[:, 1], xyxy[:, 2] - xyxy[:, 0])
    max_diag = max(float(diagonals.max()), max_diag)
    margin = expand_fraction * max_diag
    enlarged = np.concatenate([xyxy[:, :2] - margin, xyxy[:, 2:] + margin], axis=1)
    inside = rg.pillow_fill_rects(xyxy, *size) if force_inside else None
    return BlurPlan(rg.pillow_fill_rects(enlarged, *size), sigma_fraction * max_diag, inside)


def _paint(image: Image.Image, rects: list[Rect], origin: tuple[int, int]) -> None:
    """Paint image-coordinate half-open ``rects`` with 0 into ``image`` placed at origin."""
    ox, oy = origin
    width, height = image.size
    draw = None
    for x0, y0, x1, y1 in rects:
        a, b = max(x0 - ox, 0), max(y0 - oy, 0)
        c, d = min(x1 - ox, width), min(y1 - oy, height)
        if a < c and b < d:
            if draw is None:
                draw = ImageDraw.Draw(image)
            draw.rectangle((a, b, c - 1, d - 1), fill=0)


def _blur_crop(
    rgba: Image.Image, sigma: float, columns: tuple[int, int], rows: tuple[int, int]
) -> Image.Image:
    """GaussianBlur(sigma) of ``rgba`` where the caller needs it: the given columns and
    rows (crop coordinates). Bit-identical to blurring the crop in one call."""
    width, height = rgba.size
    if columns == (0, width):
        blurred = rgba.filter(ImageFilter.GaussianBlur(sigma))
    else:
        horizontal = rgba.filter(ImageFilter.GaussianBlur((sigma, 0)))
        narrow = horizontal.crop((columns[0], 0, columns[1], height))
        blurred = narrow.filter(ImageFilter.GaussianBlur((0, sigma)))
    if rows == (0, height):
        return blurred
    return blurred.crop((0, rows[0], columns[1] - columns[0], rows[1]))


def run_plan(image: ImageLike, plan: BlurPlan) -> ImageLike:
    """Apply a blur plan crop by crop; pixel-identical to the whole-image computation.

    Each output rectangle is grown by the blur support to get the crop that determines it
    exactly, clipped at the image border (where Pillow's edge clamping then agrees with
    the whole-image blur). Crops are read from the input, never the output, so nearby
    regions cannot feed one another.
    """
    width, height = image_size(image)
    out = image.copy()
    outputs = plan.regions(width, height)
    if len(outputs) == 0:
        return out
    is_pil = isinstance(image, Image.Image)
    reach = rg.gaussian_support(plan.sigma) + rg.SAFETY_MARGIN
    crops = rg.clip(rg.grow(outputs, reach), width, height)
    black = as_rects(rg.clip(plan.black, width, height))
    inside = None if plan.inside is None else as_rects(rg.clip(plan.inside, width, height))
    written: list[Rect] = []
    for crop, region in rg.merge_regions(crops, outputs):
        cx0, cy0, cx1, cy1 = crop
        rx0, ry0, rx1, ry1 = region
        mask = Image.new("L", (cx1 - cx0, cy1 - cy0), 255)
        _paint(mask, black, (cx0, cy0))
        if is_pil:
            rgba = image.crop(crop)
            rgba.putalpha(mask)
        else:
            array = np.empty((cy1 - cy0, cx1 - cx0, 4), dtype=np.uint8)
            array[..., :3] = image[cy0:cy1, cx0:cx1]
            array[..., 3] = np.asarray(mask)
            rgba = Image.fromarray(array)
        blurred = _blur_crop(rgba, plan.sigma, (rx0 - cx0, rx1 - cx0), (ry0 - cy0, ry1 - cy0))
        blurred_mask = blurred.getchannel("A")
        if inside is not None:
            _paint(blurred_mask, inside, (rx0, ry0))
        weight = ImageChops.invert(blurred_mask)
        # Pasting RGBA into RGB copies the colour bytes; the weight is the blurred share.
        if is_pil and not any(_overlaps(region, done) for done in written):
            out.paste(blurred, (rx0, ry0), weight)
        else:
            if is_pil:
                base = image.crop(region)
            else:
                base = Image.fromarray(np.ascontiguousarray(image[ry0:ry1, rx0:rx1]))
            base.paste(blurred, (0, 0), weight)
            if is_pil:
                out.paste(base, (rx0, ry0))
            else:
                out[ry0:ry1, rx0:rx1] = np.asarray(base)
        written.append(region)
    return out


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def blur(
    image: ImageLike,
    boxes: Sequence[Box],
    *,
    sigma_fraction: float = 0.1,
    expand_fraction: float = 0.1,
) -> ImageLike:
    """The paper's Gaussian blur, pixel-identical to its released whole-image code.

    Each box is enlarged by ``expand_fraction`` x its longer side and painted into a mask;
    image and mask are blurred with sigma = ``sigma_fraction`` x the longest box side in
    the image and the blurred image is blended in through the blurred mask, so the blur
    fades out around each face instead of ending at a hard edge.
    """
    return run_plan(image, paper_plan(image_size(image), boxes, sigma_fraction,
                                      expand_fraction))


def minimal_blur(
    image: ImageLike,
    boxes: Sequence[Box],
    *,
    sigma_fraction: float = 0.1,
    expand_fraction: float = 0.15,
    min_diagonal_fraction: float = 0.025,
    force_inside: bool = False,
) -> ImageLike:
    """The follow-up "minimalBlur": one blur size per image, set by the largest face.

    The largest true diagonal (at least ``min_diagonal_fraction`` of the image diagonal,
    so tiny faces still get a real blur) sets both the enlargement of every box
    (``expand_fraction`` x) and sigma (``sigma_fraction`` x). ``force_inside`` makes the
    boxes themselves fully blurred, for tiny faces next to enormous ones.
    """
    plan = minimal_plan(image_size(image), boxes, sigma_fraction, expand_fraction,
                        min_diagonal_fraction, bool(force_inside))
    return run_plan(image, plan)


def blur_regions(
    size: tuple[int, int], boxes: Sequence[Box], *, sigma_fraction: float = 0.1,
    expand_fraction: float = 0.1,
) -> list[Rect]:
    """Rectangles outside which :func:`blur` leaves pixels unchanged."""
    return as_rects(paper_plan(size, boxes, sigma_fraction, expand_fraction).regions(*size))


def minimal_blur_regions(
    size: tuple[int, int], boxes: Sequence[Box], *, sigma_fraction: float = 0.1,
    expand_fraction: float = 0.15, min_diagonal_fraction: float = 0.025,
    force_inside: bool = False,
) -> list[Rect]:
    """Rectangles outside which :func:`minimal_blur` leaves pixels unchanged."""
    plan = minimal_plan(size, boxes, sigma_fraction, expand_fraction, min_diagonal_fraction,
                        bool(force_inside))
    return as_rects(plan.regions(*size))
