"""Downstream tasks by name, each read from the data set's own published format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from veil.errors import VeilError
from veil.transfer.tasks.base import (
    MULTICLASS,
    MULTILABEL,
    ArrayImages,
    ClassificationTask,
    FileImages,
    TaskSplit,
)
from veil.transfer.tasks.voc import DetectionTask

#: task name -> what it reads, for help texts
TASKS: dict[str, str] = {
    "cifar10": "CIFAR-10: cifar-10-batches-py/ pickles, train/ and test/ class folders, or "
               "a Hugging Face dataset (Parquet shards or save_to_disk)",
    "scenes": "scene recognition: SUN397 with Partitions/, 15-Scene, an ImageFolder, or a "
              "Hugging Face dataset",
    "celeba": "CelebA: list_attr_celeba.txt, list_eval_partition.txt, img_align_celeba/",
    "voc": "PASCAL VOC detection: VOCdevkit/VOC20xx (Annotations/, ImageSets/Main/)",
}
ALIASES = {"sun397": "scenes", "sun": "scenes", "scene15": "scenes", "cifar-10": "cifar10"}

Task = ClassificationTask | DetectionTask


def task_name(name: str) -> str:
    name = ALIASES.get(name.lower(), name.lower())
    if name not in TASKS:
        raise VeilError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return name


def open_task(name: str, data: str | Path, *, train_split: str | None = None,
              test_split: str | None = None, partition: int = 1, train_per_class: int = 100,
              year: int | None = None, ap_method: str | None = None,
              limit: int | None = None) -> Task:
    """Read task ``name`` from ``data``; split names default to each format's own."""
    name = task_name(name)
    options: dict[str, Any] = {"limit": limit}
    if name == "voc":
        from veil.transfer.tasks.voc import open_voc

        return open_voc(data, year=year, train_split=train_split or "trainval",
                        test_split=test_split or "test", ap_method=ap_method, **options)
    if name == "celeba":
        from veil.transfer.tasks.celeba import open_celeba

        return open_celeba(data, **options)
    train, test = train_split or "train", test_split or "test"
    if name == "cifar10":
        from veil.transfer.tasks.cifar10 import open_cifar10

        return open_cifar10(data, train_split=train, test_split=test, **options)
    from veil.transfer.tasks.scenes import open_scenes

    return open_scenes(data, partition=partition, train_per_class=train_per_class,
                       train_split=train, test_split=test, **options)


__all__ = ["ALIASES", "MULTICLASS", "MULTILABEL", "TASKS", "ArrayImages", "ClassificationTask",
           "DetectionTask", "FileImages", "Task", "TaskSplit", "open_task", "task_name"]
