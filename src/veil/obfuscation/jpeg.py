"""The JPEG re-save of the paper's released blurred images, as a function of pixels.

The authors' ``experiments/blurring.py`` (princetonvisualai/imagenet-face-obfuscation
@52d6d78) opens every image with ``Image.open(path).convert("RGB")`` (line 59), blurs
every image the annotations list, faceless ones included (lines 63-64), and writes it
with ``img.save(target_path)`` to a ``.jpg`` path (line 71): Pillow's JPEG defaults,
quality 75 with 4:2:0 chroma subsampling. Their "blurred" data is therefore also
recompressed, while "original" is not. :func:`pillow_default_jpeg` is that save and
the read-back their training script's ImageFolder loader does (``convert("RGB")``),
so a study can train on the authors' files and on a recompression-only control.
"""

from __future__ import annotations

import io

from PIL import Image


def pillow_default_jpeg(image: Image.Image) -> Image.Image:
    """``image`` after a JPEG save with Pillow's defaults and a read-back as RGB."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")  # what img.save("x.jpg") does: no options
    buffer.seek(0)
    with Image.open(buffer) as reread:
        return reread.convert("RGB")
