"""Helpers that turn images and tables into one HTML file a user can mail or archive.

Shared machinery for every page veil writes (the audit's report, the demo's, the
study's): Jinja2 templates from ``veil/templates`` and images inlined as data URIs, so a
report stays one file. It sits low in the layers so the stages can write their own
reports without importing the study's.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
from PIL import Image, ImageDraw

from veil.boxes import Box
from veil.files import atomic_write_bytes

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("veil", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
)


def thumbnail_uri(image: Image.Image, max_side: int = 360, quality: int = 85) -> str:
    """A JPEG data URI of ``image`` scaled to fit ``max_side``: reports stay one file."""
    thumb = image.convert("RGB")
    thumb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumb.save(buffer, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def draw_boxes(image: Image.Image, boxes: Sequence[Box], color: str = "#ff2d55") -> Image.Image:
    """A copy of ``image`` with ``boxes`` outlined, line width scaled to the image."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 200))
    for box in boxes:
        draw.rectangle(box.as_xyxy(), outline=color, width=width)
    return out


def render(template: str, destination: Path, **context: Any) -> Path:
    """Render ``template`` with ``context`` into ``destination`` atomically."""
    html = _ENV.get_template(template).render(**context)
    atomic_write_bytes(destination, html.encode("utf-8"))
    return destination
