"""CelebA face attributes in the official format.

``list_attr_celeba.txt``: the image count on line 1, the 40 attribute names on line 2,
then ``<image> <v1> .. <v40>`` with values 1 / -1. ``list_eval_partition.txt``:
``<image> <0|1|2>`` for train / val / test. Images in ``img_align_celeba/``. The official
Google Drive folders keep them in ``Anno/``, ``Eval/`` and ``Img/``; torchvision's
download puts all three in ``celeba/``: every one of these is found from the root.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from veil.errors import DatasetError
from veil.transfer.tasks.base import (
    MULTILABEL,
    ClassificationTask,
    FileImages,
    TaskSplit,
    check_splits,
    limit_split,
)

ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGES_DIR = "img_align_celeba"
PARTITIONS = {0: "train", 1: "val", 2: "test"}
SUBFOLDERS = ("", "Anno", "Eval", "Img", "celeba")


def _find(root: Path, name: str, *, folder: bool = False) -> Path:
    for sub in SUBFOLDERS:
        candidate = root / sub / name if sub else root / name
        if (candidate.is_dir() if folder else candidate.is_file()):
            return candidate
        nested = candidate / name  # Img/img_align_celeba/img_align_celeba (some unzips)
        if folder and nested.is_dir():
            return nested
    where = ", ".join(str(root / s) if s else str(root) for s in SUBFOLDERS)
    raise DatasetError(f"CelebA: {name} not found (looked in {where})")


def read_attributes(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """Attribute names and image -> 0/1 vector from ``list_attr_celeba.txt``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) < 2:
        raise DatasetError(f"{path}: expected a count line and an attribute-name line")
    names = lines[1].split()
    if not names:
        raise DatasetError(f"{path}:2: no attribute names")
    rows: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(lines[2:], 3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1:
            raise DatasetError(f"{path}:{lineno}: {len(parts) - 1} values for"
                               f" {len(names)} attributes")
        try:
            values = [int(v) for v in parts[1:]]
        except ValueError:
            raise DatasetError(f"{path}:{lineno}: attribute values must be 1 or -1") from None
        if any(v not in (1, -1) for v in values):
            raise DatasetError(f"{path}:{lineno}: attribute values must be 1 or -1")
        rows[parts[0]] = (np.asarray(values) > 0).astype(np.uint8)
    declared = lines[0].strip()
    if declared.isdigit() and int(declared) != len(rows):
        raise DatasetError(f"{path}: line 1 says {declared} images, the file lists {len(rows)}")
    return names, rows


def read_partition(path: Path) -> dict[str, str]:
    """Image -> ``train`` / ``val`` / ``test`` from ``list_eval_partition.txt``."""
    out: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) not in PARTITIONS:
            raise DatasetError(f"{path}:{lineno}: expected '<image> 0|1|2', got {line!r}")
        out[parts[0]] = PARTITIONS[int(parts[1])]
    return out


def open_celeba(root: str | Path, *, limit: int | None = None) -> ClassificationTask:
    """CelebA's 40 binary attributes with the official train / val / test partition."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"celeba: data folder not found: {root}")
    names, attributes = read_attributes(_find(root, ATTR_FILE))
    partition = read_partition(_find(root, PARTITION_FILE))
    images = _find(root, IMAGES_DIR, folder=True)
    splits: dict[str, TaskSplit] = {}
    for split in ("train", "val", "test"):
        files = sorted(f for f, s in partition.items() if s == split)
        unlabelled = [f for f in files if f not in attributes]
        if unlabelled:
            raise DatasetError(f"CelebA: {len(unlabelled)} {split} image(s) have no attributes"
                               f" (e.g. {unlabelled[0]})")
        missing = [f for f in files if not (images / f).is_file()]
        if missing:
            raise DatasetError(f"CelebA: {len(missing)} {split} image(s) missing from"
                               f" {images} (e.g. {missing[0]})")
        labels = (np.stack([attributes[f] for f in files]) if files
                  else np.zeros((0, len(names)), np.uint8))
        splits[split] = TaskSplit(split, [f"{IMAGES_DIR}/{f}" for f in files],
                                  FileImages(tuple(images / f for f in files)), labels)
    if not len(splits["val"]):
        del splits["val"]
    splits = {k: limit_split(v, limit) for k, v in splits.items()}
    check_splits("celeba", root, splits)
    return ClassificationTask("celeba", MULTILABEL, names, splits, root,
                              "CelebA official attribute and partition files", "mean_accuracy")
