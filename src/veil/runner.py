"""Run a stage as shards: the unit of work, of progress and of resumption.

A stage supplies a *shard task*: a picklable object whose ``setup()`` loads what a
worker needs once (a detector session, say) and whose ``__call__(index, keys)`` turns
a list of image keys into a :class:`ShardResult`. The runner plans the shards in the
store, hands them to a backend (``veil.backends``: this process, a local process pool,
or a Ray cluster) and writes each result in one transaction as it arrives, so a killed
run resumes at the first shard that was not recorded and never does a shard twice.
Only the parent process talks to the store. A shard that runs in this process may also
move the progress bar before it ends (:func:`veil.backends.base.report_progress`:
detection does, window by window); a shard elsewhere moves it when it ends.

A task may say ``wants_gpu = True``: the Ray backend then gives each of its workers a
GPU when the cluster has some.
"""

from __future__ import annotations

import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tqdm import tqdm

from veil.backends import Backend, get_backend
from veil.backends.base import ShardResult, ShardTask, listening_for_progress
from veil.store import ImageRecord, RunItem

DEFAULT_SHARD_SIZE = 256


class RunLog(Protocol):
    """Where a run is recorded: a face store (:class:`veil.store.FaceStore`, with the
    detections) or a run ledger (:class:`veil.store.RunLedger`, run items only)."""

    def start_run(self, kind: str, config: Any, shards: Sequence[Sequence[str]] = ...) -> int:
        ...

    def find_resumable_run(self, kind: str, config: Any) -> int | None: ...

    def resume_run(self, run_id: int) -> None: ...

    def pending_shards(self, run_id: int) -> list[tuple[int, list[str]]]: ...

    def complete_shard(self, run_id: int, index: int, *, items: Sequence[RunItem] = ...,
                       images: Sequence[ImageRecord] = ..., detections: Any = ...,
                       seconds: float = ...) -> None: ...

    def fail_shard(self, run_id: int, index: int, error: str) -> None: ...

    def finish_run(self, run_id: int, status: str = ..., timings: Any = ...) -> None: ...


@dataclass
class RunSummary:
    """What a stage did: counts, errors and speed, as printed at the end of a run."""

    run_id: int
    images: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[tuple[str, str]] = field(default_factory=list)
    failed_shards: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_shards: int = 0
    interrupted: bool = False
    #: Seconds before the first shard started working (a worker's set-up: loading a
    #: model, spawning a pool): the first result's arrival less its own work. None
    #: until a shard finishes.
    startup_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return not self.errors and not self.failed_shards and not self.interrupted

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def images_per_second_after_startup(self) -> float:
        """Throughput once workers were set up: what a larger run converges to."""
        working = self.seconds - (self.startup_seconds or 0.0)
        return self.images / working if working > 0 else 0.0


def make_shards(keys: Sequence[str], shard_size: int = DEFAULT_SHARD_SIZE) -> list[list[str]]:
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    return [list(keys[i : i + shard_size]) for i in range(0, len(keys), shard_size)]


def prepare_run(
    store: RunLog, kind: str, config: dict[str, Any], keys: Sequence[str], *,
    shard_size: int = DEFAULT_SHARD_SIZE, resume: bool = True,
    shards: Sequence[Sequence[str]] | None = None,
) -> tuple[int, int]:
    """Find the unfinished run with this exact config, or plan a new one.

    ``shards`` plans the given groups of keys instead of ``keys`` cut into
    ``shard_size`` pieces (a stage whose output is one file per input file, such as
    a tar shard, makes each input file a shard). Returns ``(run_id, shards_already_done)``.
    """
    planned = [list(s) for s in shards] if shards is not None else make_shards(keys, shard_size)
    if resume:
        run_id = store.find_resumable_run(kind, config)
        if run_id is not None:
            store.resume_run(run_id)
            return run_id, len(planned) - len(store.pending_shards(run_id))
    return store.start_run(kind, config, planned), 0


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def execute(
    store: RunLog,
    run_id: int,
    task: ShardTask,
    *,
    workers: int = 1,
    progress: bool = True,
    description: str = "images",
    resumed_shards: int = 0,
    postprocess: Callable[[ShardResult], None] | None = None,
    backend: str | Backend | None = None,
) -> RunSummary:
    """Do every pending shard of ``run_id`` and record each result as it arrives.

    ``backend`` says where the shards run (default: this process for one worker, a
    local process pool for more). ``postprocess`` runs in this (the parent) process on
    each result before it is stored: the place for facts only the parent holds, such
    as the dataset's labels.
    """
    runner = get_backend(backend)
    pending = store.pending_shards(run_id)
    summary = RunSummary(run_id=run_id, resumed_shards=resumed_shards)
    total = sum(len(keys) for _, keys in pending)
    bar = tqdm(total=total, desc=description, unit="img", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    crashed = False
    reported = 0  # images the shard running in this process reported before it ended

    def advance(images: int) -> None:
        nonlocal reported
        reported += images
        bar.update(images)

    try:
        with listening_for_progress(advance):
            for index, keys, outcome in runner.results(task, pending, workers):
                if isinstance(outcome, BaseException):
                    message = _describe(outcome)
                    store.fail_shard(run_id, index, message)
                    summary.failed_shards.append((index, message))
                else:
                    if summary.startup_seconds is None:
                        arrived = time.perf_counter() - start
                        summary.startup_seconds = max(0.0, arrived - outcome.seconds)
                    if postprocess is not None:
                        postprocess(outcome)
                    store.complete_shard(
                        run_id, index, items=outcome.items, images=outcome.images,
                        detections=outcome.detections, seconds=outcome.seconds,
                    )
                    summary.counts.update(outcome.counts)
                    summary.errors.extend(
                        (item.key, item.error or "error") for item in outcome.items
                        if item.status == "error"
                    )
                    summary.images += len(keys)
                bar.update(max(0, len(keys) - reported))
                reported = 0
    except KeyboardInterrupt:
        summary.interrupted = True
    except BaseException:
        crashed = True  # recorded as failed, so the same command resumes it
        raise
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - start
        status = "interrupted" if summary.interrupted else (
            "failed" if summary.failed_shards or crashed else "done"
        )
        store.finish_run(run_id, status, timings={
            "seconds": round(summary.seconds, 3), "images": summary.images,
            "images_per_second": round(summary.images_per_second, 3), "workers": workers,
            "startup_seconds": (None if summary.startup_seconds is None
                                else round(summary.startup_seconds, 3)),
            **runner.describe(),
        })
    return summary
