"""``veil transfer``: every backbone of a study on one downstream task, in one mode.

For each backbone (architecture x seed x training condition) of the study run, either
a linear probe on frozen cached features or full fine-tuning (classification tasks), or
a Faster R-CNN with a frozen / fine-tuned backbone (VOC). The output folder:

    OUT/transfer.json     what was run: the study, the task, settings, status
    OUT/results.json      one row per backbone: its metrics (also OUT/results.csv)
    OUT/attributes.csv    CelebA: accuracy and AP of every attribute, per backbone
    OUT/comparison.{md,csv,png}   original vs each method (written by
                          :func:`veil.analysis.transfer.write_comparison` after the run)
    OUT/models/<arch>/seed<k>/train-<cond>/result.json, predictions.parquet
    OUT/cache/            decoded pixels and frozen features (safe to delete)

The layout and the file names are :mod:`veil.transfer.results`'s. A backbone whose
``result.json`` records the same backbone file, data and settings is not run again, so an
interrupted run resumes and adding seeds to the study only trains what is new.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import os
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from veil import __version__
from veil.cores import available_cores
from veil.errors import VeilError
from veil.files import atomic_path, write_json
from veil.study.train import mix_seed
from veil.transfer import metrics as M
from veil.transfer.backbone import Backbone, find_backbones
from veil.transfer.detection import (
    DetectionOptions,
    build_detector,
    predict_detections,
    train_detector,
)
from veil.transfer.features import FeatureStats, Preprocess, cached_features, load_pixels
from veil.transfer.finetune import FinetuneOptions, finetune
from veil.transfer.linear import LinearOptions, linear_probe
from veil.transfer.results import (
    ATTRIBUTES_CSV,
    CACHE_DIR,
    MANIFEST,
    PREDICTIONS,
    RESULT,
    RESULTS,
    RESULTS_CSV,
    backbone_folder,
    detection_table,
)
from veil.transfer.results import default_out as _default_out
from veil.transfer.tasks import ClassificationTask, DetectionTask, Task, open_task, task_name
from veil.transfer.tasks.base import MULTICLASS, TaskSplit
from veil.transfer.tasks.voc import DetectionSplit

MODES = ("linear", "finetune")


@dataclass
class TransferConfig:
    """Everything ``veil transfer`` is asked to do (its flags, as Python)."""

    run: str | os.PathLike[str]
    task: str
    data: str | os.PathLike[str]
    mode: str = "linear"
    out: str | os.PathLike[str] | None = None  # None: RUN/transfer/<task>-<mode>
    seeds: int | Sequence[int] | None = None  # a count (the run's first N) or a list
    archs: Sequence[str] | None = None
    conditions: Sequence[str] | None = None  # train conditions (default: all)
    train_split: str | None = None
    test_split: str | None = None
    partition: int = 1
    train_per_class: int = 100
    year: int | None = None
    ap_method: str | None = None
    limit: int | None = None  # images per split (quick tries)
    img_size: int | None = None  # None: each backbone's own input size
    precision: str | None = None  # None: each backbone's training precision
    linear: LinearOptions = field(default_factory=LinearOptions)
    finetune: FinetuneOptions = field(default_factory=FinetuneOptions)
    detection: DetectionOptions = field(default_factory=DetectionOptions)
    batch_size: int = 256  # feature extraction and evaluation
    workers: int | None = None  # decoding processes
    threads: int | None = None
    device: str = "auto"
    cache_dir: str | os.PathLike[str] | None = None  # None: OUT/cache
    progress: bool = False
    log: Callable[[str], None] | None = None


@dataclass
class BackboneResult:
    arch: str
    seed: int
    condition: str
    metrics: dict[str, float]
    n_test: int
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    reused: bool = False

    def row(self, task: str, mode: str) -> dict[str, Any]:
        return {"task": task, "mode": mode, "arch": self.arch, "seed": self.seed,
                "condition": self.condition, **self.metrics, "n_test": self.n_test,
                "seconds": round(self.seconds, 3)}


@dataclass
class TransferSummary:
    out: Path
    task: str
    mode: str
    results: list[BackboneResult]
    notes: list[str]
    features: FeatureStats
    seconds: float


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise VeilError("--device cuda was asked for, but torch sees no CUDA GPU")
    return torch.device(requested)


def default_out(run: str | os.PathLike[str], task: str, mode: str) -> Path:
    return _default_out(Path(run), task_name(task), mode)


def _task_seed(seed: int, task: str, mode: str) -> int:
    """The downstream seed of a backbone: its study seed mixed with task and mode."""
    return mix_seed(seed, zlib.crc32(f"{task}/{mode}".encode())) % 2**31


def _detection_fingerprint(split: DetectionSplit) -> str:
    digest = hashlib.sha256()
    for key, path, ann in zip(split.keys, split.paths, split.annotations, strict=True):
        info = os.stat(path)
        digest.update(f"{key}\t{info.st_size}\t{info.st_mtime_ns}\n".encode())
        for array in (ann.boxes, ann.labels, ann.difficult):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class Transfer:
    """One ``veil transfer`` run."""

    def __init__(self, config: TransferConfig) -> None:
        if config.mode not in MODES:
            raise VeilError(f"--mode must be one of {', '.join(MODES)}, not {config.mode!r}")
        self.config = config
        self.run_dir = Path(config.run).expanduser()
        self.backbones, self.notes = find_backbones(
            self.run_dir, archs=config.archs, seeds=config.seeds, conditions=config.conditions)
        self.task: Task = open_task(
            config.task, Path(config.data), train_split=config.train_split,
            test_split=config.test_split, partition=config.partition,
            train_per_class=config.train_per_class, year=config.year,
            ap_method=config.ap_method, limit=config.limit)
        self.out = (Path(config.out).expanduser() if config.out is not None
                    else default_out(self.run_dir, config.task, config.mode))
        self.cache_dir = (Path(config.cache_dir).expanduser() if config.cache_dir is not None
                          else self.out / CACHE_DIR)
        self.device = pick_device(config.device)
        self.workers = config.workers or available_cores()
        self.stats = FeatureStats()
        self._pixels: dict[tuple[str, int], np.ndarray] = {}
        self._fingerprints: dict[str, str] = {}

    # ----------------------------------------------------------------- helpers

    def _log(self, message: str) -> None:
        (self.config.log or _stderr)(message)

    def settings(self) -> dict[str, Any]:
        mode = self.config.mode
        if isinstance(self.task, DetectionTask):
            options = self.config.detection.describe()
            options["backbone"] = "frozen" if mode == "linear" else "trained"
        elif mode == "linear":
            options = self.config.linear.describe()
        else:
            options = self.config.finetune.describe()
        return {"mode": mode, "options": options, "img_size": self.config.img_size,
                "precision": self.config.precision, "limit": self.config.limit}

    def _fingerprint(self, name: str) -> str:
        if name not in self._fingerprints:
            split = self.task.splits[name]
            self._fingerprints[name] = (_detection_fingerprint(split)
                                        if isinstance(split, DetectionSplit)
                                        else split.fingerprint())
        return self._fingerprints[name]

    def identity(self, backbone: Backbone) -> dict[str, Any]:
        """What a finished backbone result must share with this run to be reused."""
        identity = {"backbone": backbone.sha256, "task": self.task.name,
                    "splits": {n: self._fingerprint(n) for n in sorted(self.task.splits)},
                    "settings": self.settings(),
                    "preprocess": self.preprocess(backbone).describe()}
        return json.loads(json.dumps(identity))  # as it reads back from result.json

    def preprocess(self, backbone: Backbone) -> Preprocess:
        return Preprocess.for_backbone(backbone, img_size=self.config.img_size,
                                       precision=self.config.precision)

    def folder(self, backbone: Backbone) -> Path:
        return backbone_folder(self.out, backbone.arch, backbone.seed, backbone.condition)

    def pixels(self, split: TaskSplit, size: int) -> np.ndarray:
        key = (split.name, size)
        if key not in self._pixels:
            self._pixels[key] = load_pixels(self.cache_dir, self.task.name, split, size,
                                            workers=self.workers, progress=self.config.progress)
        return self._pixels[key]

    # ----------------------------------------------------------------- one backbone

    def run_backbone(self, backbone: Backbone) -> BackboneResult:
        folder = self.folder(backbone)
        identity = self.identity(backbone)
        done = folder / RESULT
        if done.is_file() and (folder / PREDICTIONS).is_file():
            saved = json.loads(done.read_text(encoding="utf-8"))
            if saved.get("identity") == identity:
                return BackboneResult(backbone.arch, backbone.seed, backbone.condition,
                                      saved["metrics"], saved["n_test"], saved["seconds"],
                                      saved.get("details", {}), reused=True)
        start = time.perf_counter()
        seed = _task_seed(backbone.seed, self.task.name, self.config.mode)
        if isinstance(self.task, DetectionTask):
            metrics, table, details = self._detection(backbone, seed)
        else:
            metrics, table, details = self._classification(backbone, seed)
        seconds = time.perf_counter() - start
        result = BackboneResult(backbone.arch, backbone.seed, backbone.condition, metrics,
                                table.num_rows, seconds, details)
        with atomic_path(folder / PREDICTIONS) as tmp:
            pq.write_table(table, tmp)
        write_json(done, {"backbone": backbone.describe(), "task": self.task.name,
                          "mode": self.config.mode, "downstream_seed": seed,
                          "metrics": metrics, "n_test": table.num_rows, "seconds": seconds,
                          "details": details, "identity": identity})
        return result

    def _classification(self, backbone: Backbone, seed: int
                        ) -> tuple[dict[str, float], pa.Table, dict[str, Any]]:
        task = self.task
        assert isinstance(task, ClassificationTask)
        pre = self.preprocess(backbone)
        details: dict[str, Any] = {"preprocess": pre.describe()}
        if self.config.mode == "linear":
            model: list[torch.nn.Module] = []

            def get_model() -> torch.nn.Module:
                if not model:
                    from veil.transfer.features import feature_backbone

                    model.append(feature_backbone(backbone, self.device))
                return model[0]

            def features(split: TaskSplit) -> np.ndarray:
                return cached_features(
                    self.cache_dir, task.name, split, backbone, pre,
                    lambda: self.pixels(split, pre.resize), model=get_model,
                    device=self.device, batch_size=self.config.batch_size,
                    progress=self.config.progress, stats=self.stats)

            val = task.val
            probe = linear_probe(
                features(task.train), task.train.labels, features(task.test), kind=task.kind,
                outputs=task.num_outputs,
                val=None if val is None else (features(val), val.labels),
                options=self.config.linear, seed=seed, device=self.device)
            scores = probe.test_scores
            details.update({"l2": probe.l2, "l2_selection": probe.selection})
        else:
            tuned = finetune(
                backbone, self.pixels(task.train, pre.resize), task.train.labels,
                self.pixels(task.test, pre.resize), kind=task.kind, outputs=task.num_outputs,
                pre=pre, options=self.config.finetune, seed=seed, device=self.device,
                progress=self.config.progress, eval_batch=self.config.batch_size)
            scores = tuned.test_scores
            details.update({"history": tuned.history, "steps": tuned.steps})
        return classification_outputs(task, scores, details)

    def _detection(self, backbone: Backbone, seed: int
                   ) -> tuple[dict[str, float], pa.Table, dict[str, Any]]:
        task = self.task
        assert isinstance(task, DetectionTask)
        options = self.config.detection
        model = build_detector(backbone, len(task.classes),
                               frozen=self.config.mode == "linear", options=options)
        precision = self.config.precision or backbone.precision
        history, steps = train_detector(model, task.train, options=options, seed=seed,
                                        device=self.device, precision=precision,
                                        progress=self.config.progress, label=backbone.label)
        detections = predict_detections(model, task.test, device=self.device,
                                        batch_size=max(1, options.batch_size),
                                        workers=options.workers, progress=self.config.progress)
        matched = M.match_detections(detections, len(task.classes))
        per_class = M.class_ap(matched, task.ap_method)
        finite = per_class[np.isfinite(per_class)]
        metrics = {"map50": float(finite.mean()) if len(finite) else float("nan")}
        details = {"history": history, "steps": steps, "ap_method": task.ap_method,
                   "class_ap": {c: (None if np.isnan(v) else float(v))
                                for c, v in zip(task.classes, per_class, strict=True)}}
        return metrics, detection_table(task.test.keys, detections), details

    # ----------------------------------------------------------------- the run

    def manifest(self, status: str, results: list[BackboneResult]) -> dict[str, Any]:
        return {
            "veil_version": __version__,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "run": str(self.run_dir.resolve()), "task": self.task.describe(),
            "data": str(Path(self.config.data).expanduser().resolve()),
            "mode": self.config.mode, "settings": self.settings(),
            "metrics": metric_names(self.task),
            "backbones": [b.describe() | {"done": any(
                (r.arch, r.seed, r.condition) == (b.arch, b.seed, b.condition)
                for r in results)} for b in self.backbones],
            "status": status, "notes": self.notes,
            "environment": {"device": str(self.device), "threads": torch.get_num_threads(),
                            "torch": torch.__version__},
        }

    def run(self) -> TransferSummary:
        threads = torch.get_num_threads()
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)

    def _run(self) -> TransferSummary:
        start = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        for note in self.notes:
            self._log(f"note: {note}")
        self._log(f"{self.task.name} ({self.task.source}): "
                  + ", ".join(f"{n} {len(s)}" for n, s in self.task.splits.items())
                  + f"; {len(self.backbones)} backbone(s), mode {self.config.mode}")
        write_json(self.out / MANIFEST, self.manifest("running", []))
        results: list[BackboneResult] = []
        for backbone in self.backbones:
            result = self.run_backbone(backbone)
            results.append(result)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
            how = "reused" if result.reused else f"{result.seconds:.1f} s"
            self._log(f"  {backbone.label}: {shown} ({how})")
            write_json(self.out / MANIFEST, self.manifest("running", results))
        self.write_tables(results)
        write_json(self.out / MANIFEST, self.manifest("done", results))
        return TransferSummary(self.out, self.task.name, self.config.mode, results, self.notes,
                               self.stats, time.perf_counter() - start)

    def write_tables(self, results: list[BackboneResult]) -> None:
        rows = [r.row(self.task.name, self.config.mode) for r in results]
        write_json(self.out / RESULTS, rows)
        _write_csv(self.out / RESULTS_CSV, rows)
        if isinstance(self.task, ClassificationTask) and self.task.kind != MULTICLASS:
            attr_rows = []
            for r in results:
                for name, values in r.details.get("attributes", {}).items():
                    attr_rows.append({"arch": r.arch, "seed": r.seed, "condition": r.condition,
                                      "attribute": name, **values})
            _write_csv(self.out / ATTRIBUTES_CSV, attr_rows)


def metric_names(task: Task) -> list[str]:
    if isinstance(task, DetectionTask):
        return ["map50"]
    return ["top1"] if task.kind == MULTICLASS else ["mean_accuracy", "mean_ap"]


def classification_outputs(task: ClassificationTask, scores: np.ndarray,
                           details: dict[str, Any]
                           ) -> tuple[dict[str, float], pa.Table, dict[str, Any]]:
    """Metrics and the per-image predictions table of a classification task."""
    labels = task.test.labels
    keys = pa.array(task.test.keys, pa.string())
    if task.kind == MULTICLASS:
        pred = scores.argmax(1)
        correct = pred == labels
        table = pa.table({"key": keys, "label": pa.array(labels, pa.int64()),
                          "pred": pa.array(pred.astype(np.int64), pa.int64()),
                          "correct": pa.array(correct.astype(np.float32), pa.float32())})
        return {"top1": float(correct.mean())}, table, details
    right = M.attribute_correct(labels, scores)
    ap = M.attribute_ap(labels, scores)
    per_image = right.mean(axis=1).astype(np.float32)
    n_attr = labels.shape[1]
    table = pa.table({
        "key": keys,
        "labels": pa.FixedSizeListArray.from_arrays(
            pa.array(labels.reshape(-1).astype(np.int8), pa.int8()), n_attr),
        "scores": pa.FixedSizeListArray.from_arrays(
            pa.array(scores.reshape(-1).astype(np.float32), pa.float32()), n_attr),
        "correct": pa.array(per_image, pa.float32()),
    })
    details["attributes"] = {
        name: {"accuracy": float(right[:, a].mean()),
               "ap": None if np.isnan(ap[a]) else float(ap[a])}
        for a, name in enumerate(task.classes)}
    metrics = {"mean_accuracy": float(right.mean()),
               "mean_ap": float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")}
    return metrics, table, details


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(text.getvalue(), encoding="utf-8")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_transfer(config: TransferConfig) -> TransferSummary:
    """Run (or resume) ``veil transfer``."""
    return Transfer(config).run()
