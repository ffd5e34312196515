"""Full fine-tuning: every layer of the backbone trains, under a new last layer.

A short schedule with the study's own machinery (:mod:`veil.study.train`): SGD with
Nesterov momentum under a one-cycle learning rate, batches drawn with the study's
shuffle, and RandomResizedCrop + flip done as one ``grid_sample`` per batch on the
device from the cached uint8 squares. Every random choice (head initialisation, order,
crops) comes from generators seeded by (seed, task), so on the CPU the same seed gives
the same weights and the same test scores.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from veil.study.data import random_resized_crop_flip
from veil.study.ddp import DistEnv
from veil.study.evaluate import autocast
from veil.study.profiles import resolve_recipe
from veil.study.train import make_optimizer, make_scheduler, seed_everything, train_batches
from veil.transfer.backbone import Backbone, replace_head
from veil.transfer.features import Preprocess, model_input
from veil.transfer.tasks.base import MULTICLASS


@dataclass(frozen=True)
class FinetuneOptions:
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.1  # for a batch of 256; the rate used is lr * batch_size / 256
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_fraction: float = 0.1
    min_crop_scale: float = 0.35
    label_smoothing: float = 0.0
    max_steps: int | None = None  # stop after this many steps (quick tries, tests)

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "schedule": "one-cycle, cosine anneal", "optimizer":
                "SGD, Nesterov momentum", "augmentation": "RandomResizedCrop + flip"}


@dataclass
class FinetuneResult:
    test_scores: np.ndarray
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0


def _recipe(options: FinetuneOptions, pre: Preprocess, backbone: Backbone) -> Any:
    return resolve_recipe(
        "quick", epochs=options.epochs, batch_size=options.batch_size, lr=options.lr,
        weight_decay=options.weight_decay, momentum=options.momentum, nesterov=True,
        schedule="onecycle", warmup_fraction=options.warmup_fraction,
        label_smoothing=options.label_smoothing, min_crop_scale=options.min_crop_scale,
        img_size=pre.crop, eval_resize=pre.resize, precision=pre.precision,
        channels_last=backbone.channels_last, archs=(backbone.arch,))


def _loss(logits: torch.Tensor, targets: torch.Tensor, kind: str, smoothing: float
          ) -> torch.Tensor:
    if kind == MULTICLASS:
        return F.cross_entropy(logits, targets, label_smoothing=smoothing)
    return F.binary_cross_entropy_with_logits(logits, targets.float())


@torch.no_grad()
def predict(model: nn.Module, pixels: np.ndarray, pre: Preprocess, device: torch.device,
            kind: str, batch_size: int = 256) -> np.ndarray:
    """Probabilities on the center crop of every image."""
    model.eval()
    out = []
    for start in range(0, len(pixels), batch_size):
        batch = torch.from_numpy(np.array(pixels[start:start + batch_size]))
        x = model_input(batch.permute(0, 3, 1, 2).to(device, non_blocking=True), pre)
        with autocast(device, pre.precision):
            logits = model(x).float()
        probs = torch.softmax(logits, 1) if kind == MULTICLASS else torch.sigmoid(logits)
        out.append(probs.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def finetune(backbone: Backbone, train_pixels: np.ndarray, train_labels: np.ndarray,
             test_pixels: np.ndarray, *, kind: str, outputs: int, pre: Preprocess,
             options: FinetuneOptions, seed: int, device: torch.device,
             progress: bool = False, eval_batch: int = 256) -> FinetuneResult:
    """Fine-tune ``backbone`` on the train images and score the test images."""
    recipe = _recipe(options, pre, backbone)
    seed_everything(seed)
    model = replace_head(backbone.load(), outputs, torch.Generator().manual_seed(seed))
    if backbone.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.to(device)
    optimizer = make_optimizer(model, recipe)
    env = DistEnv(device=device)
    steps_per_epoch = len(train_batches(len(train_pixels), recipe.batch_size, env, seed, 0))
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_pixels)} training image(s): too few for a batch")
    scheduler = make_scheduler(optimizer, recipe, steps_per_epoch)
    labels = torch.from_numpy(np.asarray(train_labels, dtype=np.int64))
    scale = (recipe.min_crop_scale, 1.0)
    history: list[dict[str, Any]] = []
    steps = 0
    for epoch in range(recipe.epochs):
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        batches = train_batches(len(train_pixels), recipe.batch_size, env, seed, epoch)
        model.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        seen = 0
        bar = tqdm(total=sum(len(b) for b in batches), unit="img", leave=False,
                   disable=not progress, dynamic_ncols=True,
                   desc=f"finetune {backbone.label} epoch {epoch + 1}/{recipe.epochs}")
        with bar:
            for batch in batches:
                index = np.sort(np.asarray(batch, dtype=np.int64))
                pixels = torch.from_numpy(np.array(train_pixels[index]))
                x = random_resized_crop_flip(pixels.permute(0, 3, 1, 2).to(device),
                                             pre.crop, scale=scale, generator=generator)
                x = pre.normalize(x).contiguous(memory_format=torch.channels_last)
                y = labels[index].to(device)
                with autocast(device, recipe.precision):
                    logits = model(x)
                loss = _loss(logits.float(), y, kind, recipe.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += loss.detach().double() * len(index)
                seen += len(index)
                steps += 1
                bar.update(len(index))
                if options.max_steps is not None and steps >= options.max_steps:
                    break
        history.append({"epoch": epoch + 1, "train_loss": float(loss_sum) / max(seen, 1),
                        "images": seen, "seconds": time.perf_counter() - start})
        if options.max_steps is not None and steps >= options.max_steps:
            break
    scores = predict(model, test_pixels, pre, device, kind, eval_batch)
    return FinetuneResult(scores, history, steps)
