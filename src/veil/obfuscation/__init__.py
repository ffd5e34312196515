"""Face obfuscation: the paper's blur and its relatives as pure image functions.

``f(image, boxes, **options) -> image`` for PIL RGB images or uint8 (H, W, 3) arrays
(same type out, input untouched); see :mod:`veil.obfuscation.methods` for the rules and
:data:`METHODS` for the methods by name.
"""

from veil.obfuscation.methods import (
    IMAGENET_MEAN_RGB,
    SHAPES,
    blur,
    minimal_blur,
    mosaic,
    overlay,
    solid,
)
from veil.obfuscation.registry import (
    METHODS,
    MethodSpec,
    Param,
    affected_region,
    method_spec,
    obfuscate,
    obfuscate_canvas,
    parse_method_options,
    read_region,
)

__all__ = [
    "IMAGENET_MEAN_RGB",
    "METHODS",
    "SHAPES",
    "MethodSpec",
    "Param",
    "affected_region",
    "blur",
    "method_spec",
    "minimal_blur",
    "mosaic",
    "obfuscate",
    "obfuscate_canvas",
    "overlay",
    "parse_method_options",
    "read_region",
    "solid",
]
