"""Obfuscation on the fly, for torchvision-style training pipelines.

A training run can read the original images and obfuscate them as it loads them,
instead of storing an obfuscated copy. Boxes are looked up by image key, so the
transform needs the key as well as the image; :meth:`Obfuscate.loader` packages
that as an ``ImageFolder`` loader::

    from torchvision.datasets import ImageFolder
    from veil.transforms import Obfuscate

    blur = Obfuscate("faces.sqlite", method="blur")
    train = ImageFolder("imagenet/train", loader=blur.loader("imagenet"), transform=...)

Both are picklable, so they work in DataLoader worker processes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from veil.boxes import Box, usable_boxes
from veil.errors import VeilError
from veil.faces import FacesSnapshot, load_faces
from veil.images import load_image
from veil.interchange.common import KeyResolver
from veil.obfuscation import METHODS, obfuscate


class Obfuscate:
    """Obfuscate the faces of an image, looked up by its dataset key.

    ``faces`` is a face store, a faces file, a :class:`FacesSnapshot` or a mapping from
    key to boxes; it is read once, here. Keys without faces pass through unchanged.
    """

    def __init__(
        self,
        faces: str | os.PathLike[str] | FacesSnapshot | Mapping[str, Sequence[Box]],
        method: str = "blur",
        **options: Any,
    ) -> None:
        if method not in METHODS:
            raise VeilError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        snapshot = faces if isinstance(faces, FacesSnapshot) else load_faces(faces)
        self.boxes: dict[str, list[Box]] = {
            key: kept for key, boxes in snapshot.boxes.items() if (kept := usable_boxes(boxes)[0])
        }
        self.method = method
        self.options = options
        self._resolve = KeyResolver(self.boxes)

    def __call__(self, image: Image.Image | np.ndarray, key: str) -> Image.Image | np.ndarray:
        """The image with the faces of ``key`` obfuscated. The key meets the faces' keys
        by the rule of every stage (:class:`veil.interchange.KeyResolver`): a val image
        ``val/<wnid>/<file>`` finds the authors' ``val/<file>`` record."""
        boxes = self.boxes.get(key)
        if boxes is None:
            found = self._resolve.candidates(key)
            if len(found) > 1:
                raise VeilError(f"{key}: its faces could be those of {', '.join(found[:3])}"
                                " (one file name in several folders); key the faces by path")
            boxes = self.boxes.get(found[0]) if found else None
        if not boxes:
            return image
        return obfuscate(image, boxes, self.method, **self.options)

    def loader(self, dataset_root: str | os.PathLike[str]) -> ObfuscatingLoader:
        """An ``ImageFolder``-style loader (path -> obfuscated RGB image).

        Keys are paths relative to ``dataset_root``: the folder the face store's keys
        are relative to (for ILSVRC, the folder holding ``train/`` and ``val/``).
        """
        return ObfuscatingLoader(self, Path(dataset_root))

    def __repr__(self) -> str:
        return f"Obfuscate(method={self.method!r}, images_with_faces={len(self.boxes)})"


class ObfuscatingLoader:
    """Load an image the way every veil stage does (EXIF orientation applied), then
    obfuscate its faces."""

    def __init__(self, transform: Obfuscate, root: Path) -> None:
        self.transform = transform
        self.root = root.resolve()

    def key(self, path: str | os.PathLike[str]) -> str:
        try:
            return Path(path).resolve().relative_to(self.root).as_posix()
        except ValueError:
            raise VeilError(f"{path} is not inside the dataset root {self.root}") from None

    def __call__(self, path: str | os.PathLike[str]) -> Image.Image:
        key = self.key(path)
        result = self.transform(load_image(path).image, key)
        assert isinstance(result, Image.Image)
        return result
