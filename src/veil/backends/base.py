"""What a backend is: the thing that runs a stage's shards and hands back each result.

The runner owns the store and the bookkeeping; a backend only decides *where* a
:class:`~veil.runner.ShardTask` runs (this process, a local process pool, a Ray
cluster) and yields ``(index, keys, result-or-exception)`` as shards finish, in any
order. A shard a backend could not finish comes back as an exception, never silently
dropped: the runner records it as failed and the next run of the same command does it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

if TYPE_CHECKING:
    from veil.runner import ShardResult, ShardTask

Pending: TypeAlias = "list[tuple[int, list[str]]]"
Outcome: TypeAlias = "tuple[int, list[str], ShardResult | BaseException]"


class Backend(Protocol):
    name: str

    def default_workers(self) -> int:
        """How many workers to run when the user does not say."""
        ...

    def threads_per_worker(self, workers: int) -> int:
        """The threads one worker may use (a detector's intra-op threads)."""
        ...

    def results(self, task: ShardTask, pending: Pending, workers: int) -> Iterator[Outcome]:
        """Run ``task`` on every pending shard; yield each outcome as it arrives."""
        ...

    def describe(self) -> dict[str, Any]:
        """What to record about the backend in the run's timings."""
        ...


def run_timed(task: ShardTask, index: int, keys: Sequence[str]) -> ShardResult:
    """Run one shard and stamp how long it took (the runner stores the time)."""
    start = time.perf_counter()
    result = task(index, keys)
    result.seconds = time.perf_counter() - start
    return result
