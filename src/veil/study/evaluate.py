"""Evaluate a model on a split: per-example predictions, gathered to rank 0, as Parquet.

The predictions file is the study's ground truth for everything ``veil analyze``
computes (top-1/top-5, bootstrap CIs, McNemar, per-category AP), so it keeps every
image's full softmax and the logits it came from (the authors compute AP on the
logits, their ``output_scores``), in the split's key order, each image exactly once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from veil.files import atomic_path
from veil.study.data import Source, Split
from veil.study.ddp import DistEnv, gather_to_main, shard_range
from veil.study.layout import predictions_schema


@dataclass
class Predictions:
    """Softmax probabilities and logits of the images ``indices`` of a split (rows
    align)."""

    indices: np.ndarray  # int64
    probs: np.ndarray  # float32, (n, num_classes)
    seconds: float = 0.0
    logits: np.ndarray | None = None  # float32, (n, num_classes): the model's output

    def top1(self, labels: np.ndarray) -> float:
        if not len(self.indices):
            return float("nan")
        return float(np.mean(self.probs.argmax(1) == labels[self.indices]))


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast where the recipe asks for it (CPU or CUDA), else nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batches_of(indices: Sequence[int], size: int) -> list[list[int]]:
    return [list(indices[i:i + size]) for i in range(0, len(indices), size)]


@torch.no_grad()
def predict(model: torch.nn.Module, source: Source, env: DistEnv, *, batch_size: int,
            precision: str, progress: bool = False, description: str = "eval",
            position: int | None = None) -> Predictions | None:
    """Predict every image of ``source`` once, split over the ranks; rank 0 gets all
    of them in index order, the other ranks ``None``."""
    start = time.perf_counter()
    model.eval()
    mine = shard_range(len(source), env.rank, env.world_size)
    chunks = batches_of(list(mine), batch_size)
    out_index: list[np.ndarray] = []
    out_probs: list[np.ndarray] = []
    out_logits: list[np.ndarray] = []
    bar = tqdm(total=len(mine), desc=description, unit="img", leave=False, dynamic_ncols=True,
               disable=not (progress and env.is_main), position=position)
    with bar:
        for index, pixels, _ in source.batches(chunks, train=False, seed=0):
            x = source.to_model_input(pixels.to(env.device, non_blocking=True), train=False,
                                      generator=None)
            with autocast(env.device, precision):
                logits = model(x)
            logits = logits.float()
            out_probs.append(torch.softmax(logits, dim=1).cpu().numpy())
            out_logits.append(logits.cpu().numpy())
            out_index.append(index.numpy())
            bar.update(len(index))
    local = (np.concatenate(out_index) if out_index else np.zeros(0, np.int64),
             np.concatenate(out_probs) if out_probs else None,
             np.concatenate(out_logits) if out_logits else None)
    gathered = gather_to_main(env, local)
    if gathered is None:
        return None
    indices = np.concatenate([g[0] for g in gathered]).astype(np.int64)
    probs = np.concatenate([g[1] for g in gathered if g[1] is not None]).astype(np.float32)
    logits = np.concatenate([g[2] for g in gathered if g[2] is not None]).astype(np.float32)
    order = np.argsort(indices, kind="stable")
    return Predictions(indices[order], probs[order], time.perf_counter() - start,
                       logits[order])


def predictions_table(split: Split, predictions: Predictions) -> pa.Table:
    """The predictions table (:func:`veil.study.layout.predictions_schema`), with
    ``logits`` when the model's output is known."""
    probs = predictions.probs
    num_classes = probs.shape[1]
    k = min(5, num_classes)
    # Stable descending order: ties go to the lower class index, as torch.topk on CPU.
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k].astype(np.int32)
    labels = split.labels[predictions.indices].astype(np.int64)
    keys = [split.keys[i] for i in predictions.indices.tolist()]
    flat = pa.array(probs.reshape(-1), type=pa.float32())
    columns = {
        "key": pa.array(keys, type=pa.string()),
        "label": pa.array(labels, type=pa.int64()),
        "pred": pa.array(top[:, 0].astype(np.int64), type=pa.int64()),
        "top5": pa.array(list(top), type=pa.list_(pa.int32())),
        "probs": pa.FixedSizeListArray.from_arrays(flat, num_classes),
        "correct1": pa.array(top[:, 0] == labels, type=pa.bool_()),
        "correct5": pa.array((top == labels[:, None]).any(axis=1), type=pa.bool_()),
    }
    if predictions.logits is not None:
        logits = np.ascontiguousarray(predictions.logits, dtype=np.float32)
        offsets = pa.array(np.arange(0, logits.size + 1, num_classes, dtype=np.int32))
        columns["logits"] = pa.ListArray.from_arrays(
            offsets, pa.array(logits.reshape(-1), type=pa.float32()))
    schema = predictions_schema(num_classes, logits="logits" in columns)
    return pa.table([columns[name] for name in schema.names], schema=schema)


def write_predictions(path: Path, table: pa.Table) -> None:
    """Atomic: a predictions file that exists is complete (it marks a condition done)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def accuracy(table: pa.Table) -> dict[str, float]:
    n = table.num_rows
    return {
        "n": n,
        "top1": float(np.mean(table.column("correct1").to_numpy())) if n else float("nan"),
        "top5": float(np.mean(table.column("correct5").to_numpy())) if n else float("nan"),
    }
