"""Methods that replace face pixels outright: constant colour (overlay, solid) and mosaic.

They cover every pixel a box touches (floor/ceil of its coordinates): for privacy a
fraction of a pixel too much beats a visible sliver of face. The ellipse shape covers the
pixels whose square meets the ellipse inscribed in the box.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from veil.boxes import Box
from veil.errors import VeilError
from veil.obfuscation import regions as rg
from veil.obfuscation._common import (
    IMAGENET_MEAN_RGB,
    ImageLike,
    Rect,
    Shape,
    as_rects,
    check_color,
    check_fraction,
    check_shape,
    image_size,
    usable_array,
)


def _cover(
    size: tuple[int, int], boxes: Sequence[Box], expand_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(enlarged float boxes, clipped integer rects of the pixels they touch, the same
    rects unclipped), row-aligned; boxes that miss the image are dropped."""
    expand_fraction = check_fraction("expand_fraction", expand_fraction)
    xyxy = usable_array(boxes)
    if len(xyxy) and expand_fraction:
        longer = np.maximum(xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1])
        margin = (expand_fraction * longer)[:, None]
        xyxy = np.concatenate([xyxy[:, :2] - margin, xyxy[:, 2:] + margin], axis=1)
    rects = rg.covering_rects(xyxy)
    clipped = rects.copy()
    clipped[:, 0::2] = np.clip(rects[:, 0::2], 0, size[0])
    clipped[:, 1::2] = np.clip(rects[:, 1::2], 0, size[1])
    keep = (clipped[:, 0] < clipped[:, 2]) & (clipped[:, 1] < clipped[:, 3])
    return xyxy[keep], clipped[keep], rects[keep]


def _ellipse_mask(box: np.ndarray, rect: Rect) -> np.ndarray:
    """Pixels of ``rect`` whose unit square meets the ellipse inscribed in ``box``.

    The ellipse test is separable per axis, so the point of a pixel square closest (in
    ellipse-normalised distance) to the centre is the centre clamped into the square.
    """
    x0, y0, x1, y1 = rect
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    rx, ry = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    xs = np.arange(x0, x1, dtype=np.float64)
    ys = np.arange(y0, y1, dtype=np.float64)
    dx = (np.clip(cx, xs, xs + 1) - cx) / rx
    dy = (np.clip(cy, ys, ys + 1) - cy) / ry
    return dy[:, None] ** 2 + dx[None, :] ** 2 <= 1.0


def _like(image: ImageLike, array: np.ndarray) -> ImageLike:
    return Image.fromarray(array) if isinstance(image, Image.Image) else array


def _fill(
    image: ImageLike, boxes: Sequence[Box], color: Sequence[int], shape: str,
    expand_fraction: float,
) -> ImageLike:
    size = image_size(image)
    rgb = np.array(check_color(color), dtype=np.uint8)
    check_shape(shape)
    xyxy, rects, _ = _cover(size, boxes, expand_fraction)
    if len(rects) == 0:
        return image.copy()
    out = np.array(image, dtype=np.uint8, copy=True)
    for box, rect in zip(xyxy, as_rects(rects), strict=True):
        x0, y0, x1, y1 = rect
        view = out[y0:y1, x0:x1]
        if shape == "ellipse":
            view[_ellipse_mask(box, rect)] = rgb
        else:
            view[...] = rgb
    return _like(image, out)


def overlay(
    image: ImageLike,
    boxes: Sequence[Box],
    *,
    color: Sequence[int] = IMAGENET_MEAN_RGB,
    shape: Shape = "rectangle",
    expand_fraction: float = 0.0,
) -> ImageLike:
    """Cover each face with a constant colour (the paper's "overlay").

    ``color`` defaults to ImageNet's mean, which the paper implies but does not publish;
    ``expand_fraction`` enlarges each box by that fraction of its longer side, every side.
    """
    return _fill(image, boxes, color, shape, expand_fraction)


def solid(
    image: ImageLike,
    boxes: Sequence[Box],
    *,
    color: Sequence[int] = (0, 0, 0),
    shape: Shape = "rectangle",
) -> ImageLike:
    """Opaque fill, black by default (deface's "solid"): :func:`overlay` with its own
    default colour and no enlargement."""
    return _fill(image, boxes, color, shape, 0.0)


def fill_regions(
    size: tuple[int, int], boxes: Sequence[Box], *, expand_fraction: float = 0.0,
    **_options: object,
) -> list[Rect]:
    """Rectangles outside which overlay, solid and mosaic leave pixels unchanged."""
    return as_rects(_cover(size, boxes, expand_fraction)[1])


def _block_means(pixels: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Each pixel replaced by the rounded mean of its block; ``xs``/``ys`` start blocks."""
    sums = np.add.reduceat(np.add.reduceat(pixels.astype(np.int64), ys, axis=0), xs, axis=1)
    widths = np.diff(np.append(xs, pixels.shape[1]))
    heights = np.diff(np.append(ys, pixels.shape[0]))
    counts = (heights[:, None] * widths[None, :])[:, :, None]
    means = ((sums + counts // 2) // counts).astype(np.uint8)
    return np.repeat(np.repeat(means, heights, axis=0), widths, axis=1)


def _block_starts(start: int, clipped_start: int, clipped_end: int, step: int) -> np.ndarray:
    """Block boundaries inside [clipped_start, clipped_end), relative to clipped_start, on
    the grid that begins at ``start`` (possibly outside the image)."""
    first = clipped_start + (start - clipped_start) % step
    inner = np.arange(first, clipped_end, step) - clipped_start
    return inner if len(inner) and inner[0] == 0 else np.r_[0, inner].astype(np.int64)


def mosaic(
    image: ImageLike,
    boxes: Sequence[Box],
    *,
    block: int | None = None,
    shape: Shape = "rectangle",
) -> ImageLike:
    """Pixelate each face: every ``block`` x ``block`` cell becomes its mean colour.

    ``block=None`` adapts to the face: about 10 blocks across its longer side, at least
    2 px. The grid starts at the box's first touched pixel (even outside the image), so a
    face's mosaic does not depend on other boxes; every box reads the original pixels and
    where boxes overlap the later one wins. Cells cut by the image border average the
    pixels that exist. With ``shape="ellipse"`` only pixels touching the inscribed ellipse
    take their (rectangular) cell's mean.
    """
    size = image_size(image)
    check_shape(shape)
    if block is not None and (
        isinstance(block, bool) or not isinstance(block, int | np.integer) or block < 2
    ):
        raise VeilError(f"block must be an integer >= 2 (pixels) or None, got {block!r}")
    xyxy, rects, unclipped = _cover(size, boxes, 0.0)
    if len(rects) == 0:
        return image.copy()
    src = np.asarray(image)
    out = np.array(src, copy=True)
    for box, rect, full in zip(xyxy, as_rects(rects), as_rects(unclipped), strict=True):
        x0, y0, x1, y1 = rect
        if block is None:
            step = max(2, round(max(box[2] - box[0], box[3] - box[1]) / 10))
        else:
            step = int(block)
        xs = _block_starts(full[0], x0, x1, step)
        ys = _block_starts(full[1], y0, y1, step)
        pixelated = _block_means(src[y0:y1, x0:x1], xs, ys)
        view = out[y0:y1, x0:x1]
        if shape == "ellipse":
            keep = _ellipse_mask(box, rect)
            view[keep] = pixelated[keep]
        else:
            view[...] = pixelated
    return _like(image, out)
