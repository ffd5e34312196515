"""Face obfuscation methods: pure functions ``f(image, boxes, *, options) -> image``.

Dtype rule, for every method: ``image`` is a ``PIL.Image.Image`` in mode RGB or a numpy
``uint8`` array of shape ``(H, W, 3)``; the result is a new object of the same kind, size
and dtype, and the input is never modified (unless a blur is asked to work
``in_place`` on a PIL image: :func:`veil.obfuscation.obfuscate_canvas`). Anything else
raises ImageError.

``boxes`` are :class:`veil.boxes.Box` in pixels; they may overlap, reach outside the
image or be larger than it. Degenerate boxes (x0 >= x1, y0 >= y1, NaN or infinite) are
skipped silently, as the paper's code does; callers that want a message per skipped box
call :func:`veil.boxes.usable_boxes` themselves. With no usable box the result is
pixel-identical to the input.

Every method touches only the pixels its faces affect, so its cost follows face area, not
image area; the blurs nonetheless give exactly the pixels of the published whole-image
code (:mod:`veil.obfuscation.reference`). The ``*_regions`` functions say, per method,
outside which rectangles the output is guaranteed to equal the input; the ``*_reads``
functions, which input pixels a blur reads to compute them (the fills read at most their
regions).
"""

from veil.obfuscation._common import IMAGENET_MEAN_RGB, SHAPES, ImageLike, Rect, Shape
from veil.obfuscation.blurring import (
    blur,
    blur_reads,
    blur_regions,
    minimal_blur,
    minimal_blur_reads,
    minimal_blur_regions,
)
from veil.obfuscation.fills import fill_regions, mosaic, overlay, solid

__all__ = [
    "IMAGENET_MEAN_RGB",
    "SHAPES",
    "ImageLike",
    "Rect",
    "Shape",
    "blur",
    "blur_reads",
    "blur_regions",
    "fill_regions",
    "minimal_blur",
    "minimal_blur_reads",
    "minimal_blur_regions",
    "mosaic",
    "overlay",
    "solid",
]
