"""Distributed training under torchrun: who am I, which images are mine, gather to rank 0.

``torchrun --nproc-per-node N -m veil study ...`` (or ``--nnodes``/``--rdzv-endpoint``
for several machines) sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them
veil runs as one process. The backend is NCCL on GPUs and gloo on CPUs. Training
splits each epoch with ``DistributedSampler``; evaluation gives every rank a
contiguous slice of the val set, so each image is predicted exactly once (no padding
duplicates), and rank 0 gathers and writes the predictions.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

# Rank 0 may decode a whole dataset into the cache while the others wait.
BARRIER_TIMEOUT = datetime.timedelta(hours=3)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            from veil.errors import VeilError

            raise VeilError("--device cuda was asked for, but torch sees no CUDA GPU")
        if requested == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(requested)


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the torchrun process group if there is one; pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    chosen = _pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=BARRIER_TIMEOUT,
                                device_id=chosen if chosen.type == "cuda" else None)
    return DistEnv(rank, world_size, local_rank, local_world, chosen)


def shutdown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def shard_range(n: int, rank: int, world_size: int) -> range:
    """This rank's contiguous slice of ``n`` items; the slices cover each item once."""
    return range(n * rank // world_size, n * (rank + 1) // world_size)


def all_reduce_sum(env: DistEnv, values: Sequence[float]) -> list[float]:
    """Sum numbers (loss, counts) over ranks; float64 so counts stay exact."""
    if not env.distributed:
        return [float(v) for v in values]
    tensor = torch.tensor(list(values), dtype=torch.float64,
                          device=env.device if env.device.type == "cuda" else "cpu")
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def gather_to_main(env: DistEnv, obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0; ``None`` elsewhere."""
    if not env.distributed:
        return [obj]
    out: list[Any] | None = [None] * env.world_size if env.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(env: DistEnv, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a decision only rank 0 may make)."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank_threads(env: DistEnv) -> int:
    """CPU threads per rank: the cores this process may use, shared by the local ranks."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, env.local_world_size))
