"""The detect stage: run a face detector over a dataset into the face store."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from veil.backends import Backend, ShardResult, get_backend
from veil.backends.base import report_progress
from veil.datasets import Dataset, FileReader, ImageReader
from veil.detection import create_detector
from veil.errors import ImageError
from veil.images import load_image
from veil.runner import DEFAULT_SHARD_SIZE, RunSummary, execute, make_shards, prepare_run
from veil.store import FaceStore, ImageRecord, RunItem

#: Images decoded ahead and handed to the detector in one call: up to this many batches'
#: worth, so images of equal size (which share network runs) can find each other in a
#: dataset of mixed sizes; a batch of mixed sizes runs one image at a time.
WINDOW_BATCHES = 8
#: A shard's first window is this many batches: the network waits for it alone (nothing
#: runs beside its decoding), so it is kept short and later windows fill up while the
#: network works.
FIRST_WINDOW_BATCHES = 1
#: ... and at most this many decoded pixels (memory stays bounded on huge images).
WINDOW_PIXELS = 48_000_000
#: Unless told how many workers, a local run starts a pool only with this many shards
#: per worker; fewer run in this process on every core.
SHARDS_PER_WORKER = 4


@dataclass
class DetectTask:
    """Decode a shard batch by batch, detect, and report boxes and image facts.

    Images are read through ``reader`` (default: files under ``root``), so the same
    task reads folders, WebDataset shards and Hugging Face shards, in a local worker or
    on a Ray node (a run's shards never straddle two shard files:
    ``Dataset.work_shards``).
    """

    wants_gpu: ClassVar[bool] = True  # a Ray cluster with GPUs gives each worker one

    root: str
    detector: str = "centerface"
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 8
    threads: int | None = None
    max_pixels: int | None = None
    reader: ImageReader | None = None

    def setup(self) -> None:
        if self.reader is None:
            self.reader = FileReader(Path(self.root))
        self._detector = create_detector(
            self.detector, batch_size=self.batch_size, threads=self.threads, **self.options
        )

    def __call__(self, index: int, keys: Sequence[str]) -> ShardResult:
        """Detect window by window while a thread reads and decodes the next window
        (decoding releases the GIL and fills the gaps the network leaves in the cores)."""
        result = ShardResult(index)
        pending = iter(keys)
        with ThreadPoolExecutor(1, thread_name_prefix="veil-decode") as decoder:
            upcoming = decoder.submit(self._decode_window, pending, FIRST_WINDOW_BATCHES)
            while True:
                read, ready = upcoming.result()
                if not read.images:
                    break  # no keys left
                upcoming = decoder.submit(self._decode_window, pending, WINDOW_BATCHES)
                result.images.extend(read.images)
                result.items.extend(read.items)
                result.counts.update(read.counts)
                self._detect_window(ready, result)
                report_progress(len(read.items) + len(ready))  # errors and detected
        return result

    def _decode_window(self, keys: Iterator[str], batches: int
                       ) -> tuple[ShardResult, list[tuple[str, np.ndarray]]]:
        """The next window of ``keys`` (up to ``batches`` batches), decoded: records
        (errors included) and pixels."""
        read = ShardResult(-1)
        ready: list[tuple[str, np.ndarray]] = []
        pixels = 0
        for key in keys:
            pixels += self._read(key, read, ready)
            if len(ready) >= self.batch_size * batches or pixels >= WINDOW_PIXELS:
                break
        return read, ready

    def _read(self, key: str, result: ShardResult, ready: list[tuple[str, np.ndarray]]) -> int:
        """Decode ``key`` into ``ready`` (or record why not); the pixels it added."""
        try:
            data = self.reader.read(key)  # type: ignore[union-attr]  # set in setup
        except OSError as exc:
            self._error(result, key, f"cannot read file: {exc.strerror or exc}")
            return 0
        try:
            loaded = load_image(data, max_pixels=self.max_pixels)
        except ImageError as exc:
            self._error(result, key, str(exc), sha256=hashlib.sha256(data).hexdigest())
            return 0
        result.images.append(ImageRecord(
            key, loaded.width, loaded.height, hashlib.sha256(data).hexdigest(),
        ))
        ready.append((key, np.asarray(loaded.image)))
        return loaded.width * loaded.height

    def _detect_window(self, ready: list[tuple[str, np.ndarray]], result: ShardResult) -> None:
        """Detect in a window of decoded images; the detector batches equal sizes."""
        if not ready:
            return
        found = self._detector.detect([pixels for _, pixels in ready])
        for (key, _), boxes in zip(ready, found, strict=True):
            result.detections[key] = boxes
            result.items.append(RunItem(key, info={"faces": len(boxes)}))
            result.counts["images"] += 1
            result.counts["faces"] += len(boxes)
            result.counts["images with faces"] += bool(boxes)

    @staticmethod
    def _error(result: ShardResult, key: str, message: str, sha256: str | None = None) -> None:
        result.images.append(ImageRecord(key, sha256=sha256, status="error", error=message))
        result.items.append(RunItem(key, status="error", error=message))
        result.counts["errors"] += 1


def detect(
    dataset: Dataset,
    store: FaceStore,
    *,
    detector: str = "centerface",
    options: dict[str, Any] | None = None,
    workers: int | None = None,
    batch_size: int = 8,
    shard_size: int = DEFAULT_SHARD_SIZE,
    max_pixels: int | None = None,
    resume: bool = True,
    progress: bool = True,
    backend: str | Backend | None = None,
) -> RunSummary:
    """Detect faces in every image of ``dataset`` and record them as one detection run.

    Rerunning with the same dataset and settings resumes an interrupted run, on any
    backend; the images' labels from the dataset are recorded in the store's catalogue.
    """
    runner = get_backend(backend)
    chosen_workers = workers
    workers = workers or runner.default_workers()
    options = dict(options or {})
    config = {
        "dataset": str(dataset.root.resolve()), "layout": dataset.layout,
        "images": len(dataset), "detector": detector, "options": options,
        "max_pixels": max_pixels,
    }
    keys = dataset.keys()
    shards = dataset.work_shards(shard_size) or make_shards(keys, shard_size)
    run_id, done = prepare_run(store, "detect", config, keys, shard_size=shard_size,
                               resume=resume, shards=shards)
    # No more workers than shards left: one shard runs in this process with every core's
    # threads, not with the share of one of `workers` pool processes (half the speed on 2).
    pending = len(shards) - done
    if chosen_workers is None and runner.name == "local":
        # A local pool pays off only with a few shards per worker: with fewer, one worker
        # finishes early and idles while the other's single thread finishes its shard.
        workers = min(workers, pending // SHARDS_PER_WORKER)
    workers = max(1, min(workers, pending))
    task = DetectTask(
        str(dataset.root.resolve()), detector, options, batch_size=batch_size,
        threads=runner.threads_per_worker(workers), max_pixels=max_pixels,
        reader=dataset.reader(),
    )
    labels = {e.key: e.label for e in dataset}

    def add_labels(result: ShardResult) -> None:
        result.images = [
            ImageRecord(r.key, r.width, r.height, r.sha256, labels.get(r.key), r.status, r.error)
            for r in result.images
        ]

    summary = execute(
        store, run_id, task, workers=workers, progress=progress, description="detect",
        resumed_shards=done, postprocess=add_labels, backend=runner,
    )
    summary.counts = Counter({k: summary.counts[k] for k in
                              ("images", "images with faces", "faces", "errors")})
    return summary
