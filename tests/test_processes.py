"""veil.processes: every process pool starts its workers without fork."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from veil.processes import START_METHOD, loader_context, pool_context, process_pool

SRC = Path(__file__).resolve().parents[1] / "src" / "veil"

_held = threading.Lock()


def _lock_is_free() -> bool:
    """In a worker: can it take the lock the parent's thread holds? Under fork it
    inherits the lock held, with no thread to release it."""
    return _held.acquire(timeout=2)


def test_workers_never_fork() -> None:
    assert START_METHOD in ("forkserver", "spawn")
    assert pool_context().get_start_method() == START_METHOD
    assert loader_context(0) is None  # a DataLoader refuses a context without workers
    assert loader_context(2).get_start_method() == START_METHOD  # type: ignore[union-attr]


def test_a_lock_held_by_another_thread_does_not_deadlock_a_worker() -> None:
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with _held:
            taken.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        taken.wait(5)
        with process_pool(1) as pool:
            assert pool.submit(_lock_is_free).result(timeout=120)
    finally:
        release.set()
        holder.join()


def test_every_pool_in_veil_uses_the_policy() -> None:
    """No pool is made outside veil.processes: no start method chosen elsewhere."""
    made_here = re.compile(r"ProcessPoolExecutor\(|get_context\(|set_start_method\(|"
                           r"multiprocessing_context=(?!loader_context)|mp\.Pool\(|"
                           r"multiprocessing\.Pool\(")
    offenders = [
        f"{path.relative_to(SRC)}:{number}"
        for path in SRC.rglob("*.py") if path.name != "processes.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if made_here.search(line)
    ]
    assert offenders == []
