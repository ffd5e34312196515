"""The default backend: this process, or a local process pool of ``workers`` processes.

Each pool process runs the task's ``setup()`` once (its initializer) and then takes
shards; at most two shards per worker are queued, so an interrupted run has little
work in flight.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

from veil.backends.base import Outcome, Pending, ShardResult, ShardTask, run_timed
from veil.cores import available_cores
from veil.processes import process_pool

_worker_task: ShardTask | None = None


def _init_worker(task: ShardTask) -> None:
    global _worker_task
    _worker_task = task
    task.setup()


def _run_in_worker(index: int, keys: list[str]) -> ShardResult:
    assert _worker_task is not None, "worker used before its initializer ran"
    return run_timed(_worker_task, index, keys)


class LocalBackend:
    """Shards in this process (one worker) or in a process pool (:mod:`veil.processes`)."""

    name = "local"

    def default_workers(self) -> int:
        return available_cores()

    def threads_per_worker(self, workers: int) -> int:
        return max(1, available_cores() // max(1, workers))

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}

    def results(self, task: ShardTask, pending: Pending, workers: int) -> Iterator[Outcome]:
        if workers <= 1 or len(pending) <= 1:
            yield from self._in_process(task, pending)
        else:
            yield from self._in_pool(task, pending, workers)

    @staticmethod
    def _in_process(task: ShardTask, pending: Pending) -> Iterator[Outcome]:
        task.setup()
        for index, keys in pending:
            try:
                yield index, keys, run_timed(task, index, keys)
            except Exception as exc:  # a bug in one shard must not lose the others
                yield index, keys, exc

    @staticmethod
    def _in_pool(task: ShardTask, pending: Pending, workers: int) -> Iterator[Outcome]:
        queue = list(pending)
        in_flight: dict[Future[ShardResult], tuple[int, list[str]]] = {}
        with process_pool(workers, initializer=_init_worker, initargs=(task,)) as pool:
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
