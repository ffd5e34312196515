"""veil's one process-pool policy: workers start by forkserver (spawn where there is
none), never by fork.

Why not fork: it copies the parent at an arbitrary moment, including every lock its other
threads hold at that moment: torch's intra-op and OpenMP pools, BLAS, CUDA, tqdm's monitor,
a Ray client, logging. A child that inherits a lock whose owner thread does not exist in
it waits forever. veil's pools run in processes where such threads may be running (a
study's training job, a transfer run, a stage called from a notebook), so fork is a
deadlock waiting for a busy machine. CPython warns on fork from a multi-threaded process
since 3.12 and makes forkserver the POSIX default in 3.14 for this reason.

forkserver forks each worker from a small server process started once, single-threaded,
from a clean interpreter: the workers are cheap to start and inherit no threads. spawn
(Windows, and where forkserver is missing) starts each worker from scratch. Either way a
worker imports what it runs (unpickling the task imports its module) instead of inheriting
it; what the parent has loaded of torch and veil the forkserver imports once up front
(``preload``), so each worker (a DataLoader's, every epoch) does not pay those imports.

Workers that must not outlive a killed parent (they would go on writing its output) are
spawned instead (``process_pool(..., die_with_parent=True)``): a forkserver worker's parent
is the server, which stays up while any of its workers does, so only a spawned worker can
be tied to the process that started it (on Linux, by ``PR_SET_PDEATHSIG``).

Use :func:`process_pool` for a ``ProcessPoolExecutor`` and :func:`loader_context` for a
torch ``DataLoader``'s workers. This module imports nothing of veil's.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import BaseContext
from typing import Any

__all__ = ["START_METHOD", "loader_context", "pool_context", "process_pool"]

START_METHOD = ("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                else "spawn")
"""How every veil worker process starts."""

_PRELOAD_WHEN_LOADED = ("torch", "torchvision")
"""Heavy modules the forkserver imports once when the parent has them loaded already."""


def _preload() -> list[str]:
    """What the forkserver imports before it forks any worker: the torch stack and veil's
    modules, where the parent has loaded them. Workers then start with them, as a forked
    worker would, instead of importing them per worker (a DataLoader's, every epoch)."""
    loaded = [name for name in _PRELOAD_WHEN_LOADED if name in sys.modules]
    loaded += sorted(name for name in sys.modules
                     if name.startswith("veil.") and name != "veil.__main__")
    return ["__main__", *loaded]


def pool_context() -> BaseContext:
    """The multiprocessing context every veil pool uses (see the module's docstring)."""
    context = multiprocessing.get_context(START_METHOD)
    if START_METHOD == "forkserver":
        # Takes effect only if the server is not running yet; harmless otherwise.
        context.set_forkserver_preload(_preload())  # type: ignore[attr-defined]
    return context


def process_pool(workers: int, *, initializer: Callable[..., object] | None = None,
                 initargs: Sequence[Any] = (), die_with_parent: bool = False
                 ) -> ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` of ``workers`` processes started by :func:`pool_context`,
    or spawned and killed with this process if ``die_with_parent`` (Linux)."""
    if not die_with_parent:
        return ProcessPoolExecutor(max_workers=workers, mp_context=pool_context(),
                                   initializer=initializer, initargs=tuple(initargs))
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_die_with_parent, initargs=(initializer, *initargs))


def _die_with_parent(initializer: Callable[..., object] | None, *initargs: Any) -> None:
    """A worker's initializer: SIGKILL this process when its parent dies, then the
    caller's initializer."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before the line above ran
            os._exit(1)
    if initializer is not None:
        initializer(*initargs)


def loader_context(workers: int) -> BaseContext | None:
    """``multiprocessing_context`` for a torch ``DataLoader`` with ``workers`` workers
    (None with none: the DataLoader refuses a context for in-process loading)."""
    return pool_context() if workers > 0 else None
