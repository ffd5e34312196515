"""What every downstream task shares: its splits, where their pixels come from, and how
a split is named by a fingerprint that changes whenever its images could.

A classification task is a list of splits, each with keys (dataset-relative names, the
same role as everywhere else in veil), labels and an :class:`ImageSource`. Pixels come
either from files (``FileImages``), from rows of a Hugging Face dataset's shards
(``ReaderImages``) or from arrays already in memory (``ArrayImages``, CIFAR-10's
pickles); the feature and pixel caches only ever see an ``ImageSource``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from veil.datasets import ImageReader
from veil.errors import DatasetError
from veil.images import load_image

MULTICLASS = "multiclass"
MULTILABEL = "multilabel"


class ImageSource(Protocol):
    """Images by position; picklable, and ``take`` gives a picklable part for a worker."""

    def __len__(self) -> int: ...

    def image(self, index: int) -> Image.Image: ...

    def take(self, indices: Sequence[int]) -> ImageSource: ...

    def fingerprint(self, keys: Sequence[str]) -> str: ...


@dataclass(frozen=True)
class FileImages:
    """One image file per item, decoded with veil's loader (RGB, EXIF orientation)."""

    paths: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> Image.Image:
        return load_image(self.paths[index]).image

    def take(self, indices: Sequence[int]) -> FileImages:
        return FileImages(tuple(self.paths[i] for i in indices))

    def fingerprint(self, keys: Sequence[str]) -> str:
        """Keys with each file's size and modification time: cheap (a ``stat`` per file,
        no reading), and it changes when a file is replaced. Moving the dataset keeps it."""
        digest = hashlib.sha256()
        for key, path in zip(keys, self.paths, strict=True):
            try:
                info = os.stat(path)
            except OSError as exc:
                raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
            digest.update(f"{key}\t{info.st_size}\t{info.st_mtime_ns}\n".encode())
        return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class ReaderImages:
    """Images read by key through a dataset's reader: the rows of a Hugging Face
    dataset's Parquet or Arrow shards (``files``)."""

    reader: ImageReader
    keys: tuple[str, ...]
    files: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.keys)

    def image(self, index: int) -> Image.Image:
        try:
            data = self.reader.read(self.keys[index])
        except OSError as exc:
            raise DatasetError(f"cannot read {self.keys[index]}: {exc}") from exc
        return load_image(data).image

    def take(self, indices: Sequence[int]) -> ReaderImages:
        return ReaderImages(self.reader, tuple(self.keys[i] for i in indices), self.files)

    def fingerprint(self, keys: Sequence[str]) -> str:
        """Keys with each shard file's size and modification time (as ``FileImages``)."""
        digest = hashlib.sha256("\n".join(keys).encode())
        for path in sorted(set(self.files)):
            try:
                info = os.stat(path)
            except OSError as exc:
                raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
            digest.update(f"\n{path.name}\t{info.st_size}\t{info.st_mtime_ns}".encode())
        return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class ArrayImages:
    """Images held as one uint8 NHWC array (CIFAR-10's pickles)."""

    array: np.ndarray

    def __len__(self) -> int:
        return len(self.array)

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(self.array[index]), "RGB")

    def take(self, indices: Sequence[int]) -> ArrayImages:
        return ArrayImages(self.array[np.asarray(indices, dtype=np.int64)])

    def fingerprint(self, keys: Sequence[str]) -> str:
        digest = hashlib.sha256("\n".join(keys).encode())
        digest.update(str(self.array.shape).encode())
        digest.update(np.ascontiguousarray(self.array).data)
        return digest.hexdigest()


@dataclass
class TaskSplit:
    """One split of a classification task, in key order."""

    name: str
    keys: list[str]
    images: ImageSource
    labels: np.ndarray  # (n,) int64 class indices, or (n, attributes) uint8 0/1
    _fingerprint: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.keys)

    def fingerprint(self) -> str:
        """Which pixels this split holds (labels excluded: features do not depend on them)."""
        if self._fingerprint is None:
            self._fingerprint = self.images.fingerprint(self.keys)
        return self._fingerprint

    def subset(self, indices: Sequence[int], name: str | None = None) -> TaskSplit:
        index = list(indices)
        return TaskSplit(name or self.name, [self.keys[i] for i in index],
                         self.images.take(index), self.labels[np.asarray(index, dtype=np.int64)])


@dataclass
class ClassificationTask:
    """Images with one class each (``multiclass``) or a set of binary attributes
    (``multilabel``). ``splits`` holds ``train`` and ``test``, and ``val`` where the data
    set defines one."""

    name: str
    kind: str
    classes: list[str]  # class names, or attribute names for a multilabel task
    splits: dict[str, TaskSplit]
    root: Path
    source: str  # which format was read, in words
    primary_metric: str  # the metric the comparison table reports first

    @property
    def num_outputs(self) -> int:
        return len(self.classes)

    @property
    def train(self) -> TaskSplit:
        return self.splits["train"]

    @property
    def test(self) -> TaskSplit:
        return self.splits["test"]

    @property
    def val(self) -> TaskSplit | None:
        return self.splits.get("val")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "root": str(self.root),
                "source": self.source, "classes": self.classes,
                "primary_metric": self.primary_metric,
                "splits": {name: len(split) for name, split in self.splits.items()}}


def limit_split(split: TaskSplit, limit: int | None) -> TaskSplit:
    """The first ``limit`` images, spread over the classes (multiclass) so a quick try
    still sees every class; the first ``limit`` otherwise."""
    if limit is None or limit >= len(split):
        return split
    if split.labels.ndim == 1:
        classes = np.unique(split.labels)
        per_class = max(1, limit // len(classes))
        chosen: list[int] = []
        counts: dict[int, int] = {}
        for i, label in enumerate(split.labels.tolist()):
            if counts.get(label, 0) < per_class:
                counts[label] = counts.get(label, 0) + 1
                chosen.append(i)
        return split.subset(chosen[:limit])
    return split.subset(range(limit))


def check_splits(task_name: str, root: Path, splits: dict[str, TaskSplit]) -> None:
    """A task needs a train and a test split, each with images."""
    for name in ("train", "test"):
        if name not in splits or len(splits[name]) == 0:
            raise DatasetError(f"{root}: the {task_name} task found no {name} images")
