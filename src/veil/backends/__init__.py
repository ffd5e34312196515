"""Where shards run: this machine (``local``) or a Ray cluster (``ray``).

Stages take a backend by name or as an object; the runner asks it for results and
writes them to the store itself, so every backend keeps the same guarantees:
per-shard status, resumption, nothing recorded twice.
"""

from __future__ import annotations

from veil.backends.base import Backend, ShardResult, ShardTask, run_timed
from veil.backends.local import LocalBackend
from veil.cores import available_cores
from veil.errors import VeilError

BACKENDS = ("local", "ray")

__all__ = ["BACKENDS", "Backend", "LocalBackend", "ShardResult", "ShardTask", "available_cores",
           "get_backend", "run_timed"]


def get_backend(backend: str | Backend | None = None, *, address: str | None = None) -> Backend:
    """A backend object for a name (``None`` is ``local``); objects pass through."""
    if backend is None:
        backend = "local"
    if not isinstance(backend, str):
        return backend
    if backend == "local":
        if address is not None:
            raise VeilError("--address names a Ray cluster: use it with --backend ray")
        return LocalBackend()
    if backend == "ray":
        from veil.backends.ray import RayBackend

        return RayBackend(address)
    raise VeilError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
