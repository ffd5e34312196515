"""The pixels an annotator sees: each dataset image as displayed, without metadata.

Boxes are in displayed pixels (EXIF orientation applied), so the browser must get
the displayed image. A file is sent as it is when the browser can show it, it needs
no rotation and it carries no identifying metadata; otherwise the metadata is
stripped (same pixels) or, for rotated or non-web formats, it is decoded with veil's
loader and re-encoded. Only dataset files are ever read: the key is looked up in the
dataset, never joined to a path, and a file that is a symbolic link leading out of the
dataset folder is refused unless ``follow_links`` allows it (the folder scan already
skips directories that do). Images inside shard files (WebDataset tars, Hugging Face
Parquet or Arrow shards) are read through the dataset's reader, by key.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from veil.datasets import SHARDED, Dataset, ImageReader
from veil.encoding import encode_image, strip_identifying_metadata
from veil.errors import ImageError
from veil.images import load_image, probe

WEB_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif",
               "WEBP": "image/webp"}
_STRIPPABLE = ("JPEG", "PNG")


@dataclass(frozen=True)
class Served:
    """Either a file to send as is, or bytes to send."""

    media_type: str
    path: Path | None = None
    data: bytes | None = None


class ImageServer:
    """Displayed sizes and web-ready bytes of a dataset's images (small caches)."""

    def __init__(self, dataset: Dataset, *, cache_size: int = 32,
                 max_pixels: int | None = None, follow_links: bool = False) -> None:
        self.dataset = dataset
        self.follow_links = follow_links
        self._root: tuple[Path, Path] | None = None  # (as written, resolved)
        self._reader: ImageReader | None = None  # for images inside shard files
        if dataset.layout in SHARDED:
            self._reader = dataset.reader()
        else:
            self._root = (Path(os.path.abspath(dataset.root)), dataset.root.resolve())
        self.max_pixels = max_pixels
        self._sizes: dict[str, tuple[int, int]] = {}
        self._bytes: OrderedDict[str, Served] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def size(self, key: str) -> tuple[int, int]:
        """(width, height) as displayed; raises :class:`~veil.errors.ImageError`."""
        with self._lock:
            known = self._sizes.get(key)
        if known is None:
            info = probe(self._source(key), max_pixels=self.max_pixels)
            known = (info.width, info.height)
            with self._lock:
                self._sizes[key] = known
        return known

    def path(self, key: str) -> Path:
        """The file of ``key``; raises :class:`ImageError` for a link out of the dataset."""
        path = self.dataset[key].path
        if self._root is not None and not self.follow_links:
            lexical, real = self._root
            inside = Path(os.path.abspath(path)).is_relative_to(lexical)
            if inside and not Path(path).resolve().is_relative_to(real):
                raise ImageError("a symbolic link that leads out of the dataset folder "
                                 "(serve with --follow-links to allow it)")
        return path

    def _source(self, key: str) -> Path | bytes:
        """The file of ``key``, or its bytes when it lives inside a shard file."""
        if self._reader is None:
            return self.path(key)
        self.dataset[key]  # a key of the dataset, or KeyError
        try:
            with self._lock:  # a reader keeps one shard open: one thread at a time
                return self._reader.read(key)
        except OSError as exc:
            raise ImageError(f"cannot read {key}: {exc}") from exc

    def serve(self, key: str) -> Served:
        # a file is checked every time (a link may have changed); a shard's row once
        path = self.path(key) if self._reader is None else None
        with self._lock:
            cached = self._bytes.get(key)
            if cached is not None:
                self._bytes.move_to_end(key)
                return cached
        source = path if path is not None else self._source(key)
        info = probe(source, max_pixels=self.max_pixels)
        with self._lock:
            self._sizes[key] = (info.width, info.height)
        if info.orientation == 1 and info.format in WEB_FORMATS and not info.metadata:
            if isinstance(source, Path):
                return Served(WEB_FORMATS[info.format], path=source)
            served = Served(WEB_FORMATS[info.format], data=source)
        elif info.orientation == 1 and info.format in _STRIPPABLE:
            served = Served(WEB_FORMATS[info.format], data=strip_identifying_metadata(
                source if isinstance(source, bytes) else source.read_bytes()))
        else:
            loaded = load_image(source, max_pixels=self.max_pixels)
            data, suffix = encode_image(loaded.image, loaded,
                                        fmt="keep" if loaded.jpeg is not None else "png")
            served = Served("image/jpeg" if suffix in (".jpg", ".jpeg") else "image/png",
                            data=data)
        with self._lock:
            self._bytes[key] = served
            while len(self._bytes) > self._cache_size:
                self._bytes.popitem(last=False)
        return served
