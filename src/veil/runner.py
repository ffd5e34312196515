"""Run a stage as shards: the unit of work, of progress and of resumption.

A stage supplies a *shard task*: a picklable object whose ``setup()`` loads what a
worker needs once (a detector session, say) and whose ``__call__(index, keys)`` turns
a list of image keys into a :class:`ShardResult`. The runner plans the shards in the
store, hands them to an in-process loop or a local process pool, and writes each
result in one transaction as it arrives, so a killed run resumes at the first shard
that was not recorded and never does a shard twice. Only the parent process talks to
the store.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from tqdm import tqdm

from veil.boxes import Box
from veil.store import FaceStore, ImageRecord, RunItem

DEFAULT_SHARD_SIZE = 256


@dataclass
class ShardResult:
    index: int
    items: list[RunItem] = field(default_factory=list)
    images: list[ImageRecord] = field(default_factory=list)
    detections: dict[str, list[Box]] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


class ShardTask(Protocol):
    def setup(self) -> None: ...

    def __call__(self, index: int, keys: Sequence[str]) -> ShardResult: ...


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

    @property
    def ok(self) -> bool:
        return not self.errors and not self.failed_shards and not self.interrupted

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def default_workers() -> int:
    """The cores this process may use (respects affinity masks and cgroup pinning)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def make_shards(keys: Sequence[str], shard_size: int = DEFAULT_SHARD_SIZE) -> list[list[str]]:
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    return [list(keys[i : i + shard_size]) for i in range(0, len(keys), shard_size)]


def prepare_run(
    store: FaceStore, kind: str, config: dict[str, Any], keys: Sequence[str], *,
    shard_size: int = DEFAULT_SHARD_SIZE, resume: bool = True,
) -> tuple[int, int]:
    """Find the unfinished run with this exact config, or plan a new one.

    Returns ``(run_id, shards_already_done)``.
    """
    if resume:
        run_id = store.find_resumable_run(kind, config)
        if run_id is not None:
            store.resume_run(run_id)
            total = len(make_shards(keys, shard_size))
            return run_id, total - len(store.pending_shards(run_id))
    return store.start_run(kind, config, make_shards(keys, shard_size)), 0


_worker_task: ShardTask | None = None


def _init_worker(task: ShardTask) -> None:
    global _worker_task
    _worker_task = task
    task.setup()


def _run_in_worker(index: int, keys: list[str]) -> ShardResult:
    assert _worker_task is not None, "worker used before its initializer ran"
    return _timed(_worker_task, index, keys)


def _timed(task: ShardTask, index: int, keys: Sequence[str]) -> ShardResult:
    start = time.perf_counter()
    result = task(index, keys)
    result.seconds = time.perf_counter() - start
    return result


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def execute(
    store: FaceStore,
    run_id: int,
    task: ShardTask,
    *,
    workers: int = 1,
    progress: bool = True,
    description: str = "images",
    resumed_shards: int = 0,
    postprocess: Callable[[ShardResult], None] | None = None,
) -> RunSummary:
    """Do every pending shard of ``run_id`` and record each result as it arrives.

    ``postprocess`` runs in this (the parent) process on each result before it is
    stored: the place for facts only the parent holds, such as the dataset's labels.
    """
    pending = store.pending_shards(run_id)
    summary = RunSummary(run_id=run_id, resumed_shards=resumed_shards)
    total = sum(len(keys) for _, keys in pending)
    bar = tqdm(total=total, desc=description, unit="img", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for index, keys, outcome in _results(task, pending, workers):
            if isinstance(outcome, BaseException):
                message = _describe(outcome)
                store.fail_shard(run_id, index, message)
                summary.failed_shards.append((index, message))
            else:
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
            bar.update(len(keys))
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - start
        status = "interrupted" if summary.interrupted else (
            "failed" if summary.failed_shards else "done"
        )
        store.finish_run(run_id, status, timings={
            "seconds": round(summary.seconds, 3), "images": summary.images,
            "images_per_second": round(summary.images_per_second, 3), "workers": workers,
        })
    return summary


def _results(
    task: ShardTask, pending: list[tuple[int, list[str]]], workers: int,
) -> Iterator[tuple[int, list[str], ShardResult | BaseException]]:
    if workers <= 1 or len(pending) <= 1:
        task.setup()
        for index, keys in pending:
            try:
                yield index, keys, _timed(task, index, keys)
            except Exception as exc:  # a bug in one shard must not lose the others
                yield index, keys, exc
        return
    context = multiprocessing.get_context("forkserver")
    queue = list(pending)
    in_flight: dict[Future[ShardResult], tuple[int, list[str]]] = {}
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(task,)
    ) as pool:
        try:
            while queue or in_flight:
                while queue and len(in_flight) < 2 * workers:
                    index, keys = queue.pop(0)
                    in_flight[pool.submit(_run_in_worker, index, keys)] = (index, keys)
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: in_flight[f][0]):
                    index, keys = in_flight.pop(future)
                    exc = future.exception()
                    yield index, keys, exc if exc is not None else future.result()
        except BaseException:
            for future in in_flight:
                future.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
