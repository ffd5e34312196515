"""Types, argument checks and box parsing shared by the obfuscation methods."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from PIL import Image

from veil.boxes import Box
from veil.errors import ImageError, VeilError

ImageLike = Image.Image | np.ndarray
Shape = Literal["rectangle", "ellipse"]
Rect = tuple[int, int, int, int]

SHAPES: tuple[str, ...] = ("rectangle", "ellipse")

IMAGENET_MEAN_RGB: tuple[int, int, int] = (124, 116, 104)
"""ImageNet's mean colour (0.485, 0.456, 0.406) x 255, rounded: veil's default overlay."""


def image_size(image: ImageLike) -> tuple[int, int]:
    """``(width, height)`` of a supported image; ImageError for anything else."""
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            raise ImageError(f"expected an RGB image, got mode {image.mode!r}: convert('RGB') it")
        return image.size
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ImageError(
                f"expected a uint8 array of shape (H, W, 3), got {image.dtype} {image.shape}"
            )
        return image.shape[1], image.shape[0]
    raise ImageError(f"expected a PIL image or a numpy array, got {type(image).__name__}")


def usable_array(boxes: Sequence[Box]) -> np.ndarray:
    """Usable boxes as a float64 ``(n, 4)`` array of x0, y0, x1, y1.

    Same rule as :func:`veil.boxes.usable_boxes` (finite, x0 < x1, y0 < y1), without a
    message per box: one vectorised test instead of Python per box, for crowds.
    """
    if not boxes:
        return np.zeros((0, 4), dtype=np.float64)
    xyxy = np.array([(b.x0, b.y0, b.x1, b.y1) for b in boxes], dtype=np.float64)
    keep = np.isfinite(xyxy).all(axis=1) & (xyxy[:, 0] < xyxy[:, 2]) & (xyxy[:, 1] < xyxy[:, 3])
    return xyxy if keep.all() else xyxy[keep]


def check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not (value >= 0 and math.isfinite(value)):
        raise VeilError(f"{name} must be a finite number >= 0, got {value}")
    return value


def check_shape(shape: str) -> str:
    if shape not in SHAPES:
        raise VeilError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    return shape


def check_color(color: Sequence[int]) -> tuple[int, int, int]:
    try:
        values = tuple(color)
    except TypeError:
        values = ()
    if len(values) != 3 or not all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) and 0 <= v <= 255
        for v in values
    ):
        raise VeilError(f"color must be three integers 0-255 (R, G, B), got {color!r}")
    return (int(values[0]), int(values[1]), int(values[2]))


def as_rects(rects: np.ndarray) -> list[Rect]:
    return [(a, b, c, d) for a, b, c, d in rects.tolist()]
