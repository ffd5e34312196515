"""``veil study --plan``: what a study will run, and what it will cost here, before it runs.

The plan is the whole matrix (architecture x seed x condition) with each training's
recipe, how the faces source met each split (:func:`veil.faces.match_faces`), the disk
the pixel caches and model files take, and the time the study should need on this
machine. The time is measured, not guessed: a few real SGD steps of every
architecture at the recipe's input size, precision and memory layout, on the device
and with the threads a training would get, plus the decoding of a few of the
dataset's images; then scaled to the dataset's size, the epochs and the evaluations.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from veil.cores import available_cores
from veil.study.data import ORIGINAL, load_condition_image
from veil.study.evaluate import autocast
from veil.study.profiles import Recipe
from veil.study.train import build_model, make_optimizer

#: On a CPU, a timed step holds at most this many pixels per channel (the quick
#: profile's whole batch, 128 x 64 x 64; about 10 images at 224 px), so the plan stays
#: quick; per-image cost falls with the batch, so the recipe's batch is used up to that.
PLAN_PIXELS = 128 * 64 * 64
#: Timed steps per architecture (after one warm-up step, which is not counted).
PLAN_STEPS = 2
#: Images decoded to time the data path.
PLAN_DECODES = 8


@dataclass
class ArchCost:
    """Measured per-image seconds of one architecture, and its model files' size."""

    arch: str
    train_seconds_per_image: float
    eval_seconds_per_image: float
    parameters: int

    @property
    def model_bytes(self) -> int:
        """model.pt (weights) + checkpoint.pt (weights + SGD momentum), float32."""
        return 3 * 4 * self.parameters


def plan_batch(recipe: Recipe, device: torch.device) -> int:
    """Images per timed step: the recipe's batch (on a CPU, capped by PLAN_PIXELS)."""
    if device.type != "cpu":
        return recipe.batch_size
    return max(2, min(recipe.batch_size, PLAN_PIXELS // (recipe.img_size ** 2)))


def measure_arch(arch: str, recipe: Recipe, num_classes: int, device: torch.device,
                 batch: int | None = None, steps: int = PLAN_STEPS) -> ArchCost:
    """Seconds per image of training steps and of evaluation, measured."""
    batch = batch or plan_batch(recipe, device)
    model = build_model(arch, num_classes, recipe.img_size).to(device)
    memory = torch.channels_last if recipe.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory)
    optimizer = make_optimizer(model, recipe.for_arch(arch))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, recipe.img_size, recipe.img_size, generator=generator)
    x = x.to(device).contiguous(memory_format=memory)
    y = torch.randint(0, num_classes, (batch,), generator=generator).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def train_step() -> None:
        with autocast(device, recipe.precision):
            loss = F.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    train_step()  # warm-up: allocations, kernel choice
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    sync()
    train = (time.perf_counter() - start) / (steps * batch)
    model.eval()
    with torch.no_grad():
        with autocast(device, recipe.precision):
            model(x)
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            with autocast(device, recipe.precision):
                model(x)
        sync()
    evaluate = (time.perf_counter() - start) / (steps * batch)
    parameters = sum(p.numel() for p in model.parameters())
    return ArchCost(arch, train, evaluate, parameters)


def measure_decode(study: Any, count: int = PLAN_DECODES) -> float:
    """Seconds to decode one of the dataset's images (its first few train images)."""
    split = study.data.train
    condition = study.conditions[ORIGINAL]
    picked = list(range(min(count, len(split))))
    start = time.perf_counter()
    for i in picked:
        load_condition_image(split.source(i), split.keys[i], study.boxes, condition)
    return (time.perf_counter() - start) / max(1, len(picked))


def make_plan(study: Any, measure: bool = True) -> dict[str, Any]:
    """The plan of a :class:`veil.study.run.Study` that has not opened its folder."""
    recipe: Recipe = study.recipe
    n_train, n_val = len(study.data.train), len(study.data.val)
    conditions = [ORIGINAL, *study.methods]
    jobs = [(a, s, c) for a in study.archs for s in study.seeds for c in conditions]
    parallel = study.parallel_jobs(len(jobs))
    threads = study.config.threads or max(1, available_cores() // parallel)
    workers = study.workers
    cache_bytes = 0
    if recipe.loader == "cache":
        side = recipe.eval_resize
        cache_bytes = len(conditions) * (n_train + n_val) * side * side * 3
    costs: dict[str, ArchCost] = {}
    decode = 0.0
    if measure:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for arch in study.archs:
                costs[arch] = measure_arch(arch, recipe, len(study.data.classes),
                                           study.env.device)
        finally:
            torch.set_num_threads(previous)
        decode = measure_decode(study)
    val_passes = (recipe.epochs // recipe.val_every if recipe.val_every else 1) or 1
    train_seconds = 0.0
    for arch, _, train in jobs:
        cost = costs.get(arch)
        if cost is None:
            continue
        evals = val_passes + (0 if train == ORIGINAL else 1)
        train_seconds += (recipe.epochs * n_train * cost.train_seconds_per_image
                          + evals * n_val * cost.eval_seconds_per_image)
        if recipe.loader == "stream":  # every epoch decodes again, over the workers
            train_seconds += (recipe.epochs * n_train + evals * n_val) * decode / workers
    decode_seconds = (len(conditions) * (n_train + n_val) * decode / workers
                      if recipe.loader == "cache" else 0.0)
    rows = []
    for item in study.condition_plan():
        per_arch = recipe.for_arch(item.arch)
        rows.append({"arch": item.arch, "seed": item.seed, "train": item.train,
                     "eval": item.eval, "lr": per_arch.lr,
                     "effective_lr": per_arch.effective_lr})
    return {
        "profile": recipe.profile,
        "recipe": recipe.to_json(),
        "archs": list(study.archs), "seeds": list(study.seeds),
        "methods": list(study.methods),
        "matrix": rows,
        "trainings": len(jobs),
        "dataset": {"train": n_train, "val": n_val, "classes": len(study.data.classes)},
        "face_matching": study.face_matching,
        "disk": {"cache_bytes": cache_bytes,
                 "model_bytes": sum(costs[a].model_bytes * len(study.seeds) * len(conditions)
                                    for a in costs)},
        "time": {
            "measured": measure, "device": str(study.env.device), "parallel": parallel,
            "threads_per_training": threads, "decode_seconds_per_image": decode,
            "batch": plan_batch(recipe, study.env.device),
            "per_arch": {a: {"train_s_per_image": c.train_seconds_per_image,
                             "eval_s_per_image": c.eval_seconds_per_image,
                             "parameters": c.parameters} for a, c in costs.items()},
            "seconds": decode_seconds + train_seconds / parallel,
        },
    }


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def print_plan(plan: dict[str, Any], echo: Callable[[str], None]) -> None:
    """The plan as text: recipe, face matching, matrix, disk and time."""
    recipe = plan["recipe"]
    data = plan["dataset"]
    echo(f"study plan: profile {plan['profile']}, {len(plan['archs'])} arch(s) x"
         f" {len(plan['seeds'])} seed(s) (seeds {', '.join(map(str, plan['seeds']))}),"
         f" methods {', '.join(plan['methods']) or '-'}: {plan['trainings']} trainings,"
         f" {len(plan['matrix'])} evaluations")
    echo(f"dataset: {data['train']} train / {data['val']} val images, {data['classes']}"
         " classes")
    echo(f"recipe: {recipe['epochs']} epochs, batch {recipe['batch_size']},"
         f" {recipe['img_size']} px (eval resize {recipe['eval_resize']}),"
         f" {recipe['schedule']} schedule, momentum {recipe['momentum']},"
         f" wd {recipe['weight_decay']}, {recipe['precision']}, loader {recipe['loader']};"
         " lr per arch below (for a batch of 256; used: lr x batch/256)")
    echo("faces matched per split:")
    echo(f"  {'split':<6} {'images':>8} {'with faces':>11} {'face records':>13}"
         f" {'matched':>8}")
    for split, m in plan["face_matching"].items():
        echo(f"  {split:<6} {m['images']:>8} {m['with_faces']:>11} {m['face_records']:>13}"
             f" {m['matched']:>8}")
    echo("matrix:")
    echo(f"  {'arch':<20} {'seed':>4}  {'train':<15} {'eval':<15} {'lr':>7} {'lr used':>8}"
         f" {'epochs':>6} {'batch':>5} {'px':>4}")
    for row in plan["matrix"]:
        echo(f"  {row['arch']:<20} {row['seed']:>4}  {row['train']:<15} {row['eval']:<15}"
             f" {row['lr']:>7g} {row['effective_lr']:>8g} {recipe['epochs']:>6}"
             f" {recipe['batch_size']:>5} {recipe['img_size']:>4}")
    disk = plan["disk"]
    echo(f"disk: caches {_size(disk['cache_bytes'])}"
         f"{' (stream loader: none)' if recipe['loader'] == 'stream' else ''},"
         f" model files {_size(disk['model_bytes'])}")
    timing = plan["time"]
    if not timing["measured"]:
        return
    echo(f"time on this machine ({timing['device']}, {timing['parallel']} training(s) at"
         f" once, {timing['threads_per_training']} thread(s) each): about"
         f" {_duration(timing['seconds'])}")
    echo(f"  measured: {PLAN_STEPS} training steps of {timing['batch']} images per arch, and"
         f" {PLAN_DECODES} image decodes ({timing['decode_seconds_per_image'] * 1000:.1f} ms"
         " each)")
    for arch, cost in timing["per_arch"].items():
        echo(f"  {arch:<20} train {cost['train_s_per_image'] * 1000:8.1f} ms/img,"
             f" eval {cost['eval_s_per_image'] * 1000:7.1f} ms/img,"
             f" {cost['parameters'] / 1e6:.1f} M parameters")
