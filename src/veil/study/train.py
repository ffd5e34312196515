"""Train one model of the study: torchvision architecture by name, the recipe's
optimiser and schedule, a checkpoint every epoch, and exact resumption.

Determinism: every epoch seeds its own RNGs from (seed, epoch, rank), so an epoch
computes the same thing whether the run went straight through or was resumed from
the previous epoch's checkpoint (model, optimizer, scheduler, history and timings).
A deterministic CPU run therefore resumes to bit-identical weights.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torchvision
from torch import nn
from tqdm import tqdm

from veil.errors import VeilError
from veil.files import atomic_path
from veil.study.data import Source
from veil.study.ddp import DistEnv, all_reduce_sum
from veil.study.evaluate import Predictions, autocast
from veil.study.layout import HISTORY_FIELDS, RunFiles
from veil.study.profiles import Recipe

# The smallest square input (px) on which each of the paper's architectures runs a
# training step (batch 2, measured with torchvision 0.29 by bisection); below it a
# feature map shrinks to nothing inside the network. The others run on any size.
MIN_IMG_SIZE: dict[str, int] = {
    "alexnet": 63, "squeezenet1_0": 21, "vgg11": 32, "vgg13": 32, "vgg16": 32, "vgg19": 32,
    "densenet121": 29, "densenet201": 29,
}

def list_archs() -> list[str]:
    """torchvision's image classification architectures, by name."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_arch(arch: str, img_size: int) -> None:
    known = list_archs()
    if arch not in known:
        raise VeilError(f"unknown architecture {arch!r}; torchvision classification models:"
                        f" {', '.join(known)}")
    minimum = MIN_IMG_SIZE.get(arch, 1)
    if img_size < minimum:
        raise VeilError(f"{arch} needs inputs of at least {minimum} px (its feature maps"
                        f" vanish below that); --img-size is {img_size}")


def build_model(arch: str, num_classes: int, img_size: int) -> nn.Module:
    """A freshly initialised torchvision model (never pretrained, never re-implemented)."""
    check_arch(arch, img_size)
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers, with no collisions between nearby tuples."""
    digest = hashlib.sha256(json.dumps(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- schedule


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=recipe.effective_lr,
                           momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                           nesterov=recipe.nesterov, fused=True)


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int
                   ) -> torch.optim.lr_scheduler.LRScheduler:
    """``step``: x gamma every ``step_epochs`` (stepped per epoch, the paper's);
    ``onecycle``: warm up to the peak and anneal to ~0 (stepped per iteration)."""
    if recipe.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=recipe.effective_lr, total_steps=recipe.epochs * steps_per_epoch,
            pct_start=recipe.warmup_fraction, anneal_strategy="cos",
            base_momentum=0.85, max_momentum=recipe.momentum if recipe.momentum > 0.85 else 0.95,
        )
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=recipe.step_epochs,
                                           gamma=recipe.gamma)


def train_batches(n: int, batch_size: int, env: DistEnv, seed: int, epoch: int
                  ) -> list[list[int]]:
    """This rank's batches for one epoch: DistributedSampler's shuffle, cut into
    batches; an incomplete last batch is dropped when a full one exists (and a batch
    of one always: BatchNorm cannot train on it)."""
    sampler: torch.utils.data.DistributedSampler[int] = torch.utils.data.DistributedSampler(
        cast("torch.utils.data.Dataset[int]", range(n)), num_replicas=env.world_size,
        rank=env.rank, shuffle=True, seed=seed, drop_last=False,
    )
    sampler.set_epoch(epoch)
    order = list(sampler)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return [b for b in batches if len(b) > 1]


def per_rank_batch(recipe: Recipe, env: DistEnv) -> int:
    if recipe.batch_size % env.world_size:
        raise VeilError(f"batch size {recipe.batch_size} (the global batch) must be a multiple"
                        f" of the number of processes ({env.world_size})")
    return recipe.batch_size // env.world_size


# --------------------------------------------------------------------------- files




def torch_save(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in HISTORY_FIELDS})
    with atomic_path(path) as tmp:
        tmp.write_text(text.getvalue(), encoding="utf-8")


# --------------------------------------------------------------------------- training


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_timings: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrainResult:
    model: nn.Module
    state: TrainState
    final_val: Predictions | None = None  # rank 0's; None on the other ranks
    validated_last: bool = False  # the last epoch's validation ran (on every rank)
    resumed_from: int = 0


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)  # DDP
    return getattr(inner, "_orig_mod", inner)  # torch.compile


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate()}


def train_model(
    *, arch: str, seed: int, recipe: Recipe, num_classes: int, train_source: Source,
    val_source: Source | None, files: RunFiles, env: DistEnv, progress: bool = False,
    label: str = "", validate: Callable[[nn.Module], Predictions | None] | None = None,
    stop_after_epochs: int | None = None, position: int | None = None,
) -> TrainResult:
    """Train (or resume training) one model; rank 0 writes checkpoint, history, timings.

    ``validate(model)`` evaluates on the training condition's val split (every
    ``recipe.val_every`` epochs and after the last); its predictions of the last epoch
    are returned so the caller need not predict them again. ``stop_after_epochs``
    returns early (for tests of resumption).
    """
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
    seed_everything(mix_seed(seed, -1))
    model = build_model(arch, num_classes, recipe.img_size)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.to(env.device)
    optimizer = make_optimizer(model, recipe)
    batch = per_rank_batch(recipe, env)
    steps = len(train_batches(len(train_source), batch, env, seed, 0))
    if steps == 0:
        raise VeilError(f"the training split has {len(train_source)} image(s): too few for a"
                        f" batch of {batch}")
    scheduler = make_scheduler(optimizer, recipe, steps)
    state = TrainState()
    if files.checkpoint.exists():
        saved = torch.load(files.checkpoint, map_location=env.device, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = TrainState(saved["epoch"], saved["history"], saved["timings"])
    resumed_from = state.epoch
    if env.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device] if env.device.type == "cuda" else None)
    runner: nn.Module = torch.compile(model) if recipe.compile else model  # type: ignore[assignment]
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    final_val: Predictions | None = None
    validated_last = False
    last = recipe.epochs if stop_after_epochs is None else min(recipe.epochs, stop_after_epochs)
    for epoch in range(state.epoch, last):
        epoch_seed = mix_seed(seed, epoch, env.rank)
        seed_everything(epoch_seed)
        generator = torch.Generator().manual_seed(epoch_seed)
        chunks = train_batches(len(train_source), batch, env, seed, epoch)
        lr = optimizer.param_groups[0]["lr"]
        runner.train()
        start = time.perf_counter()
        # Sums stay on the device: no host sync per step (it would stall a GPU).
        loss_acc = torch.zeros((), dtype=torch.float64, device=env.device)
        correct_acc = torch.zeros((), dtype=torch.float64, device=env.device)
        seen = 0
        bar = tqdm(total=sum(len(c) for c in chunks), unit="img", dynamic_ncols=True,
                   desc=f"{label} epoch {epoch + 1}/{recipe.epochs}", leave=False,
                   disable=not (progress and env.is_main), position=position)
        with bar:
            for _, pixels, labels in train_source.batches(chunks, train=True, seed=epoch_seed):
                x = train_source.to_model_input(pixels.to(env.device, non_blocking=True),
                                                train=True, generator=generator)
                y = labels.to(env.device, non_blocking=True)
                with autocast(env.device, recipe.precision):
                    logits = runner(x)
                    loss = loss_fn(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if recipe.schedule == "onecycle":
                    scheduler.step()
                n = len(y)
                loss_acc += loss.detach().double() * n
                correct_acc += (logits.detach().argmax(1) == y).sum()
                seen += n
                bar.update(n)
                if not bar.disable and bar.n // n % 20 == 1:
                    bar.set_postfix(loss=f"{float(loss_acc) / seen:.3f}",
                                    top1=f"{float(correct_acc) / seen:.3f}")
        if recipe.schedule == "step":
            scheduler.step()
        seconds = time.perf_counter() - start
        loss_sum, correct, total = all_reduce_sum(env, [float(loss_acc), float(correct_acc),
                                                        seen])
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / total,
                               "train_top1": correct / total, "val_top1": None}
        is_last = epoch + 1 == recipe.epochs
        due = recipe.val_every > 0 and (epoch + 1) % recipe.val_every == 0
        if validate is not None and val_source is not None and (due or is_last):
            predictions = validate(_unwrap(runner))
            if predictions is not None:
                row["val_top1"] = predictions.top1(_labels(val_source))
            if is_last:
                final_val, validated_last = predictions, True
        state.epoch = epoch + 1
        state.history.append(row)
        state.epoch_timings.append({"epoch": epoch + 1, "seconds": seconds, "images": int(total),
                                    "img_per_s": total / seconds if seconds > 0 else 0.0})
        if env.is_main:
            torch_save(files.checkpoint, {
                "model": _unwrap(runner).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": state.epoch,
                "history": state.history, "timings": state.epoch_timings, "rng": _rng_state(),
                "arch": arch, "seed": seed, "recipe": recipe.training_fields(),
            })
            write_history(files.history, state.history)
        if env.distributed:
            torch.distributed.barrier()
    if env.is_main and state.epoch == recipe.epochs:
        torch_save(files.model, _unwrap(runner).state_dict())
    return TrainResult(runner, state, final_val, validated_last, resumed_from)


def _labels(source: Source) -> np.ndarray:
    return source.labels.numpy()


def load_trained(files: RunFiles, arch: str, num_classes: int, recipe: Recipe, env: DistEnv
                 ) -> nn.Module:
    """The final weights of a finished training run, ready to evaluate."""
    model = build_model(arch, num_classes, recipe.img_size)
    model.load_state_dict(torch.load(files.model, map_location="cpu", weights_only=True))
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.to(env.device)


def epoch_summary(state: TrainState) -> dict[str, Any]:
    seconds = sum(t["seconds"] for t in state.epoch_timings)
    images = sum(t["images"] for t in state.epoch_timings)
    return {"epochs": state.epoch_timings, "train_seconds": seconds,
            "train_img_per_s": images / seconds if seconds > 0 else math.nan}
