"""A ``veil transfer`` output folder: its layout, file names, and reading it back.

:mod:`veil.transfer.run` writes the folder; :mod:`veil.analysis.transfer` reads it through
this module, which imports neither torch nor the training stack::

    OUT/transfer.json     what was run: the study, the task, settings, status
    OUT/results.json      one row per backbone: its metrics (also OUT/results.csv)
    OUT/attributes.csv    CelebA: accuracy and AP of every attribute, per backbone
    OUT/comparison.{md,csv,png}   written by analysis after the run
    OUT/models/<arch>/seed<k>/train-<cond>/result.json, predictions.parquet
    OUT/cache/            decoded pixels and frozen features (safe to delete)

By default OUT is ``RUN/transfer/<task>-<mode>`` inside the study run folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from veil.errors import VeilError
from veil.study.layout import seed_dir, train_dir
from veil.transfer.metrics import ImageDetections

MANIFEST = "transfer.json"
RESULTS = "results.json"
RESULTS_CSV = "results.csv"
ATTRIBUTES_CSV = "attributes.csv"
COMPARISON = "comparison"  # the prefix of the comparison table's .md, .csv and .png
MODELS_DIR = "models"
CACHE_DIR = "cache"
PREDICTIONS = "predictions.parquet"
RESULT = "result.json"
#: Where transfer outputs go inside a study run folder by default.
RUN_TRANSFER_DIR = "transfer"

DETECTION_SCHEMA = pa.schema([
    ("key", pa.string()), ("boxes", pa.list_(pa.float32())),
    ("scores", pa.list_(pa.float32())), ("labels", pa.list_(pa.int32())),
    ("gt_boxes", pa.list_(pa.float32())), ("gt_labels", pa.list_(pa.int32())),
    ("gt_difficult", pa.list_(pa.bool_())),
])


def backbone_folder(out: Path, arch: str, seed: int, condition: str) -> Path:
    """``OUT/models/<arch>/seed<k>/train-<cond>``: one backbone's result and predictions."""
    return Path(out) / MODELS_DIR / arch / seed_dir(seed) / train_dir(condition)


def default_out(run: str | Path, name: str, mode: str) -> Path:
    """``RUN/transfer/<task>-<mode>`` (``name``: the task's canonical name)."""
    return Path(run).expanduser() / RUN_TRANSFER_DIR / f"{name}-{mode}"


@dataclass
class TransferOutput:
    """One ``veil transfer`` output folder."""

    root: Path
    manifest: dict[str, Any]
    rows: list[dict[str, Any]]
    _tables: dict[Path, Any] = field(default_factory=dict, repr=False)

    @property
    def task(self) -> str:
        return str(self.manifest["task"]["name"])

    @property
    def kind(self) -> str:
        return str(self.manifest["task"].get("kind", "multiclass"))

    @property
    def mode(self) -> str:
        return str(self.manifest["mode"])

    @property
    def metrics(self) -> list[str]:
        return list(self.manifest.get("metrics") or [self.primary])

    @property
    def primary(self) -> str:
        return str(self.manifest["task"].get("primary_metric", "top1"))

    def predictions_path(self, arch: str, seed: int, condition: str) -> Path:
        return backbone_folder(self.root, arch, seed, condition) / PREDICTIONS

    def table(self, arch: str, seed: int, condition: str) -> Any:
        path = self.predictions_path(arch, seed, condition)
        if path not in self._tables:
            self._tables[path] = pq.read_table(path)
        return self._tables[path]


def load_transfer(path: str | Path) -> TransferOutput:
    """Open a ``veil transfer`` output folder: its manifest and results rows."""
    root = Path(path)
    manifest_file = root / MANIFEST
    if not manifest_file.is_file():
        raise VeilError(f"{root} is not a `veil transfer` output (no {MANIFEST})")
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    results = root / RESULTS
    rows = json.loads(results.read_text(encoding="utf-8")) if results.is_file() else []
    return TransferOutput(root, manifest, rows)


def find_transfer_dirs(run_root: str | Path) -> list[Path]:
    """The transfer outputs kept inside a study run (``RUN/transfer/*/``)."""
    return sorted(p.parent for p in Path(run_root).glob(f"{RUN_TRANSFER_DIR}/*/{MANIFEST}"))


def detection_table(keys: Sequence[str], detections: Sequence[ImageDetections]) -> pa.Table:
    """Per test image: the detections and the ground truth, enough to recompute mAP."""

    def floats(arrays: list[np.ndarray]) -> pa.Array:
        return pa.array([a.reshape(-1).astype(np.float32) for a in arrays],
                        pa.list_(pa.float32()))

    def ints(arrays: list[np.ndarray]) -> pa.Array:
        return pa.array([a.astype(np.int32) for a in arrays], pa.list_(pa.int32()))

    return pa.table([
        pa.array(list(keys), pa.string()),
        floats([d.boxes for d in detections]),
        floats([d.scores for d in detections]),
        ints([d.labels for d in detections]),
        floats([d.gt_boxes for d in detections]),
        ints([d.gt_labels for d in detections]),
        pa.array([d.gt_difficult.astype(bool) for d in detections], pa.list_(pa.bool_())),
    ], schema=DETECTION_SCHEMA)


def read_detections(table: pa.Table) -> list[ImageDetections]:
    """The inverse of :func:`detection_table`."""
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    out = []
    for i in range(table.num_rows):
        out.append(ImageDetections(
            boxes=np.asarray(columns["boxes"][i], np.float32).reshape(-1, 4),
            scores=np.asarray(columns["scores"][i], np.float32),
            labels=np.asarray(columns["labels"][i], np.int64),
            gt_boxes=np.asarray(columns["gt_boxes"][i], np.float32).reshape(-1, 4),
            gt_labels=np.asarray(columns["gt_labels"][i], np.int64),
            gt_difficult=np.asarray(columns["gt_difficult"][i], bool)))
    return out
