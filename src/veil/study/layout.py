"""The study run folder: its layout, file names and Parquet schemas, in one place.

``veil study`` writes a run folder through this module; ``veil analyze``/``report``
(:mod:`veil.analysis.run`) and ``veil transfer`` (:mod:`veil.transfer.backbone`) read it
through this module. It imports neither torch nor the training code, so reading a run
stays light::

    RUN/study.json                    what was run: classes, methods, archs, seeds, status
    RUN/faces.parquet                 per image: faces and their area (FACES_SCHEMA)
    RUN/cache/                        decoded images of each condition (deleted when done)
    RUN/runs/<arch>/seed<k>/train-<cond>/
        config.json  timings.json  checkpoint.pt  model.pt  history.csv
        predictions/eval-<cond>.parquet          (predictions_schema)

``<cond>`` is ``original`` or the name of an obfuscation condition. A predictions file is
written atomically, so one that exists marks its (train, eval) condition done.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from veil.errors import VeilError

ORIGINAL = "original"

STUDY_FILE = "study.json"
FACES_FILE = "faces.parquet"
CACHE_DIR = "cache"
RUNS_DIR = "runs"
PREDICTIONS_DIR = "predictions"

CONFIG_FILE = "config.json"
TIMINGS_FILE = "timings.json"
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"
HISTORY_FILE = "history.csv"

#: history.csv's columns, one row per epoch.
HISTORY_FIELDS = ("epoch", "lr", "train_loss", "train_top1", "val_top1")

FACES_SCHEMA = pa.schema([
    ("key", pa.string()), ("split", pa.string()), ("label", pa.int64()),
    ("n_faces", pa.int64()), ("face_area", pa.float64()), ("width", pa.int64()),
    ("height", pa.int64()),
])
#: The columns a faces table must have (older runs may lack the others).
FACES_REQUIRED = ("key", "label", "n_faces")

#: A predictions file's columns, in order; ``logits`` is absent from older runs.
PREDICTION_COLUMNS = ("key", "label", "pred", "top5", "probs", "correct1", "correct5",
                      "logits")
#: The columns that hold one score per class, the preferred first (the authors' AP ranks
#: by the logits, their ``output_scores``).
SCORE_COLUMNS = ("logits", "probs")

_SEED_DIR = re.compile(r"^seed(\d+)$")


def predictions_schema(num_classes: int, *, logits: bool = True) -> pa.Schema:
    """A predictions file's schema: key, label, top-1 ``pred``, ``top5`` (up to five class
    indices, best first), the softmax ``probs`` (fixed-size list), ``correct1/5``, and
    ``logits`` (list<float32>, one per class in class-index order)."""
    fields = [
        ("key", pa.string()), ("label", pa.int64()), ("pred", pa.int64()),
        ("top5", pa.list_(pa.int32())), ("probs", pa.list_(pa.float32(), num_classes)),
        ("correct1", pa.bool_()), ("correct5", pa.bool_()),
    ]
    if logits:
        fields.append(("logits", pa.list_(pa.float32())))
    return pa.schema(fields)


def seed_dir(seed: int | str) -> str:
    return f"seed{seed}"


def train_dir(condition: str) -> str:
    return f"train-{condition}"


def predictions_name(condition: str) -> str:
    return f"eval-{condition}.parquet"


@dataclass(frozen=True)
class RunFiles:
    """The files of one training run (``runs/<arch>/seed<k>/train-<cond>/``)."""

    folder: Path

    @classmethod
    def of(cls, root: Path, arch: str, seed: int, train: str) -> RunFiles:
        """The training run of ``arch``, ``seed`` and train condition ``train`` in ``root``."""
        return cls(Path(root) / training_folder(arch, seed, train))

    @property
    def checkpoint(self) -> Path:
        return self.folder / CHECKPOINT_FILE

    @property
    def model(self) -> Path:
        return self.folder / MODEL_FILE

    @property
    def config(self) -> Path:
        return self.folder / CONFIG_FILE

    @property
    def timings(self) -> Path:
        return self.folder / TIMINGS_FILE

    @property
    def history(self) -> Path:
        return self.folder / HISTORY_FILE

    def predictions(self, condition: str) -> Path:
        return self.folder / PREDICTIONS_DIR / predictions_name(condition)


def training_folder(arch: str, seed: int | str, train: str) -> str:
    """``runs/<arch>/seed<k>/train-<cond>``, relative to the run folder."""
    return f"{RUNS_DIR}/{arch}/{seed_dir(seed)}/{train_dir(train)}"


def predictions_path(arch: str, seed: int, train: str, evaluated: str) -> str:
    """A predictions file's path relative to the run folder (as study.json lists it)."""
    return (f"{training_folder(arch, seed, train)}/{PREDICTIONS_DIR}/"
            f"{predictions_name(evaluated)}")


def evaluations(train: str) -> list[str]:
    """What a model trained on ``train`` is evaluated on: original models on original
    images, the others on their own condition and on original images."""
    return [ORIGINAL] if train == ORIGINAL else [train, ORIGINAL]


def read_study(root: Path) -> dict[str, Any]:
    """RUN/study.json, or a user-facing error when ``root`` is no run folder."""
    path = Path(root) / STUDY_FILE
    if not path.is_file():
        raise VeilError(f"{root} is not a study run folder (no {STUDY_FILE})")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise VeilError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise VeilError(f"{path} holds no JSON object")
    return document


def find_predictions(root: Path) -> Iterator[tuple[str, int, str, str, Path]]:
    """(arch, seed, train, eval, path) of every predictions file in a run folder, sorted
    by path."""
    pattern = f"{RUNS_DIR}/*/seed*/train-*/{PREDICTIONS_DIR}/eval-*.parquet"
    for path in sorted(Path(root).glob(pattern)):
        seed_match = _SEED_DIR.match(path.parents[2].name)
        if seed_match is None:
            continue
        yield (path.parents[3].name, int(seed_match.group(1)),
               path.parents[1].name.removeprefix("train-"), path.stem.removeprefix("eval-"),
               path)


def find_models(root: Path) -> Iterator[tuple[str, int, str, Path]]:
    """(arch, seed, train, path) of every finished training run's ``model.pt``, sorted by
    path."""
    for path in sorted(Path(root).glob(f"{RUNS_DIR}/*/seed*/train-*/{MODEL_FILE}")):
        seed_match = _SEED_DIR.match(path.parent.parent.name)
        if seed_match is None:
            continue
        yield (path.parents[2].name, int(seed_match.group(1)),
               path.parent.name.removeprefix("train-"), path)
