"""The backend contract: a shard task, its result, and the thing that runs the one to get
the other.

A stage supplies a :class:`ShardTask`; the runner (:mod:`veil.runner`) owns the store
and the bookkeeping; a backend only decides *where* the task runs (this process, a local
process pool, a Ray cluster) and yields ``(index, keys, result-or-exception)`` as shards
finish, in any order. A shard a backend could not finish comes back as an exception, never silently
dropped: the runner records it as failed and the next run of the same command does it.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

if TYPE_CHECKING:  # plain records; importing veil.store for real would load SQLAlchemy
    from veil.boxes import Box
    from veil.store.records import ImageRecord, RunItem


@dataclass
class ShardResult:
    """What one shard produced; the runner writes it to the store in one transaction."""

    index: int
    items: list[RunItem] = field(default_factory=list)
    images: list[ImageRecord] = field(default_factory=list)
    detections: dict[str, list[Box]] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


class ShardTask(Protocol):
    """A stage's work, picklable: ``setup()`` once per worker, then a call per shard."""

    def setup(self) -> None: ...

    def __call__(self, index: int, keys: Sequence[str]) -> ShardResult: ...


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


_progress: tuple[int, int, Callable[[int], None]] | None = None
"""(process id, thread id, sink) of the runner listening for progress inside a shard, if
any (the process id: a forked child must not write to its parent's bar)."""


@contextmanager
def listening_for_progress(sink: Callable[[int], None]) -> Iterator[None]:
    """Let shards run in this thread tell ``sink`` how many of their images are done
    before the shard ends (:func:`report_progress`): a long shard (a 256-image shard of
    ``thorough`` detection takes about a minute) then moves the progress bar as it goes.
    Shards in other processes or threads report nothing; theirs move it when they end."""
    global _progress
    previous, _progress = _progress, (os.getpid(), threading.get_ident(), sink)
    try:
        yield
    finally:
        _progress = previous


def report_progress(images: int) -> None:
    """Tell the runner that ``images`` more images of the running shard are done; a no-op
    unless the shard runs in the thread of a runner that listens."""
    listener = _progress
    if listener is not None and listener[:2] == (os.getpid(), threading.get_ident()):
        listener[2](images)
