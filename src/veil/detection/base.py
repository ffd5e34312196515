"""The detector interface and the registry that builds detectors by name.

A detector takes a batch of RGB ``uint8`` arrays of any sizes and returns one
list of :class:`veil.boxes.Box` per image, in input order, in that image's own
pixels, each with ``score`` set and ``source`` = the detector's name. Anything
that follows this shape (a single network, an ensemble, a flip / multi-scale /
tiling wrapper around another detector) plugs into ``detect`` and ``audit``.

The registry maps a name to ``"module:attribute"`` and imports it only when that
detector is built, so listing detectors never imports onnxruntime or an
optional dependency such as mtcnn.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from veil.boxes import Box
from veil.errors import ImageError, VeilError


@runtime_checkable
class Detector(Protocol):
    """Finds faces. ``name`` is what its boxes carry as ``source``."""

    name: str

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        """One list of boxes per image (RGB uint8, H x W x 3), in input order."""
        ...


_REGISTRY: dict[str, str | Callable[..., Detector]] = {
    "centerface": "veil.detection.centerface:centerface",
    "mtcnn": "veil.detection.mtcnn:MTCNNDetector",
    "multiscale": "veil.detection.multiscale:MultiScaleDetector",
    "ensemble": "veil.detection.ensemble:EnsembleDetector",
    "fast": "veil.detection.profiles:fast",
    "balanced": "veil.detection.profiles:balanced",
    "thorough": "veil.detection.profiles:thorough",
}


def register_detector(name: str, factory: str | Callable[..., Detector]) -> None:
    """Make ``create_detector(name, **options)`` call ``factory(**options)``.

    ``factory`` is a callable or a lazy ``"module:attribute"`` reference.
    """
    _REGISTRY[name] = factory


def available_detectors() -> list[str]:
    return sorted(_REGISTRY)


def create_detector(name: str = "centerface", **options: object) -> Detector:
    """Build the detector registered as ``name`` with ``options``.

    Unknown names and unknown options raise :class:`VeilError` saying what is
    accepted, so a typo on the command line gets a useful message.
    """
    if name not in _REGISTRY:
        raise VeilError(
            f"unknown detector {name!r}; available: {', '.join(available_detectors())}"
        )
    factory = _resolve(_REGISTRY[name])
    accepted = _accepted_options(factory)
    if accepted is not None:
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise VeilError(
                f"detector {name!r} has no option {', '.join(unknown)}; "
                f"its options: {', '.join(sorted(accepted)) or '(none)'}"
            )
    return factory(**options)


def check_image(image: object, index: int) -> np.ndarray:
    """Return ``image`` as a C-contiguous RGB uint8 array, or raise ImageError.

    Detectors are strict about their input so that a BGR, RGBA or float array is
    a clear error at the boundary rather than silently wrong boxes.
    """
    if not isinstance(image, np.ndarray):
        raise ImageError(f"image {index}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(
            f"image {index}: expected an RGB uint8 array of shape (H, W, 3), got "
            f"{image.dtype} {image.shape}; convert with Pillow's Image.convert('RGB')"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"image {index}: empty image of shape {image.shape}")
    return np.ascontiguousarray(image)


def _resolve(factory: str | Callable[..., Detector]) -> Callable[..., Detector]:
    if not isinstance(factory, str):
        return factory
    module_name, _, attribute = factory.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def _accepted_options(factory: Callable[..., Detector]) -> set[str] | None:
    """Keyword names ``factory`` takes, or None when it takes ``**kwargs``."""
    parameters = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {
        p.name for p in parameters
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }
