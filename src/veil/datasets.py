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
- ``huggingface``: a Hugging Face dataset stored locally: Parquet shards as the Hub
  serves them (``data/<split>-NNNNN-of-NNNNN.parquet``) or a ``save_to_disk`` folder.
  Keys are ``<split>/<shard file>/<row>`` (or ``<split>/<id>`` with ``id_column``),
  labels come from a ``ClassLabel`` column (see ``veil.hf``).

Stages read an image's bytes through ``Dataset.reader()``, which works the same for
files, members of tar shards and rows of Parquet or Arrow shards, in any process.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

from veil import hf, wds
from veil.errors import DatasetError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
SPLIT_NAMES = ("train", "val", "test")
LABEL_FILE_NAMES = ("val_labels.txt", "LOC_val_solution.csv", "labels.txt", "labels.csv")
LAYOUTS = ("auto", "imagefolder", "folder", "list", "webdataset", "huggingface")
SHARDED = ("webdataset", "huggingface")
"""Layouts whose images live inside shard files (read through ``Dataset.reader()``)."""


@dataclass(frozen=True, slots=True)
class ImageEntry:
    key: str
    path: Path  # the image file; for a WebDataset or Hugging Face dataset, its shard
    label: str | None = None
    row: int | None = None  # the row of a Hugging Face shard


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
    hf_layout: hf.Layout | None = field(default=None, repr=False)  # a Hugging Face dataset's
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
        if self.hf_layout is not None:
            return hf.HFReader(root, tuple(self.hf_layout.shards), self.hf_layout.columns.image,
                               self.hf_layout.columns.id)
        return wds.TarReader(root) if self.layout == "webdataset" else FileReader(root)

    def groups(self) -> list[list[str]]:
        """The keys of each input file that holds several images (each tar shard of a
        WebDataset, each Parquet or Arrow shard of a Hugging Face dataset), in the
        order the file stores them; empty for datasets of one file per image."""
        if self.layout == "huggingface":
            by_file: dict[Path, list[ImageEntry]] = {}
            for e in self.entries:
                by_file.setdefault(e.path, []).append(e)
            return [[e.key for e in sorted(group, key=lambda e: e.row or 0)]
                    for group in by_file.values()]
        if self.layout != "webdataset":
            return []
        by_shard: dict[str, list[str]] = {}
        for e in self.entries:
            by_shard.setdefault(wds.split_key(e.key)[0], []).append(e.key)
        return list(by_shard.values())

    def work_shards(self, shard_size: int) -> list[list[str]] | None:
        """Units of work of at most ``shard_size`` keys that never straddle two input
        files (so a worker reads each shard file in order, once); None for datasets of
        one file per image, which the runner cuts by key order."""
        groups = self.groups()
        if not groups:
            return None
        if shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        return [g[i:i + shard_size] for g in groups for i in range(0, len(g), shard_size)]

    @property
    def classes(self) -> list[str]:
        return sorted({e.label for e in self.entries if e.label is not None})

    @property
    def splits(self) -> list[str]:
        """The splits present: the first folder of the keys that is a split name (any
        name for a Hugging Face dataset, whose splits are named by the dataset)."""
        named = self.layout == "huggingface"
        return sorted({e.key.split("/", 1)[0] for e in self.entries if "/" in e.key
                       and (named or e.key.split("/", 1)[0] in SPLIT_NAMES)})

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
        return Dataset(self.root, self.layout, list(entries), source=self.source,
                       hf_layout=self.hf_layout)


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


def is_huggingface(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a Hugging Face dataset (what ``layout="auto"`` reads as one)."""
    return hf.looks_like(Path(path).expanduser(), lambda p: any(_walk_images(p)))


def _open_huggingface(path: Path, image_column: str | None, label_column: str | None,
                      id_column: str | None) -> Dataset:
    found, rows = hf.open_layout(path, image_column=image_column, label_column=label_column,
                                 id_column=id_column)
    if not rows:
        raise DatasetError(f"{path}: the dataset has no rows")
    entries = [ImageEntry(r.key, found.root / r.shard.relative, r.label, r.row) for r in rows]
    return Dataset(found.root, "huggingface", entries, source=str(path), hf_layout=found)


def open_dataset(
    source: str | os.PathLike[str],
    *,
    layout: str = "auto",
    root: str | os.PathLike[str] | None = None,
    labels_file: str | os.PathLike[str] | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
) -> Dataset:
    """Read a dataset from a folder, a file list, WebDataset tar shards or a Hugging Face
    dataset.

    ``layout="auto"`` reads a ``.parquet``/``.arrow`` file, a ``save_to_disk`` folder or a
    folder holding ``.parquet`` files and no images as a Hugging Face dataset, a ``.tar``
    file, a brace pattern or a folder holding only ``.tar`` shards as a WebDataset, any
    other file as a list, a folder with ``train/``/``val/``/``test/`` or with only class
    subfolders as an ImageFolder, and anything else as a plain folder.
    ``image_column``, ``label_column`` and ``id_column`` name a Hugging Face dataset's
    columns (default: its Image and ClassLabel features; keys by row).
    """
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    text = os.fspath(source)
    path = Path(text).expanduser()
    columns = {"image_column": image_column, "label_column": label_column,
               "id_column": id_column}
    named = [f"--{k.replace('_', '-')}" for k, v in columns.items() if v is not None]
    if layout in ("auto", "webdataset") and wds.is_brace_pattern(text) and not path.exists():
        layout = "webdataset"
    elif not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    elif layout == "auto" and is_huggingface(path):
        layout = "huggingface"
    elif layout == "auto" and (
        (path.is_file() and wds.is_shard_name(path.name))
        or (path.is_dir() and _looks_like_webdataset(path))
    ):
        layout = "webdataset"
    if layout == "huggingface":
        return _open_huggingface(path, **columns)
    if named:
        raise DatasetError(f"{', '.join(named)}: only a Hugging Face dataset has columns, and "
                           f"{path} is not read as one (--layout huggingface reads it so)")
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
