"""Read a study run folder (written by `veil study`; :mod:`veil.study.layout` owns its format).

Only what analysis needs is loaded, one predictions file at a time: on ImageNet a file's
class scores are 50,000 x 1000 floats, so they are read only to compute per-class AP and
then dropped. AP ranks images by the ``logits`` column when the file has one (the
authors' Table 4 takes AP on the raw ``output_scores``), else by ``probs`` (older runs;
softmax changes each class's ranking of the images, so the tables say which was used).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from veil.errors import VeilError
from veil.study.layout import (
    FACES_FILE,
    FACES_REQUIRED,
    ORIGINAL,
    SCORE_COLUMNS,
    STUDY_FILE,
    RunFiles,
    find_predictions,
    read_study,
)


@dataclass(frozen=True)
class TrainEval:
    """A (train, eval) pair of a run: the condition a model was trained on and the one it
    was evaluated on (each an obfuscation condition's name, or ``original``)."""

    train: str
    eval: str

    def __str__(self) -> str:
        return f"train-{self.train}/eval-{self.eval}"


@dataclass
class EvalPredictions:
    """One model's answers on the validation set, sorted by key: the light columns of a
    predictions file (the class scores are read apart, by :func:`read_scores`)."""

    keys: np.ndarray  # str
    labels: np.ndarray  # int
    pred: np.ndarray  # int, top-1
    correct1: np.ndarray  # bool
    correct5: np.ndarray  # bool

    def __len__(self) -> int:
        return int(self.keys.size)


@dataclass
class StudyRun:
    """A run folder: its study.json, the conditions with predictions, and helpers to read
    them (cached, since several tables use the same files)."""

    root: Path
    study: dict[str, Any]
    found: dict[tuple[str, int, TrainEval], Path]
    _cache: dict[Path, EvalPredictions] = field(default_factory=dict, repr=False)
    _keys: list[np.ndarray] = field(default_factory=list, repr=False)
    _ap_cache: dict[Path, np.ndarray] = field(default_factory=dict, repr=False)
    _ap_source: dict[Path, str] = field(default_factory=dict, repr=False)

    # -- what the run holds ---------------------------------------------------------------
    @property
    def classes(self) -> list[dict[str, Any]]:
        return list(self.study.get("classes") or [])

    @property
    def num_classes(self) -> int:
        if self.classes:
            return len(self.classes)
        raise VeilError(f"{self.root / STUDY_FILE} lists no classes")

    def class_names(self) -> list[str]:
        return [str(c.get("name") or c.get("wnid") or c.get("index")) for c in self.classes]

    def class_wnids(self) -> list[str | None]:
        return [c.get("wnid") for c in self.classes]

    @property
    def archs(self) -> list[str]:
        listed = [a for a in self.study.get("archs", []) if any(k[0] == a for k in self.found)]
        extra = sorted({k[0] for k in self.found} - set(listed))
        return listed + extra

    @property
    def methods(self) -> list[str]:
        listed = list(self.study.get("methods", []))
        seen = {c.train for *_, c in self.found} | {c.eval for *_, c in self.found}
        extra = sorted(seen - set(listed) - {ORIGINAL})
        return [m for m in listed if m in seen] + extra

    def seeds(self, arch: str, condition: TrainEval) -> list[int]:
        return sorted(s for a, s, c in self.found if a == arch and c == condition)

    def model_path(self, arch: str, seed: int, train: str) -> Path:
        return RunFiles.of(self.root, arch, seed, train).model

    # -- reading --------------------------------------------------------------------------
    def predictions(self, arch: str, seed: int, condition: TrainEval) -> EvalPredictions:
        path = self.found[(arch, seed, condition)]
        if path not in self._cache:
            predictions = read_predictions(path)
            # every condition predicts the same images: keep one copy of the key strings
            # (180 files x 50,000 keys would otherwise hold millions of strings)
            for keys in self._keys:
                if np.array_equal(keys, predictions.keys):
                    predictions.keys = keys
                    break
            else:
                self._keys.append(predictions.keys)
            self._cache[path] = predictions
        return self._cache[path]

    def class_ap(self, arch: str, seed: int, condition: TrainEval) -> np.ndarray | None:
        """Per-class AP from the file's logits (else probabilities), or None without
        either."""
        from veil.analysis.stats import per_class_ap

        path = self.found[(arch, seed, condition)]
        if path not in self._ap_cache:
            found = read_scores(path, self.num_classes)
            if found is None:
                return None
            scores, source = found
            labels = self.predictions(arch, seed, condition).labels
            self._ap_cache[path] = per_class_ap(labels, scores)
            self._ap_source[path] = source
        return self._ap_cache[path]

    def ap_source(self, arch: str, seed: int, condition: TrainEval) -> str | None:
        """"logits" or "probs": what :meth:`class_ap` ranked by (after it ran)."""
        return self._ap_source.get(self.found[(arch, seed, condition)])

    def faces(self) -> Any:
        """faces.parquet as a pandas DataFrame, or None when the run has none."""
        path = self.root / FACES_FILE
        if not path.is_file():
            return None
        import pandas as pd

        frame = pq.read_table(path).to_pandas()
        missing = set(FACES_REQUIRED) - set(frame.columns)
        if missing:
            raise VeilError(f"{path} lacks columns {sorted(missing)}")
        if "split" not in frame.columns:
            frame["split"] = frame["key"].str.split("/").str[0]
        if "face_area" not in frame.columns:
            frame["face_area"] = math.nan
        return pd.DataFrame(frame)


def load_run(root: str | Path) -> StudyRun:
    """Open RUN: read study.json and find every predictions file."""
    root = Path(root)
    return StudyRun(root, read_study(root), dict(_find_predictions(root)))


def _find_predictions(root: Path) -> Iterator[tuple[tuple[str, int, TrainEval], Path]]:
    for arch, seed, train, evaluated, path in find_predictions(root):
        yield (arch, seed, TrainEval(train, evaluated)), path


_COLUMNS = ("key", "label", "pred", "top5", "correct1", "correct5")


def read_predictions(path: Path) -> EvalPredictions:
    """The light columns of one predictions file, sorted by key. ``correct1``/``correct5``
    are recomputed from ``pred``/``top5`` when absent."""
    schema = pq.read_schema(path)
    columns = [c for c in _COLUMNS if c in schema.names]
    if not {"key", "label"} <= set(columns) or not {"pred", "top5"} & set(columns):
        raise VeilError(f"{path}: needs key, label and pred or top5 columns")
    table = pq.read_table(path, columns=columns)
    keys = np.asarray(table.column("key").to_pylist(), dtype=object)
    labels = table.column("label").to_numpy().astype(np.int64)
    top5 = None
    if "top5" in columns:
        top5 = np.asarray(table.column("top5").combine_chunks().flatten()
                          .to_numpy()).reshape(len(keys), -1).astype(np.int64)
    pred = (table.column("pred").to_numpy().astype(np.int64) if "pred" in columns
            else top5[:, 0])  # type: ignore[index]
    correct1 = (table.column("correct1").to_numpy().astype(bool) if "correct1" in columns
                else pred == labels)
    if "correct5" in columns:
        correct5 = table.column("correct5").to_numpy().astype(bool)
    elif top5 is not None:
        correct5 = (top5 == labels[:, None]).any(axis=1)
    else:
        raise VeilError(f"{path}: needs a top5 or correct5 column")
    order = np.argsort(keys, kind="stable")
    if len(set(keys.tolist())) != len(keys):
        raise VeilError(f"{path}: the same key appears twice")
    return EvalPredictions(keys[order], labels[order], pred[order], correct1[order],
                       correct5[order])


def read_scores(path: Path, num_classes: int) -> tuple[np.ndarray, str] | None:
    """The (images, classes) class scores in key order and their column (``logits``,
    preferred, or ``probs``), or None without either."""
    schema = pq.read_schema(path)
    column = next((c for c in SCORE_COLUMNS if c in schema.names), None)
    if column is None:
        return None
    table = pq.read_table(path, columns=["key", column])
    keys = np.asarray(table.column("key").to_pylist(), dtype=object)
    flat = table.column(column).combine_chunks().flatten().to_numpy()
    scores = np.asarray(flat, dtype=np.float32).reshape(len(keys), -1)
    if scores.shape[1] != num_classes:
        raise VeilError(f"{path}: {column} have {scores.shape[1]} classes, study.json lists "
                        f"{num_classes}")
    return scores[np.argsort(keys, kind="stable")], column


def paired(first: EvalPredictions, second: EvalPredictions, what: str) -> None:
    """Refuse to compare predictions made on different image sets."""
    if len(first) != len(second) or not np.array_equal(first.keys, second.keys):
        only = set(first.keys.tolist()) ^ set(second.keys.tolist())
        raise VeilError(f"{what}: the two conditions were evaluated on different images "
                        f"({len(first)} vs {len(second)}; e.g. {sorted(only)[:3]})")
