"""Training throughput: the paper's data path, veil's, and the compute limit, in one run.

For each architecture, on one device, in one process, the same model and batch size:

a. ``paper``: the paper's recipe as torchvision's reference script runs it: an
   ``ImageFolder`` whose DataLoader workers decode every JPEG and apply PIL
   RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize each step, fp32 model
   (NCHW; torch's defaults, so TF32 convolutions on an Ampere-or-later GPU).
b. ``veil``: veil's study path (``veil.study.data``): the images decoded once into a
   uint8 cache (``load_or_build_cache``, side ``--eval-resize``), batches gathered from it
   (on a GPU: the whole cache uploaded when it fits, else pinned copies a loader thread
   prepares), RandomResizedCrop + flip + normalise on the device, bf16 autocast,
   channels_last, fused SGD, ``torch.compile`` with ``--compile``.
c. ``limit``: the same model and optimizer on synthetic tensors already on the device
   (bf16 autocast, channels_last, compiled with ``--compile``): what the device can do.

It prints images/s of each and the ratios veil/limit and paper/limit (DESIGN.md's target:
veil >= 0.8x the limit), and writes them as JSON with ``--out``. Steps are timed between
device synchronisations after ``--warmup`` untimed steps; the cache build is timed
apart (it happens once per dataset, not per epoch).

    python benchmarks/train.py --device cuda                      # ResNet-18 and -50, 224 px
    python benchmarks/train.py --device cuda --compile --steps 100
    python benchmarks/train.py --quick                            # a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision import transforms as T

from veil.study.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CacheSource,
    load_or_build_cache,
    make_condition,
    open_study_data,
)
from veil.study.ddp import DistEnv
from veil.study.evaluate import autocast
from veil.study.profiles import Recipe, resolve_recipe
from veil.study.train import build_model, make_optimizer, train_batches

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("VEIL_SHARED", REPO_ROOT.parent / "shared"))
QUICK = {"steps": 3, "warmup": 1, "batch_size": 16, "img_size": 112, "eval_resize": 128,
         "limit": 160, "workers": 2}

Step = Callable[[torch.Tensor, torch.Tensor], None]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu (default: cuda "
                        "when torch sees a GPU)")
    parser.add_argument("--archs", default="resnet18,resnet50",
                        help="torchvision architectures, comma-separated")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per path "
                        "(default 60; --quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first "
                        "(default 15: cuDNN autotuning, compilation, worker start; --quick 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256")
    parser.add_argument("--img-size", type=int, default=None, help="training crop, default 224")
    parser.add_argument("--eval-resize", type=int, default=None,
                        help="side of veil's cached squares (default 256, the paper's)")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "imagenette",
                        help="an ImageFolder with train/ and val/ (default: Imagenette in "
                        "$VEIL_SHARED)")
    parser.add_argument("--limit", type=int, default=None,
                        help="use the first N train images, spread over the classes")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers of the paper's path and cache decoders "
                        "(default: CPU cores - 1)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model of veil's path and of the limit")
    parser.add_argument("--paths", default="paper,veil,limit",
                        help="which of paper, veil, limit to run")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="keep veil's cache here (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true",
                        help=f"small everything ({QUICK}) for a CPU")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    defaults = {"steps": 60, "warmup": 15, "batch_size": 256, "img_size": 224,
                "eval_resize": 256, "limit": None,
                "workers": max(1, (os.cpu_count() or 2) - 1)}
    for key, value in (QUICK if args.quick else defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.eval_resize is None:
        args.eval_resize = defaults["eval_resize"]
    return args


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Step, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], warmup: int,
          steps: int, batch_size: int, device: torch.device) -> dict[str, float]:
    """Run ``warmup`` then ``steps`` steps; images/s over the timed steps."""
    for _ in range(warmup):
        step(*next(batches))
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(*next(batches))
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"img_per_s": steps * batch_size / seconds, "seconds": seconds, "steps": steps}


def make_step(model: nn.Module, recipe: Recipe, device: torch.device) -> Step:
    """One SGD step as the study's training loop takes it."""
    optimizer = make_optimizer(model, recipe)
    loss_fn = nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast(device, recipe.precision):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def prepare_model(arch: str, num_classes: int, recipe: Recipe, device: torch.device
                  ) -> nn.Module:
    model = build_model(arch, num_classes, recipe.img_size)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = model.to(device).train()
    return torch.compile(model) if recipe.compile else model  # type: ignore[return-value]


# --------------------------------------------------------------------------- the three paths


def run_limit(arch: str, num_classes: int, recipe: Recipe, args: argparse.Namespace,
              device: torch.device) -> dict[str, float]:
    model = prepare_model(arch, num_classes, recipe, device)
    x = torch.randn(args.batch_size, 3, recipe.img_size, recipe.img_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (args.batch_size,), device=device)

    def same() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield x, y

    return timed(make_step(model, recipe, device), same(), args.warmup, args.steps,
                 args.batch_size, device)


def run_veil(arch: str, num_classes: int, recipe: Recipe, args: argparse.Namespace,
             device: torch.device, source: CacheSource) -> dict[str, float]:
    model = prepare_model(arch, num_classes, recipe, device)
    env = DistEnv(device=device)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for epoch in range(10**9):
            generator = torch.Generator().manual_seed(epoch)
            chunks = train_batches(len(source), args.batch_size, env, 0, epoch)
            for _, pixels, labels in source.batches(chunks, train=True, seed=epoch):
                x = source.to_model_input(pixels.to(device, non_blocking=True), train=True,
                                          generator=generator)
                yield x, labels.to(device, non_blocking=True)

    result = timed(make_step(model, recipe, device), batches(), args.warmup, args.steps,
                   args.batch_size, device)
    result["cache_on_device"] = source.on_device
    return result


def paper_dataset(data_root: Path, keys: set[str], img_size: int
                  ) -> torch.utils.data.Dataset[Any]:
    """torchvision's ImageFolder with the reference script's training transforms."""
    transform = T.Compose([
        T.RandomResizedCrop(img_size), T.RandomHorizontalFlip(), T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    folder = torchvision.datasets.ImageFolder(str(data_root / "train"), transform=transform)
    chosen = [i for i, (path, _) in enumerate(folder.samples)
              if Path(path).relative_to(data_root).as_posix() in keys]
    return torch.utils.data.Subset(folder, chosen)


def run_paper(arch: str, num_classes: int, recipe: Recipe, args: argparse.Namespace,
              device: torch.device, dataset: torch.utils.data.Dataset[Any]
              ) -> dict[str, float]:
    model = prepare_model(arch, num_classes, recipe, device)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
        pin_memory=device.type == "cuda", drop_last=True,
        persistent_workers=args.workers > 0,
    )

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            for x, y in loader:
                yield (x.to(device, non_blocking=True), y.to(device, non_blocking=True))

    return timed(make_step(model, recipe, device), batches(), args.warmup, args.steps,
                 args.batch_size, device)


# --------------------------------------------------------------------------- main


def environment(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["tf32_conv_default"] = torch.backends.cudnn.allow_tf32
    info["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    return info


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = pick_device(args.device)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the study and the reference script do
    data = open_study_data(args.data, limit=args.limit)
    num_classes = len(data.classes)
    if len(data.train) < args.batch_size:
        raise SystemExit(f"{len(data.train)} train images: fewer than a batch of "
                         f"{args.batch_size}")
    common = {"img_size": args.img_size, "eval_resize": args.eval_resize,
              "batch_size": args.batch_size, "compile": False}
    paper_recipe = resolve_recipe("paper", **common)  # fp32, NCHW, PIL transforms
    veil_recipe = resolve_recipe("paper", **{**common, "loader": "cache", "precision": "bf16",
                                             "channels_last": True, "compile": args.compile})
    results: dict[str, Any] = {"environment": environment(device, args), "archs": {}}
    print(f"device {device} ({results['environment'].get('gpu', platform.processor())}), "
          f"{len(data.train)} train images, {num_classes} classes, batch {args.batch_size}, "
          f"{args.img_size} px, steps {args.steps} (+{args.warmup} warm-up), "
          f"workers {args.workers}, compile {args.compile}", flush=True)

    source = None
    with contextlib.ExitStack() as stack:
        if "veil" in paths:
            cache_dir = args.cache_dir or Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="veil-bench-")))
            start = time.perf_counter()
            images = load_or_build_cache(cache_dir, data.train, make_condition("original"),
                                         args.eval_resize, {}, "", workers=args.workers)
            build = time.perf_counter() - start
            results["cache"] = {"images": len(images), "seconds": build,
                                "img_per_s": len(images) / build, "bytes": int(images.nbytes)}
            print(f"veil cache: {len(images)} images decoded at {args.eval_resize} px in "
                  f"{build:.1f} s ({len(images) / build:.0f} img/s, once per dataset)",
                  flush=True)
            source = CacheSource(images, data.train.labels, args.img_size,
                                 veil_recipe.min_crop_scale, device=device)
        dataset = (paper_dataset(data.root, set(data.train.keys), args.img_size)
                   if "paper" in paths else None)
        for arch in archs:
            row: dict[str, Any] = {}
            for path in paths:
                if path == "limit":
                    row[path] = run_limit(arch, num_classes, veil_recipe, args, device)
                elif path == "veil":
                    assert source is not None
                    row[path] = run_veil(arch, num_classes, veil_recipe, args, device, source)
                elif path == "paper":
                    assert dataset is not None
                    row[path] = run_paper(arch, num_classes, paper_recipe, args, device,
                                          dataset)
                else:
                    raise SystemExit(f"unknown path {path!r}: choose from paper, veil, limit")
                print(f"  {arch:>10} {path:>5}: {row[path]['img_per_s']:9.1f} img/s",
                      flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            if "limit" in row:
                for path in ("veil", "paper"):
                    if path in row:
                        row[f"{path}/limit"] = row[path]["img_per_s"] / row["limit"]["img_per_s"]
            results["archs"][arch] = row
    print_table(results)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=_jsonable) + "\n")
    return results


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def print_table(results: dict[str, Any]) -> None:
    env = results["environment"]
    print(f"\n{env.get('gpu', env['device'])}, torch {env['torch']}")
    print("| arch | paper img/s | veil img/s | limit img/s | veil/limit | paper/limit |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for arch, row in results["archs"].items():
        def rate(path: str, row: dict[str, Any] = row) -> str:
            return f"{row[path]['img_per_s']:,.1f}" if path in row else "-"

        def ratio(key: str, row: dict[str, Any] = row) -> str:
            return f"{row[key]:.2f}" if key in row else "-"

        print(f"| {arch} | {rate('paper')} | {rate('veil')} | {rate('limit')} | "
              f"{ratio('veil/limit')} | {ratio('paper/limit')} |")


if __name__ == "__main__":
    main()
