"""The published whole-image blurs, kept only to test and benchmark veil against.

:func:`paper_blur` is the method of *A Study of Face Obfuscation in ImageNet* exactly as
released (princetonvisualai/imagenet-face-obfuscation, ``experiments/blurring.py``), and
:func:`minimal_blur_reference` is the follow-up "minimalBlur" (dfouhey/minimalBlur), both
re-stated here step by step with veil's Box records as input. They blur the *whole* image
and mask whatever the faces' size, which is what veil's region-only engine
(:mod:`veil.obfuscation.methods`) must reproduce pixel for pixel, faster. Do not use them
to produce data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from veil.boxes import Box


def paper_blur(img: Image.Image, boxes: Sequence[Box]) -> Image.Image:
    """Whole-image blur of the ICML 2022 paper (appendix B and its released code).

    White "L" mask; each box with x0 < x1 and y0 < y1 is enlarged by 0.1 x its longer side
    (the code calls it the diagonal) on every side and drawn black with float coordinates;
    image and mask are both blurred with GaussianBlur(0.1 x the largest longer side);
    result = composite(original, blurred image, blurred mask).
    """
    mask = Image.new(mode="L", size=img.size, color="white")
    max_longer = 0.0
    for box in boxes:
        if box.x0 >= box.x1 or box.y0 >= box.y1:
            continue
        longer = max(box.x1 - box.x0, box.y1 - box.y0)
        max_longer = max(max_longer, longer)
        rect = [
            box.x0 - 0.1 * longer,
            box.y0 - 0.1 * longer,
            box.x1 + 0.1 * longer,
            box.y1 + 0.1 * longer,
        ]
        ImageDraw.Draw(mask).rectangle(rect, fill="black")
    # float(): numpy scalars in boxes would break Pillow >= 11's radius check; same value.
    blurred_img = img.filter(ImageFilter.GaussianBlur(float(0.1 * max_longer)))
    blurred_mask = mask.filter(ImageFilter.GaussianBlur(float(0.1 * max_longer)))
    return Image.composite(img, blurred_img, blurred_mask)


def minimal_blur_reference(
    img: Image.Image,
    boxes: Sequence[Box],
    *,
    sigma_fraction: float = 0.1,
    expand_fraction: float = 0.15,
    min_diagonal_fraction: float = 0.025,
    force_inside: bool = False,
) -> Image.Image:
    """Whole-image "minimalBlur": one blur size for all faces, floored for tiny faces.

    The largest true diagonal (floored at 2.5% of the image diagonal) sets both the
    enlargement of every box (0.15 x) and sigma (0.1 x). With ``force_inside`` the boxes
    themselves are painted black into the *blurred* mask so that faces are fully blurred.
    Like the original it skips no box: pass usable boxes only.
    """
    width, height = img.size
    max_diag = min_diagonal_fraction * np.hypot(width, height)
    for box in boxes:
        max_diag = max(np.hypot(box.y1 - box.y0, box.x1 - box.x0), max_diag)

    def draw_boxes(target: Image.Image, expand: float) -> None:
        draw = ImageDraw.Draw(target)
        for box in boxes:
            draw.rectangle(
                (
                    box.x0 - expand * max_diag,
                    box.y0 - expand * max_diag,
                    box.x1 + expand * max_diag,
                    box.y1 + expand * max_diag,
                ),
                fill="black",
            )

    mask = Image.new(mode="L", size=img.size, color="white")
    draw_boxes(mask, expand_fraction)
    # float(): minimalBlur passes a numpy scalar, which Pillow >= 11's radius check breaks.
    blur = ImageFilter.GaussianBlur(float(sigma_fraction * max_diag))
    blurred_img = img.filter(blur)
    blurred_mask = mask.filter(blur)
    if force_inside:
        draw_boxes(blurred_mask, 0.0)
    return Image.composite(img, blurred_img, blurred_mask)
