"""Scene recognition: SUN397 with its official partitions, 15-Scene, or any ImageFolder.

Three layouts, tried in this order:

- **SUN397** as downloaded: ``SUN397/<letter>/<class>[/<sub>]/sun_*.jpg`` plus the
  partition files (``Training_01.txt`` .. ``Testing_10.txt``, from ``Partitions.zip``,
  in the root or in ``Partitions/``). Each line names an image as ``/a/abbey/sun_x.jpg``;
  the class is its folder (``a/abbey``). ``partition`` picks one of the ten splits.
- **ImageFolder with splits**: ``<train_split>/<class>/`` and ``<test_split>/<class>/``
  (``../shared/data/scene15`` is laid out this way), or a Hugging Face dataset with those
  splits and a ClassLabel column (Parquet shards or a ``save_to_disk`` folder).
- **Class folders only** (15-Scene as published): ``<class>/<image>``; the benchmark's
  protocol takes ``train_per_class`` images of each class for training (chosen at random
  with a fixed seed, so every run splits alike) and tests on the rest.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from veil.datasets import is_huggingface, open_dataset
from veil.errors import DatasetError
from veil.transfer.tasks.base import (
    MULTICLASS,
    ClassificationTask,
    FileImages,
    TaskSplit,
    check_splits,
    limit_split,
)
from veil.transfer.tasks.cifar10 import imagefolder_splits

SPLIT_SEED = 0


def find_partitions(root: Path, partition: int) -> tuple[Path, Path] | None:
    for folder in (root / "Partitions", root):
        train = folder / f"Training_{partition:02d}.txt"
        test = folder / f"Testing_{partition:02d}.txt"
        if train.is_file() and test.is_file():
            return train, test
    return None


def _read_partition(root: Path, listing: Path, name: str, index: dict[str, int] | None
                    ) -> tuple[TaskSplit, list[str]]:
    keys, labels_text = [], []
    for lineno, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        key = line.lstrip("/")
        parent = PurePosixPath(key).parent.as_posix()
        if parent in ("", "."):
            raise DatasetError(f"{listing}:{lineno}: {line!r} names no class folder")
        keys.append(key)
        labels_text.append(parent)
    classes = sorted(set(labels_text)) if index is None else list(index)
    index = index or {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(labels_text) - set(index))
    if unknown:
        raise DatasetError(f"{listing}: classes not in the training partition: "
                           f"{', '.join(unknown[:5])}")
    missing = [k for k in keys[:1000] if not (root / k).is_file()]
    if missing:
        raise DatasetError(f"{listing} lists images that are not under {root}"
                           f" (e.g. {missing[0]}); --data must be the SUN397 folder")
    paths = tuple(root / k for k in keys)
    split = TaskSplit(name, keys, FileImages(paths),
                      np.array([index[c] for c in labels_text], dtype=np.int64))
    return split, classes


def _class_folders(root: Path, train_per_class: int) -> tuple[list[str], dict[str, TaskSplit]]:
    dataset = open_dataset(root, layout="imagefolder")
    entries = [e for e in dataset if e.label is not None]
    classes = sorted({e.label for e in entries if e.label is not None})
    index = {c: i for i, c in enumerate(classes)}
    rng = np.random.default_rng(SPLIT_SEED)
    train_pos: list[int] = []
    for c in classes:
        members = [i for i, e in enumerate(entries) if e.label == c]
        if len(members) <= train_per_class:
            raise DatasetError(f"{root}/{c}: {len(members)} images, but the protocol trains"
                               f" on {train_per_class} per class and tests on the rest")
        train_pos += sorted(rng.permutation(members)[:train_per_class].tolist())
    chosen = set(train_pos)
    test_pos = [i for i in range(len(entries)) if i not in chosen]

    def split(name: str, positions: list[int]) -> TaskSplit:
        picked = [entries[i] for i in sorted(positions)]
        return TaskSplit(name, [e.key for e in picked], FileImages(tuple(e.path for e in picked)),
                         np.array([index[e.label] for e in picked if e.label], dtype=np.int64))

    return classes, {"train": split("train", train_pos), "test": split("test", test_pos)}


def open_scenes(root: str | Path, *, train_split: str = "train", test_split: str = "test",
                partition: int = 1, train_per_class: int = 100, limit: int | None = None
                ) -> ClassificationTask:
    """A scene recognition task from ``root`` (see the module's layouts)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"scenes: data folder not found: {root}")
    if not 1 <= partition <= 10:
        raise DatasetError(f"SUN397 has partitions 1..10, not {partition}")
    found = find_partitions(root, partition)
    if found is not None:
        train, classes = _read_partition(root, found[0], "train", None)
        test, _ = _read_partition(root, found[1], "test", {c: i for i, c in enumerate(classes)})
        splits = {"train": train, "test": test}
        source = f"SUN397 partition {partition:02d}"
    else:
        names = {p.name for p in root.iterdir() if p.is_dir()}
        if train_split in names or is_huggingface(root):
            classes, splits = imagefolder_splits(root, train_split, test_split, "scenes")
            source = "ImageFolder"
        else:
            classes, splits = _class_folders(root, train_per_class)
            source = f"class folders, {train_per_class} per class for training"
    splits = {k: limit_split(v, limit) for k, v in splits.items()}
    check_splits("scenes", root, splits)
    return ClassificationTask("scenes", MULTICLASS, classes, splits, root, source, "top1")
