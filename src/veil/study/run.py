"""``veil study``: train and evaluate every condition of the paper's experiment.

For each architecture and seed: one model trained on the original images (shared by
all methods) and evaluated on them, and per method one model trained on the
obfuscated images, evaluated on obfuscated and on original images. Everything lands
in the run folder whose layout, file names and schemas :mod:`veil.study.layout` owns:

    RUN/study.json, RUN/faces.parquet,
    RUN/runs/<arch>/seed<k>/train-<cond>/{config.json, timings.json, checkpoint.pt,
        model.pt, history.csv, predictions/eval-<cond>.parquet}

A condition is done when its predictions file exists (written atomically); a training
run resumes from its last epoch's checkpoint. Running the same command again after
an interruption therefore finishes the study and gives the predictions an
uninterrupted run would have (deterministic on the CPU). Under torchrun every rank
runs this same loop; rank 0 alone writes files.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torchvision

from veil import __version__
from veil.cores import available_cores as default_workers
from veil.errors import VeilError
from veil.faces import FacesSnapshot, load_faces, match_faces
from veil.files import atomic_path, write_json
from veil.processes import process_pool
from veil.study.data import (
    ORIGINAL,
    CacheSource,
    Condition,
    Source,
    Split,
    StreamSource,
    StudyData,
    face_boxes,
    face_rows,
    load_or_build_cache,
    make_condition,
    open_study_data,
)
from veil.study.ddp import DistEnv, barrier, init_distributed, rank_threads, shutdown
from veil.study.evaluate import (
    Predictions,
    accuracy,
    predict,
    predictions_table,
    write_predictions,
)
from veil.study.layout import (
    CACHE_DIR,
    FACES_FILE,
    FACES_SCHEMA,
    STUDY_FILE,
    RunFiles,
    evaluations,
    predictions_path,
)
from veil.study.profiles import PROFILE_DEFAULTS, Recipe, resolve_recipe
from veil.study.train import (
    check_arch,
    epoch_summary,
    load_trained,
    train_model,
)


@dataclass
class StudyConfig:
    """Everything ``veil study`` is asked to do (the CLI's flags, as Python)."""

    data: str | os.PathLike[str]
    faces: str | os.PathLike[str] | FacesSnapshot | Mapping[str, Any]
    out: str | os.PathLike[str]
    methods: Sequence[str] | None = None  # None: the profile's (PROFILE_DEFAULTS)
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    archs: Sequence[str] | None = None  # None: the profile's
    seeds: Sequence[int] | None = None  # None: the profile's (PROFILE_DEFAULTS)
    profile: str = "quick"
    overrides: Mapping[str, Any] = field(default_factory=dict)  # Recipe fields
    layout: str = "auto"
    labels_file: str | None = None
    image_column: str | None = None  # a Hugging Face dataset's (default: its Image feature)
    label_column: str | None = None  # a Hugging Face dataset's (default: its ClassLabel)
    limit: int | None = None  # images per split, spread over the classes
    workers: int | None = None  # decoding processes (cache) or DataLoader workers (stream)
    threads: int | None = None  # torch CPU threads per process
    device: str = "auto"
    keep_cache: bool = False
    parallel: int | None = None  # trainings at once on the CPU (None: auto, see Study)
    progress: bool = False
    log: Callable[[str], None] | None = None  # None: print to stderr
    stop_after_epochs: int | None = None  # tests: interrupt each training early


@dataclass
class ConditionResult:
    arch: str
    seed: int
    train: str
    eval: str
    path: str  # relative to the run folder
    top1: float | None = None
    top5: float | None = None
    status: str = "pending"


@dataclass
class StudySummary:
    out: Path
    conditions: list[ConditionResult]
    seconds: float
    done: bool


def seeds_from(spec: str | int | Sequence[int]) -> list[int]:
    """``3`` -> seeds 0, 1, 2; ``"0,5"`` -> seeds 0 and 5."""
    if isinstance(spec, int):
        if spec < 1:
            raise VeilError("--seeds must be at least 1")
        return list(range(spec))
    if isinstance(spec, str):
        text = spec.strip()
        if "," not in text:
            try:
                return seeds_from(int(text))
            except ValueError:
                raise VeilError(f"--seeds {spec!r}: expected a count or a list like 0,1"
                                ) from None
        try:
            return sorted({int(p) for p in text.split(",") if p.strip()})
        except ValueError:
            raise VeilError(f"--seeds {spec!r}: expected a count or a list like 0,1") from None
    return sorted({int(s) for s in spec})


def condition_plan(archs: Sequence[str], seeds: Sequence[int], methods: Sequence[str]
                   ) -> list[ConditionResult]:
    """The paper's conditions, with one shared train-original per arch and seed."""
    plan = []
    for arch in archs:
        for seed in seeds:
            for train in [ORIGINAL, *methods]:
                for ev in evaluations(train):
                    plan.append(ConditionResult(arch, seed, train, ev,
                                                predictions_path(arch, seed, train, ev)))
    return plan


def _merge(old: Sequence[Any], new: Sequence[Any]) -> list[Any]:
    return list(old) + [x for x in new if x not in old]


class Study:
    """One study run folder, driven rank by rank."""

    def __init__(self, config: StudyConfig, env: DistEnv, position: int | None = None
                 ) -> None:
        self.config = config
        self.env = env
        self.position = position  # a parallel job's row for its progress bars
        self.out = Path(config.out).expanduser()
        self.recipe: Recipe = resolve_recipe(
            config.profile, **{**dict(config.overrides),
                               **({"archs": tuple(config.archs)} if config.archs else {})})
        self.archs = list(self.recipe.archs)
        for arch in self.archs:
            check_arch(arch, self.recipe.img_size)
        defaults = PROFILE_DEFAULTS.get(config.profile)
        methods = config.methods if config.methods is not None else (
            defaults.methods if defaults else ())
        self.methods = list(dict.fromkeys(methods))
        if ORIGINAL in self.methods:
            raise VeilError("'original' is always trained; list only obfuscation methods")
        self.conditions: dict[str, Condition] = {ORIGINAL: make_condition(ORIGINAL)}
        for method in self.methods:
            self.conditions[method] = make_condition(method, config.method_options.get(method))
        self.seeds = list(config.seeds if config.seeds is not None else (
            defaults.seeds if defaults else (0,)))
        self.data: StudyData = open_study_data(config.data, layout=config.layout,
                                               labels_file=config.labels_file,
                                               image_column=config.image_column,
                                               label_column=config.label_column,
                                               limit=config.limit)
        snapshot = (config.faces if isinstance(config.faces, FacesSnapshot)
                    else load_faces(config.faces))  # type: ignore[arg-type]
        keys = self.data.train.keys + self.data.val.keys
        matching = match_faces(snapshot, keys,  # "validation" in a Hugging Face dataset
                               splits=sorted({k.split("/", 1)[0] for k in keys}))
        self.face_matching = matching.to_json()
        snapshot = matching.snapshot
        self.faces_description = snapshot.description
        self.boxes = face_boxes(snapshot)
        self.faces_fingerprint = snapshot.fingerprint()
        self.workers = config.workers or default_workers()
        self.sources: dict[tuple[str, str], Source] = {}
        self.caches: dict[tuple[str, str], np.ndarray] = {}
        self._check_faces_cover()

    # ----------------------------------------------------------------- setup

    def condition_plan(self) -> list[ConditionResult]:
        """Every (arch, seed, train, eval) this study produces, in order."""
        return condition_plan(self.archs, self.seeds, self.methods)

    def _log(self, message: str) -> None:
        if self.env.is_main:
            (self.config.log or _stderr)(message)

    def _check_faces_cover(self) -> None:
        keys = self.data.train.keys + self.data.val.keys
        missing = [k for k in keys if k not in self.boxes]
        if len(missing) == len(keys):
            raise VeilError(
                f"the faces source ({self.faces_description}) knows none of the dataset's"
                f" images (e.g. {keys[0]}): was it made from another dataset root? Keys are"
                " paths relative to the folder holding train/ and val/"
            )
        self.faces_missing = len(missing)
        if missing and self.position is None:
            self._log(f"warning: {len(missing)} of {len(keys)} images have no face record"
                      f" (e.g. {missing[0]}); they are treated as faceless")

    def identity(self) -> dict[str, Any]:
        """What a resumed study must share with the one in the folder."""
        return {
            "data": str(self.data.root.resolve()),
            "limit": self.config.limit,
            "faces_fingerprint": self.faces_fingerprint,
            "hyper": self.recipe.training_fields(),
            "train_size": len(self.data.train), "val_size": len(self.data.val),
            "method_options": {m: self.conditions[m].describe()["options"]
                               for m in self.methods},
        }

    def open_folder(self) -> None:
        """Create or reopen the run folder; refuse one made with other settings.

        Methods, architectures and seeds may be added to an existing study."""
        path = self.out / STUDY_FILE
        existing: dict[str, Any] | None = None
        if path.exists():
            existing = json.loads(path.read_text(encoding="utf-8"))
            old = existing.get("identity", {})
            mine = self.identity()
            options_old = old.get("method_options", {})
            clash = [k for k in mine if k != "method_options" and old.get(k) != mine[k]]
            clash += [f"options of {m}" for m in mine["method_options"]
                      if m in options_old and options_old[m] != mine["method_options"][m]]
            if clash:
                raise VeilError(
                    f"{self.out} holds a study made with other settings ({', '.join(clash)});"
                    " use another --out, or delete that folder to start over"
                )
            self.methods = _merge(existing.get("methods", []), self.methods)
            self.archs = _merge(existing.get("archs", []), self.archs)
            self.seeds = _merge(existing.get("seeds", []), self.seeds)
            for method in self.methods:
                if method not in self.conditions:
                    self.conditions[method] = make_condition(
                        method, options_old.get(method, {}))
        self._remember(existing)
        if self.env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.write_study("running", [])
            self.write_faces_table()
        barrier(self.env)

    def reopen(self) -> None:
        """Attach to the folder a parent process opened (a parallel training job)."""
        self._remember(json.loads((self.out / STUDY_FILE).read_text(encoding="utf-8")))

    def _remember(self, existing: dict[str, Any] | None) -> None:
        self.created = (existing or {}).get(
            "created", datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
        self.previous_seconds = float((existing or {}).get("timings", {})
                                      .get("total_seconds", 0.0))

    def write_study(self, status: str, results: list[ConditionResult],
                    seconds: float | None = None) -> None:
        plan = {r.path: r for r in results}
        conditions = []
        for item in condition_plan(self.archs, self.seeds, self.methods):
            found = self._with_metrics(plan.get(item.path, item))
            conditions.append({
                "arch": item.arch, "seed": item.seed, "train": item.train, "eval": item.eval,
                "predictions": item.path, "status": found.status,
                "top1": found.top1, "top5": found.top5,
            })
        document = {
            "veil_version": __version__,
            "created": self.created,
            "data": str(self.data.root.resolve()),
            "faces": self.faces_description,
            "methods": self.methods,
            "method_options": {m: self.conditions[m].describe()["options"]
                               for m in self.methods},
            "archs": self.archs,
            "seeds": self.seeds,
            "profile": self.recipe.profile,
            "hyper": self.recipe.to_json(),
            "classes": self.data.class_records(),
            "conditions": conditions,
            "status": status,
            "face_matching": self.face_matching,
            "dataset": {"train": len(self.data.train), "val": len(self.data.val),
                        "faces_missing": self.faces_missing, "limit": self.config.limit},
            "environment": {"world_size": self.env.world_size,
                            "device": str(self.env.device),
                            "threads": torch.get_num_threads(),
                            "torch": torch.__version__,
                            "torchvision": torchvision.__version__},
            "timings": {"total_seconds": self.previous_seconds + (seconds or 0.0)},
            "identity": self.identity(),
        }
        write_json(self.out / STUDY_FILE, document)

    def _with_metrics(self, item: ConditionResult) -> ConditionResult:
        """The condition with its accuracy read from its predictions, once they exist."""
        if item.top1 is None and (self.out / item.path).exists():
            metrics = accuracy(pq.read_table(self.out / item.path,
                                             columns=["correct1", "correct5"]))
            item.top1, item.top5, item.status = metrics["top1"], metrics["top5"], "done"
        return item

    def write_faces_table(self) -> None:
        path = self.out / FACES_FILE
        if path.exists():
            return
        rows = face_rows(self.data, self.boxes, workers=min(self.workers, 4))
        table = pa.Table.from_pylist(rows, schema=FACES_SCHEMA)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)

    # ----------------------------------------------------------------- data

    def source(self, split_name: str, condition_name: str) -> Source:
        key = (split_name, condition_name)
        if key in self.sources:
            return self.sources[key]
        split = self.data.split(split_name)
        condition = self.conditions[condition_name]
        recipe = self.recipe
        if recipe.loader == "stream":
            source: Source = StreamSource(
                split, self.boxes, condition, img_size=recipe.img_size,
                eval_resize=recipe.eval_resize, min_crop_scale=recipe.min_crop_scale,
                workers=self.workers)
        else:
            images = self._cache(split, condition)
            source = CacheSource(images, split.labels, recipe.img_size, recipe.min_crop_scale,
                                 device=self.env.device)
        self.sources[key] = source
        return source

    def _cache(self, split: Split, condition: Condition) -> np.ndarray:
        key = (split.name, condition.name)
        if key in self.caches:
            return self.caches[key]
        base = (self._cache(split, self.conditions[ORIGINAL]) if condition.only_faces_change
                else None)
        cache_dir = self.out / CACHE_DIR
        if self.env.is_main:
            start = time.perf_counter()
            load_or_build_cache(cache_dir, split, condition, self.recipe.eval_resize, self.boxes,
                                self.faces_fingerprint, base=base, workers=self.workers,
                                progress=self.config.progress)
            if self.position is None:  # a parallel job finds the parent's cache
                self._log(f"cache {split.name}/{condition.name}: {len(split)} images ready"
                          f" in {time.perf_counter() - start:.1f} s")
        barrier(self.env)
        images = load_or_build_cache(cache_dir, split, condition, self.recipe.eval_resize,
                                     self.boxes, self.faces_fingerprint, base=base)
        self.caches[key] = images
        return images

    # ----------------------------------------------------------------- running

    def evaluate(self, model: torch.nn.Module, condition: str, description: str
                 ) -> Predictions | None:
        return predict(model, self.source("val", condition), self.env,
                       batch_size=max(1, self.recipe.batch_size // self.env.world_size),
                       precision=self.recipe.precision, progress=self.config.progress,
                       description=description, position=self.position)

    def run_training(self, arch: str, seed: int, train: str,
                     results: list[ConditionResult]) -> None:
        files = RunFiles.of(self.out, arch, seed, train)
        evals = evaluations(train)
        todo = [e for e in evals if not files.predictions(e).exists()]
        label = f"{arch} seed{seed} train-{train}"
        recipe = self.recipe.for_arch(arch)
        if not todo:
            self._log(f"{label}: done already")
            return
        final: Predictions | None = None
        reuse_final = False  # the same on every rank: whether train already predicted it
        state = None
        if files.model.exists():
            model = load_trained(files, arch, len(self.data.classes), recipe, self.env)
        else:
            if self.env.is_main:
                files.folder.mkdir(parents=True, exist_ok=True)
                write_json(files.config, self.run_config(arch, seed, train))
            train_source = self.source("train", train)
            val_source = self.source("val", train)
            result = train_model(
                arch=arch, seed=seed, recipe=recipe, num_classes=len(self.data.classes),
                train_source=train_source, val_source=val_source, files=files, env=self.env,
                progress=self.config.progress, label=label, position=self.position,
                validate=lambda m: self.evaluate(m, train, f"{label} val-{train}"),
                stop_after_epochs=self.config.stop_after_epochs,
            )
            state = result.state
            if result.resumed_from:
                self._log(f"{label}: resumed after epoch {result.resumed_from}")
            if state.epoch < recipe.epochs:
                return  # stopped early on purpose
            model = result.model
            final, reuse_final = result.final_val, result.validated_last
            model = getattr(model, "module", model)
        eval_timings: dict[str, Any] = {}
        for ev in todo:
            predictions = final if (ev == train and reuse_final) else self.evaluate(
                model, ev, f"{label} eval-{ev}")
            if predictions is not None:
                table = predictions_table(self.data.val, predictions)
                write_predictions(files.predictions(ev), table)
                metrics = accuracy(table)
                eval_timings[ev] = {"seconds": predictions.seconds, "images": table.num_rows}
                results.append(ConditionResult(
                    arch, seed, train, ev, str(files.predictions(ev).relative_to(self.out)),
                    metrics["top1"], metrics["top5"], "done"))
                self._log(f"{label} eval-{ev}: top-1 {metrics['top1']:.4f}"
                          f" top-5 {metrics['top5']:.4f} ({table.num_rows} images)")
            barrier(self.env)
        if self.env.is_main:
            self.write_timings(files, state, eval_timings)

    def run_config(self, arch: str, seed: int, train: str) -> dict[str, Any]:
        return {
            "arch": arch, "seed": seed, "train_condition": train,
            "condition": self.conditions[train].describe(),
            "hyper": self.recipe.for_arch(arch).to_json(),
            "dataset": {"root": str(self.data.root.resolve()), "train": len(self.data.train),
                        "val": len(self.data.val), "classes": len(self.data.classes),
                        "limit": self.config.limit},
            "faces": self.faces_description,
            "environment": {"world_size": self.env.world_size, "device": str(self.env.device),
                            "threads": torch.get_num_threads(), "torch": torch.__version__,
                            "torchvision": torchvision.__version__,
                            "veil_version": __version__},
        }

    def write_timings(self, files: RunFiles, state: Any, evals: dict[str, Any]) -> None:
        old: dict[str, Any] = {}
        if files.timings.exists():
            old = json.loads(files.timings.read_text(encoding="utf-8"))
        timings: dict[str, Any] = epoch_summary(state) if state is not None else {
            k: old[k] for k in ("epochs", "train_seconds", "train_img_per_s") if k in old}
        for info in evals.values():
            info["img_per_s"] = info["images"] / info["seconds"] if info["seconds"] else 0.0
        timings["evaluations"] = {**old.get("evaluations", {}), **evals}
        timings["total_seconds"] = timings.get("train_seconds", 0.0) + sum(
            e["seconds"] for e in timings["evaluations"].values())
        write_json(files.timings, timings)

    def parallel_jobs(self, pending: int) -> int:
        """How many trainings run at once: on the CPU of one process, one per core up to
        the pending trainings (small convolutions scale poorly over threads, and a
        single-thread job loses nothing to another program's load); else one."""
        if self.config.parallel is not None:
            return max(1, min(self.config.parallel, pending))
        if self.env.distributed or self.env.device.type != "cpu":
            return 1
        return max(1, min(pending, default_workers() // (self.config.threads or 1)))

    def jobs(self) -> list[tuple[str, int, str]]:
        """(arch, seed, train condition) of every training, in the study's order."""
        return [(arch, seed, train) for arch in self.archs for seed in self.seeds
                for train in [ORIGINAL, *self.methods]]

    def _pending(self, job: tuple[str, int, str]) -> bool:
        arch, seed, train = job
        files = RunFiles.of(self.out, arch, seed, train)
        evals = evaluations(train)
        return not all(files.predictions(e).exists() for e in evals)

    def run(self) -> StudySummary:
        start = time.perf_counter()
        self.open_folder()
        results: list[ConditionResult] = []
        pending = [job for job in self.jobs() if self._pending(job)]
        parallel = self.parallel_jobs(len(pending))
        if parallel > 1:
            self._run_parallel(pending, parallel, results)
        else:
            for arch, seed, train in self.jobs():
                self.run_training(arch, seed, train, results)
                if self.env.is_main:
                    self.write_study("running", results)
        plan = condition_plan(self.archs, self.seeds, self.methods)
        done = all((self.out / item.path).exists() for item in plan)
        barrier(self.env)
        seconds = time.perf_counter() - start
        if self.env.is_main:
            self.write_study("done" if done else "running", results, seconds)
            if done and not self.config.keep_cache:
                shutil.rmtree(self.out / CACHE_DIR, ignore_errors=True)
        by_path = {r.path: r for r in results}
        final = [self._with_metrics(by_path.get(p.path, p)) for p in plan]
        return StudySummary(self.out, final, seconds, done)


    def _run_parallel(self, pending: list[tuple[str, int, str]], parallel: int,
                      results: list[ConditionResult]) -> None:
        """Train ``parallel`` models at once in worker processes, each with its share of
        the cores; the caches are built here first and shared through the page cache."""
        if self.recipe.loader == "cache":
            for _, _, train in pending:
                for split, condition in (("train", train), ("val", train), ("val", ORIGINAL)):
                    self.source(split, condition)
        threads = self.config.threads or max(1, default_workers() // parallel)
        worker_config = dataclasses.replace(
            self.config, methods=list(self.methods), archs=list(self.archs),
            seeds=list(self.seeds), log=None, parallel=1, threads=threads,
            method_options={m: dict(self.conditions[m].options) for m in self.methods},
        )
        self._log(f"training {len(pending)} model(s), {parallel} at a time,"
                  f" {threads} thread(s) each")
        with process_pool(parallel, die_with_parent=True) as pool:
            futures = [pool.submit(_train_job, worker_config, job, slot % parallel)
                       for slot, job in enumerate(pending)]
            try:
                for future in as_completed(futures):
                    done, messages = future.result()
                    for message in messages:
                        self._log(message)
                    results.extend(done)
                    self.write_study("running", results)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _train_job(config: StudyConfig, job: tuple[str, int, str], slot: int
               ) -> tuple[list[ConditionResult], list[str]]:
    """One training and its evaluations in a worker; its messages go back to the parent,
    which logs them the way its caller asked."""
    torch.set_num_threads(config.threads or 1)
    messages: list[str] = []
    env = DistEnv(device=torch.device("cpu"))
    study = Study(dataclasses.replace(config, log=messages.append), env, position=slot)
    study.reopen()
    results: list[ConditionResult] = []
    study.run_training(*job, results)
    return results, messages


def run_study(config: StudyConfig) -> StudySummary:
    """Run (or resume) a study; under torchrun, call it on every rank."""
    env = init_distributed(config.device)
    try:
        torch.set_num_threads(config.threads or rank_threads(env))
        return Study(config, env).run()
    finally:
        shutdown(env)


def plan_study(config: StudyConfig, measure: bool = True) -> dict[str, Any]:
    """What ``run_study(config)`` would do and cost here (see :mod:`veil.study.plan`);
    reads the dataset and the faces, measures a few steps, writes nothing."""
    from veil.study.plan import make_plan

    env = init_distributed(config.device)
    try:
        study = Study(config, env)
        return make_plan(study, measure=measure)
    finally:
        shutdown(env)
