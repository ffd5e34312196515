"""How many CPU cores this process may use: the default number of workers everywhere
(shard pools, a study's data loaders, transfer's feature extraction), in a module that
imports nothing of veil's, so asking does not load the face store or a backend."""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may use (respects affinity masks and cgroup pinning)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
