"""Datasets: a collection of images, each named by a key, optionally labelled.

One reader serves every stage. A key is the dataset-relative POSIX path of an image
(``train/n01440764/n01440764_10026.JPEG``); it is what the face store, the faces
files and the obfuscated mirror all use, so it never depends on where the dataset
is mounted.

Layouts (``layout="auto"`` picks one):

- ``imagefolder`` / ILSVRC: ``<split>/<class>/<image>`` (``train/``, ``val/``, ``test/``),
  or ``<class>/<image>`` directly under the root; the class folder is the label. A flat
  ``val/`` (``val/<image>``, as ILSVRC ships it) takes its labels from a labels file.
- ``folder``: any folder of images, recursively, unlabelled.
- ``list``: a text file with one image path per line (relative to ``--root`` or to the
  file's folder), optionally followed by whitespace/tab/comma and a label.
- ``webdataset``: WebDataset tar shards: one ``.tar``, a folder of them, or a brace
  pattern (``shards-{000000..000009}.tar``). Keys are ``<shard>.tar/<member name>``,
  relative to the folder holding the shards (see ``veil.wds`` for the scheme);
  labels come from each sample's ``cls`` or ``json``.

Stages read an image's bytes through ``Dataset.reader()``, which works the same for
files and for members of tar shards, in any process.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

from veil import wds
from veil.errors import DatasetError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
SPLIT_NAMES = ("train", "val", "test")
LABEL_FILE_NAMES = ("val_labels.txt", "LOC_val_solution.csv", "labels.txt", "labels.csv")
LAYOUTS = ("auto", "imagefolder", "folder", "list", "webdataset")


@dataclass(frozen=True, slots=True)
class ImageEntry:
    key: str
    path: Path  # the image file; for a WebDataset, the tar shard holding it
    label: str | None = None


class ImageReader(Protocol):
    """Bytes of an image by key; picklable, so a worker on any node can hold one."""

    def read(self, key: str) -> bytes: ...


@dataclass(frozen=True)
class FileReader:
    """Images stored as files under ``root``."""

    root: Path

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()


@dataclass
class Dataset:
    """An ordered (by key) collection of images with their labels."""

    root: Path
    layout: str
    entries: list[ImageEntry]
    source: str = ""
    _by_key: dict[str, ImageEntry] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.entries.sort(key=lambda e: e.key)
        self._by_key = {e.key: e for e in self.entries}
        if len(self._by_key) != len(self.entries):
            raise DatasetError(f"{self.source or self.root}: the same key appears twice")

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[ImageEntry]:
        return iter(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __getitem__(self, key: str) -> ImageEntry:
        try:
            return self._by_key[key]
        except KeyError:
            raise KeyError(f"{key!r} is not an image of {self.source or self.root}") from None

    def keys(self) -> list[str]:
        return [e.key for e in self.entries]

    def reader(self) -> ImageReader:
        """Reads an image's bytes by key (raises ``OSError`` when it cannot)."""
        root = self.root.resolve()
        return wds.TarReader(root) if self.layout == "webdataset" else FileReader(root)

    def groups(self) -> list[list[str]]:
        """The keys of each input file that holds several images (each tar shard of a
        WebDataset), in key order; empty for datasets of one file per image."""
        if self.layout != "webdataset":
            return []
        by_shard: dict[str, list[str]] = {}
        for e in self.entries:
            by_shard.setdefault(wds.split_key(e.key)[0], []).append(e.key)
        return list(by_shard.values())

    @property
    def classes(self) -> list[str]:
        return sorted({e.label for e in self.entries if e.label is not None})

    @property
    def splits(self) -> list[str]:
        return sorted({e.key.split("/", 1)[0] for e in self.entries if "/" in e.key
                       and e.key.split("/", 1)[0] in SPLIT_NAMES})

    def subset(self, *, split: str | None = None, limit: int | None = None,
               keys: set[str] | None = None) -> Dataset:
        """A view restricted to one split, a set of keys, and/or the first ``limit`` images
        of each class (so a limited run still covers every class)."""
        entries = self.entries
        if split is not None:
            entries = [e for e in entries if e.key.startswith(split.rstrip("/") + "/")]
            if not entries:
                raise DatasetError(
                    f"{self.source or self.root} has no images in split {split!r}"
                    f" (splits: {', '.join(self.splits) or 'none'})"
                )
        if keys is not None:
            entries = [e for e in entries if e.key in keys]
        if limit is not None:
            entries = _first_per_label(entries, limit)
        return Dataset(self.root, self.layout, list(entries), source=self.source)


def _first_per_label(entries: list[ImageEntry], limit: int) -> list[ImageEntry]:
    labels = {e.label for e in entries}
    if labels == {None}:
        return entries[:limit]
    per_label = max(1, limit // len(labels))
    counts: dict[str | None, int] = {}
    out = []
    for e in entries:
        if counts.get(e.label, 0) < per_label:
            counts[e.label] = counts.get(e.label, 0) + 1
            out.append(e)
    return out[:limit]


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _walk_images(directory: Path) -> Iterator[Path]:
    """Image files under ``directory``, skipping hidden files and folders (``.veil/``)."""
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and is_image_name(name):
                yield Path(dirpath) / name


def _key(path: Path, root: Path) -> str:
    return PurePosixPath(*path.relative_to(root).parts).as_posix()


def _subdirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _has_direct_images(directory: Path) -> bool:
    return any(
        p.is_file() and is_image_name(p.name) and not p.name.startswith(".")
        for p in directory.iterdir()
    )


def read_labels_file(path: Path) -> dict[str, str]:
    """Labels for a flat val folder: file name -> label.

    Accepts ILSVRC's ``LOC_val_solution.csv`` (``ImageId,PredictionString`` with the wnid
    first) and plain ``<file> <label>`` lines (whitespace, tab or comma separated).
    """
    labels: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"cannot read labels file {path}: {exc.strerror or exc}") from exc
    lines = text.splitlines()
    if lines and lines[0].replace(" ", "").lower().startswith("imageid,predictionstring"):
        for row in csv.reader(lines[1:]):
            if len(row) >= 2 and row[1].split():
                labels[row[0]] = row[1].split()[0]
        return labels
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").replace("\t", " ").split()
        if len(parts) < 2:
            raise DatasetError(f"{path}:{lineno}: expected '<file> <label>', got {line!r}")
        labels[parts[0]] = parts[1]
    return labels


def _label_for_file(labels: dict[str, str], name: str) -> str | None:
    return labels.get(name) or labels.get(os.path.splitext(name)[0])


def _read_imagefolder(root: Path, labels_file: Path | None) -> list[ImageEntry]:
    entries: list[ImageEntry] = []
    split_dirs = [d for d in _subdirs(root) if d.name in SPLIT_NAMES]
    class_roots = split_dirs or [root]
    for class_root in class_roots:
        for class_dir in _subdirs(class_root):
            for path in _walk_images(class_dir):
                entries.append(ImageEntry(_key(path, root), path, class_dir.name))
        if class_root is not root and _has_direct_images(class_root):
            # A flat split folder (ILSVRC's val/): labels come from a labels file.
            labels = _find_labels(root, class_root, labels_file)
            for path in sorted(class_root.iterdir()):
                if path.is_file() and is_image_name(path.name) and not path.name.startswith("."):
                    entries.append(
                        ImageEntry(_key(path, root), path, _label_for_file(labels, path.name))
                    )
    return entries


def _find_labels(root: Path, split_dir: Path, labels_file: Path | None) -> dict[str, str]:
    if labels_file is not None:
        return read_labels_file(labels_file)
    for folder in (split_dir, root):
        for name in LABEL_FILE_NAMES:
            if (folder / name).is_file():
                return read_labels_file(folder / name)
    return {}


def _read_list(list_file: Path, root: Path | None) -> tuple[Path, list[ImageEntry]]:
    base = root if root is not None else list_file.parent
    entries = []
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"cannot read file list {list_file}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{list_file} is not a UTF-8 text file list") from exc
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, label = line, None
        for sep in ("\t", ","):
            if sep in line:
                name, label = (part.strip() for part in line.split(sep, 1))
                break
        path = Path(name) if os.path.isabs(name) else base / name
        try:
            key = _key(path.resolve(), base.resolve())
        except ValueError:
            raise DatasetError(
                f"{list_file}:{lineno}: {name!r} is outside the dataset root {base};"
                " pass --root to name a folder that holds every listed image"
            ) from None
        entries.append(ImageEntry(key, path, label or None))
    return base, entries


def _read_webdataset(shards: list[Path], root: Path) -> list[ImageEntry]:
    entries = []
    for shard in shards:
        for image in wds.scan_shard(shard, root, is_image_name):
            entries.append(ImageEntry(image.key, shard, image.label))
    return entries


def _looks_like_webdataset(path: Path) -> bool:
    """A folder holding .tar shards and no image files (checked lazily: one image ends it)."""
    return not any(_walk_images(path)) and bool(wds.find_shards(path))


def open_dataset(
    source: str | os.PathLike[str],
    *,
    layout: str = "auto",
    root: str | os.PathLike[str] | None = None,
    labels_file: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Read a dataset from a folder, a file list or WebDataset tar shards.

    ``layout="auto"`` reads a ``.tar`` file, a brace pattern or a folder holding only
    ``.tar`` shards as a WebDataset, any other file as a list, a folder with
    ``train/``/``val/``/``test/`` or with only class subfolders as an ImageFolder, and
    anything else as a plain folder.
    """
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    text = os.fspath(source)
    path = Path(text).expanduser()
    if layout in ("auto", "webdataset") and wds.is_brace_pattern(text) and not path.exists():
        layout = "webdataset"
    elif not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    elif layout == "auto" and (
        (path.is_file() and wds.is_shard_name(path.name))
        or (path.is_dir() and _looks_like_webdataset(path))
    ):
        layout = "webdataset"
    if layout == "webdataset":
        shards = wds.expand_shards(text)
        if not shards:
            raise DatasetError(f"no .tar shards found in {path}")
        # Keys are relative to --root, else to the folder given, else to the folder
        # holding every shard of a file or pattern.
        base = Path(root) if root is not None else path if path.is_dir() else (
            wds.shards_root(shards))
        entries = _read_webdataset(shards, base)
        if not entries:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise DatasetError(f"no images found in the shards of {text} (looked for "
                               f"members ending in {suffixes})")
        return Dataset(base, "webdataset", entries, source=text)
    labels_path = Path(labels_file) if labels_file is not None else None
    if path.is_file() or layout == "list":
        if not path.is_file():
            raise DatasetError(f"--layout list needs a file, but {path} is a folder")
        base, entries = _read_list(path, Path(root) if root is not None else None)
        return Dataset(base, "list", entries, source=str(path))
    if layout == "auto":
        subdirs = _subdirs(path)
        if any(d.name in SPLIT_NAMES for d in subdirs) or (
            subdirs and not _has_direct_images(path)
        ):
            layout = "imagefolder"
        else:
            layout = "folder"
    if layout == "imagefolder":
        entries = _read_imagefolder(path, labels_path)
    else:
        entries = [ImageEntry(_key(p, path), p) for p in _walk_images(path)]
    if not entries:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise DatasetError(f"no images found in {path} (looked for {suffixes})")
    return Dataset(path, layout, entries, source=str(path))
