"""Run a stage's shards on a Ray cluster: long-lived actors, fed and recorded by the driver.

Each worker is a Ray actor that unpickles the stage's task and runs its ``setup()``
once (a detector session is loaded once per worker, not once per shard), then runs
shards. This process (the driver) submits the pending shards, at most two queued per
actor, and hands each result to the runner the moment it arrives, so the store is
written exactly as with the local backend: one transaction per shard, by one process.

Why actors driven from here rather than Ray Data ``map_batches``: the shard is already
veil's unit of work, status and resumption. Ray Data would re-batch rows on its own
terms and retry them inside its executor, out of sight of the store; with actors the
driver knows, for every shard, whether it is queued, running, done or lost.

Failures. A shard whose actor dies (the process is killed, its node goes away) is put
back in the queue and runs on another actor, up to ``max_retries`` times; a
replacement actor is started for each one lost. A shard that still cannot finish
comes back as a failed shard: the run is marked failed and the next run of the same
command does it. A shard is recorded once: the store ignores a second completion.
An exception raised by the task itself is a failed shard at once (a bug or a bad
input does not get better on another node). A task whose ``setup()`` fails stops the
run with that error: every actor would fail the same way.

Every node reads the dataset and writes the output through the same paths as the
driver: run on a shared file system (NFS, Lustre, a mounted bucket), with veil
installed in the same version on every node.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from veil.backends.base import Outcome, Pending, ShardResult, ShardTask, run_timed
from veil.errors import VeilError

DEFAULT_MAX_RETRIES = 2
QUEUED_PER_WORKER = 2
DEFAULT_START_TIMEOUT = 300.0


class WorkerLostError(VeilError):
    """A shard's Ray worker died more often than the retry budget allows."""


class ShardWorker:
    """The body of one Ray actor: the task, set up once, running shard after shard."""

    def __init__(self, task: ShardTask) -> None:
        self._task = task
        task.setup()

    def where(self) -> tuple[str, int]:
        """(node id, process id): the driver waits on this to know the actor is up."""
        import ray

        return ray.get_runtime_context().get_node_id(), os.getpid()

    def run(self, index: int, keys: Sequence[str]) -> ShardResult:
        return run_timed(self._task, index, keys)


@dataclass(eq=False)
class _Worker:
    handle: Any
    node: str = ""
    pid: int = 0
    queued: list[int] = field(default_factory=list)  # shard indices, in submission order
    alive: bool = True
    running: int | None = None  # when it died: the shard it was running (its oldest)


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is a declared dependency
        raise VeilError("the Ray backend needs Ray: pip install 'ray[default]'") from exc
    return ray


class RayBackend:
    """Shards on Ray actors; ``address`` names a running cluster (``host:port`` or
    ``auto``), ``None`` starts a private local Ray instance (or joins ``RAY_ADDRESS``).

    ``cpus_per_worker`` is each actor's CPU reservation and its detector's thread
    count; ``gpus_per_worker`` its GPU reservation (default: one GPU per actor when
    the cluster has GPUs and the task says ``wants_gpu``, else none).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        init_options: dict[str, Any] | None = None,
    ) -> None:
        if cpus_per_worker <= 0:
            raise ValueError("cpus_per_worker must be positive")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.address = address
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.max_retries = max_retries
        self.start_timeout = start_timeout
        self.init_options = dict(init_options or {})
        #: Shards finished per node id in the last run, and actors lost there.
        self.shards_per_node: Counter[str] = Counter()
        self.workers_lost = 0

    # -- cluster ----------------------------------------------------------------------------

    def connect(self) -> None:
        """Join the cluster (once per process; later calls reuse the connection)."""
        ray = _ray()
        if ray.is_initialized():
            return
        options: dict[str, Any] = {"logging_level": logging.WARNING, **self.init_options}
        if self.address is None and not os.environ.get("RAY_ADDRESS"):
            options.setdefault("include_dashboard", False)
        try:
            ray.init(address=self.address, **options)
        except Exception as exc:
            where = self.address or os.environ.get("RAY_ADDRESS") or "a new local instance"
            raise VeilError(f"cannot start or join the Ray cluster ({where}): {exc}") from exc

    def _resources(self) -> dict[str, float]:
        self.connect()
        return dict(_ray().cluster_resources())

    def default_workers(self) -> int:
        """One actor per ``cpus_per_worker`` CPUs of the whole cluster."""
        return max(1, int(self._resources().get("CPU", 1) // self.cpus_per_worker))

    def threads_per_worker(self, workers: int) -> int:
        return max(1, int(self.cpus_per_worker))

    def gpus_for(self, task: ShardTask) -> float:
        if self.gpus_per_worker is not None:
            return self.gpus_per_worker
        wants = bool(getattr(task, "wants_gpu", False))
        return 1.0 if wants and self._resources().get("GPU", 0) >= 1 else 0.0

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "address": self.address,
                "nodes": len(self.shards_per_node), "workers_lost": self.workers_lost}

    # -- running shards ---------------------------------------------------------------------

    def results(self, task: ShardTask, pending: Pending, workers: int) -> Iterator[Outcome]:
        ray = _ray()
        self.connect()
        self.shards_per_node = Counter()
        self.workers_lost = 0
        gpus = self.gpus_for(task)
        if gpus:
            workers = min(workers, max(1, int(self._resources().get("GPU", 0) // gpus)))
        workers = max(1, min(workers, len(pending)))
        actor = ray.remote(ShardWorker).options(
            num_cpus=self.cpus_per_worker, num_gpus=gpus, scheduling_strategy="SPREAD",
            max_restarts=0, max_task_retries=0,
        )
        run = _RayRun(self, ray, actor, ray.put(task), pending, workers)
        try:
            yield from run.outcomes()
        finally:
            run.stop()


class _RayRun:
    """The driver's state for one run: queue, actors, shards in flight, retries."""

    def __init__(self, backend: RayBackend, ray: Any, actor: Any, task_ref: Any,
                 pending: Pending, workers: int) -> None:
        self.backend = backend
        self.ray = ray
        self.actor = actor
        self.task_ref = task_ref
        self.queue: deque[tuple[int, list[str]]] = deque(pending)
        self.attempts: Counter[int] = Counter()
        self.starting: dict[Any, _Worker] = {}
        self.ready: list[_Worker] = []
        self.running: dict[Any, tuple[_Worker, int, list[str]]] = {}
        self.spare_starts = workers * (backend.max_retries + 1)
        self.lost = (
            ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
            ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError,
            ray.exceptions.LocalRayletDiedError,
        )
        for _ in range(workers):
            self._start_worker()

    def _start_worker(self) -> None:
        handle = self.actor.remote(self.task_ref)
        self.starting[handle.where.remote()] = _Worker(handle)

    def outcomes(self) -> Iterator[Outcome]:
        idle_since = time.monotonic()
        while self.queue or self.running:
            self._dispatch()
            if self.running:
                idle_since = time.monotonic()
            elif not self.starting:
                yield from self._give_up("no Ray worker is left to run it")
                return
            elif time.monotonic() - idle_since > self.backend.start_timeout:
                yield from self._give_up(
                    f"no Ray worker started within {self.backend.start_timeout:.0f} s (does "
                    f"the cluster have {self.backend.cpus_per_worker:g} CPU(s) free per worker?)")
                return
            done, _ = self.ray.wait([*self.running, *self.starting], num_returns=1, timeout=1.0)
            for ref in done:
                if ref in self.starting:
                    self._started(ref)
                else:
                    yield from self._finished(ref)

    def _dispatch(self) -> None:
        for worker in sorted(self.ready, key=lambda w: len(w.queued)):
            while self.queue and len(worker.queued) < QUEUED_PER_WORKER:
                index, keys = self.queue.popleft()
                ref = worker.handle.run.remote(index, keys)
                self.running[ref] = (worker, index, keys)
                worker.queued.append(index)

    def _started(self, ref: Any) -> None:
        worker = self.starting.pop(ref)
        try:
            worker.node, worker.pid = self.ray.get(ref)
        except self.lost as exc:
            if getattr(exc, "actor_init_failed", False):
                raise VeilError(f"a Ray worker could not set up the task: {_first_line(exc)}"
                                ) from exc
            self._lose(worker)
            return
        except self.ray.exceptions.RayError as exc:  # runtime env, deserialisation, ...
            raise VeilError(f"a Ray worker could not start: {_first_line(exc)}") from exc
        self.ready.append(worker)

    def _finished(self, ref: Any) -> Iterator[Outcome]:
        worker, index, keys = self.running.pop(ref)
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:  # the task itself raised
            worker.queued.remove(index)
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            yield index, keys, cause
        except self.lost as exc:
            self._lose(worker)
            worker.queued.remove(index)
            # An actor runs its calls in order: only its oldest shard was running. The
            # ones queued behind it go back to the queue without using up a retry.
            if index == worker.running:
                self.attempts[index] += 1
            if self.attempts[index] <= self.backend.max_retries:
                self.queue.appendleft((index, keys))
            else:
                yield index, keys, WorkerLostError(
                    f"its Ray worker died {self.attempts[index]} time(s); last: "
                    f"{_first_line(exc)}")
        else:
            worker.queued.remove(index)
            self.backend.shards_per_node[worker.node] += 1
            yield index, keys, result

    def _lose(self, worker: _Worker) -> None:
        """Forget a dead actor (once, however many shards it held) and start another."""
        if not worker.alive:
            return
        worker.alive = False
        worker.running = worker.queued[0] if worker.queued else None
        self.backend.workers_lost += 1
        if worker in self.ready:
            self.ready.remove(worker)
        self._kill(worker)
        if self.spare_starts > 0:
            self.spare_starts -= 1
            self._start_worker()

    def _give_up(self, why: str) -> Iterator[Outcome]:
        while self.queue:
            index, keys = self.queue.popleft()
            yield index, keys, WorkerLostError(f"shard not run: {why}")

    def _kill(self, worker: _Worker) -> None:
        with contextlib.suppress(Exception):  # already gone with its node: nothing to stop
            self.ray.kill(worker.handle, no_restart=True)

    def stop(self) -> None:
        for worker in [*self.ready, *self.starting.values()]:
            self._kill(worker)
        for worker, _, _ in self.running.values():
            self._kill(worker)
        self.ready.clear()
        self.starting.clear()
        self.running.clear()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
