"""CIFAR-10: the official python pickles, or an ImageFolder copy.

The official download (``cifar-10-python.tar.gz``) unpacks to ``cifar-10-batches-py/``
holding ``data_batch_1`` .. ``data_batch_5`` (train, 10,000 images each), ``test_batch``
and ``batches.meta``. Each batch is a pickled dict: ``b'data'`` a uint8 array of N x 3072
(1024 red, 1024 green, 1024 blue values of a 32 x 32 image, row-major), ``b'labels'`` N
ints, ``b'filenames'``; ``batches.meta`` has ``b'label_names'``.

Pickles can run code when loaded, so they are read with an unpickler that builds only
the few types the official files contain (dicts, lists, bytes, numpy arrays) and refuses
everything else.
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from veil.datasets import is_huggingface, open_dataset
from veil.errors import DatasetError
from veil.transfer.tasks.base import (
    MULTICLASS,
    ArrayImages,
    ClassificationTask,
    FileImages,
    ReaderImages,
    TaskSplit,
    check_splits,
    limit_split,
)

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The globals a pickled numpy array refers to, under numpy 1's and numpy 2's module
    names (the official files were written by numpy 1 on Python 2)."""
    import codecs

    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray,
                                           ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): codecs.encode}
    for new, old in (("numpy._core.multiarray", "numpy.core.multiarray"),
                     ("numpy._core.numeric", "numpy.core.numeric")):
        try:
            module: Any = importlib.import_module(new)
        except ImportError:  # pragma: no cover - numpy 1
            module = importlib.import_module(old)
        for name in ("_reconstruct", "scalar", "_frombuffer"):
            if hasattr(module, name):
                allowed[(new, name)] = allowed[(old, name)] = getattr(module, name)
    return allowed


class _SafeUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain containers; any other global is refused."""

    allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of"
                                         " the CIFAR-10 format")
        return found


def read_batch(path: Path) -> dict[bytes, Any]:
    """One official CIFAR batch file as its dict (keys are bytes, as in the original)."""
    try:
        data = path.read_bytes()
        loaded = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DatasetError(f"{path} is not a CIFAR-10 python batch: {exc}") from exc
    if not isinstance(loaded, dict):
        raise DatasetError(f"{path} is not a CIFAR-10 python batch (a pickled dict)")
    return {k.encode() if isinstance(k, str) else k: v for k, v in loaded.items()}


def _batch_split(root: Path, names: tuple[str, ...], split: str) -> TaskSplit:
    arrays, labels, keys = [], [], []
    for name in names:
        path = root / name
        batch = read_batch(path)
        if b"data" not in batch or b"labels" not in batch:
            raise DatasetError(f"{path} lacks b'data' or b'labels'")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise DatasetError(f"{path}: b'data' is {data.shape}, expected N x 3072")
        batch_labels = np.asarray(batch[b"labels"], dtype=np.int64)
        if len(batch_labels) != len(data):
            raise DatasetError(f"{path}: {len(data)} images but {len(batch_labels)} labels")
        if len(batch_labels) and (batch_labels.min() < 0 or batch_labels.max() >= 10):
            raise DatasetError(f"{path}: labels outside 0..9")
        arrays.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(batch_labels)
        keys += [f"{name}/{i:05d}" for i in range(len(data))]
    return TaskSplit(split, keys, ArrayImages(np.ascontiguousarray(np.concatenate(arrays))),
                     np.concatenate(labels))


def _label_names(root: Path) -> list[str]:
    meta = root / "batches.meta"
    if not meta.is_file():
        return list(CLASSES)
    names = read_batch(meta).get(b"label_names")
    if not names or len(names) != 10:
        return list(CLASSES)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def find_batches(root: Path) -> Path | None:
    for candidate in (root, root / BATCHES_DIR):
        if (candidate / TEST_BATCH).is_file() and (candidate / TRAIN_BATCHES[0]).is_file():
            return candidate
    return None


def open_cifar10(root: str | Path, *, train_split: str = "train", test_split: str = "test",
                 limit: int | None = None) -> ClassificationTask:
    """CIFAR-10 from ``root``: the folder of the python batches (or the one holding
    ``cifar-10-batches-py/``), else an ImageFolder copy with ``<train_split>/<class>/``
    and ``<test_split>/<class>/`` (``val/`` serves when there is no test split)."""
    root = Path(root).expanduser()
    batches = find_batches(root)
    if batches is not None:
        missing = [n for n in TRAIN_BATCHES if not (batches / n).is_file()]
        if missing:
            raise DatasetError(f"{batches}: missing {', '.join(missing)} of the CIFAR-10 batches")
        splits = {"train": _batch_split(batches, TRAIN_BATCHES, "train"),
                  "test": _batch_split(batches, (TEST_BATCH,), "test")}
        classes, source = _label_names(batches), "CIFAR-10 python batches"
    else:
        classes, splits = imagefolder_splits(root, train_split, test_split, "cifar10")
        source = "ImageFolder"
    splits = {k: limit_split(v, limit) for k, v in splits.items()}
    check_splits("cifar10", root, splits)
    return ClassificationTask("cifar10", MULTICLASS, classes, splits, root, source, "top1")


def imagefolder_splits(root: Path, train_split: str, test_split: str, task: str
                       ) -> tuple[list[str], dict[str, TaskSplit]]:
    """``<split>/<class>/<image>`` folders as labelled splits, or a Hugging Face dataset's
    splits with its ClassLabel labels; classes in sorted order."""
    if not root.is_dir():
        raise DatasetError(f"{task}: data folder not found: {root}")
    hub = is_huggingface(root)
    dataset = open_dataset(root, layout="huggingface" if hub else "imagefolder")
    present = dataset.splits
    test = test_split if test_split in present else next(
        (s for s in ("val", "validation") if s in present), None)
    if train_split not in present or test is None:
        raise DatasetError(
            f"{root}: {task} needs {train_split}/<class>/ and {test_split}/<class>/ folders"
            f" (found splits: {', '.join(present) or 'none'})")
    train = dataset.subset(split=train_split)
    tested = dataset.subset(split=test)
    classes = sorted({e.label for e in train if e.label is not None})
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(e.label) for e in tested if e.label not in index})
    if unknown:
        raise DatasetError(f"{root}: {test}/ has classes not in {train_split}/: "
                           f"{', '.join(str(u) for u in unknown[:5])}")

    reader = dataset.reader() if hub else None

    def split(name: str, data: Any) -> TaskSplit:
        entries = [e for e in data if e.label is not None]
        keys = [e.key for e in entries]
        images = (FileImages(tuple(e.path for e in entries)) if reader is None else
                  ReaderImages(reader, tuple(keys), tuple({e.path: 0 for e in entries})))
        return TaskSplit(name, keys, images,
                         np.array([index[e.label] for e in entries], dtype=np.int64))

    splits = {"train": split("train", train), "test": split("test", tested)}
    if "val" in present and test != "val" and train_split != "val":
        splits["val"] = split("val", dataset.subset(split="val"))
    return classes, splits
