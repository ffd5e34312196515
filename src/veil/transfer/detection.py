"""PASCAL VOC detection with a torchvision Faster R-CNN on a study's backbone.

The backbone becomes a detection backbone with torchvision's own utilities: ResNets get
a feature pyramid (``BackboneWithFPN`` over ``layer1``..``layer4``, the standard Faster
R-CNN ResNet-FPN), every other architecture its convolutional trunk (``features``) as
one feature map. BatchNorm is frozen (``FrozenBatchNorm2d``), as for every torchvision
detector: detection batches are too small for batch statistics. ``linear`` mode keeps
the backbone's weights frozen and trains the pyramid, RPN and box head; ``finetune``
trains everything.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d
from tqdm import tqdm

from veil.errors import VeilError
from veil.images import load_image
from veil.processes import loader_context
from veil.study.ddp import DistEnv
from veil.study.evaluate import autocast
from veil.study.profiles import resolve_recipe
from veil.study.train import make_optimizer, make_scheduler, seed_everything, train_batches
from veil.transfer.backbone import Backbone
from veil.transfer.metrics import ImageDetections
from veil.transfer.tasks.voc import DetectionSplit


@dataclass(frozen=True)
class DetectionOptions:
    epochs: int = 12
    batch_size: int = 8
    lr: float = 0.02  # for a batch of 16 (detection's convention), scaled linearly
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    min_size: int = 600  # shorter image side fed to the detector (classic VOC setting)
    max_size: int = 1000
    fpn_channels: int = 256
    max_steps: int | None = None
    workers: int = 2

    def describe(self) -> dict[str, Any]:
        described = {k: v for k, v in asdict(self).items() if k != "workers"}
        return {**described, "detector": "torchvision Faster R-CNN",
                "augmentation": "horizontal flip", "batchnorm": "frozen"}


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d replaced by a FrozenBatchNorm2d with its statistics."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                if child.weight is not None:
                    frozen.weight.copy_(child.weight)
                    frozen.bias.copy_(child.bias)
                if child.running_mean is not None:
                    frozen.running_mean.copy_(child.running_mean)
                    frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


class _Trunk(nn.Sequential):
    """A single-map detection backbone: torchvision's detectors read ``out_channels``."""

    out_channels: int


def _channels(module: nn.Module, probe: int = 64) -> list[int]:
    with torch.no_grad():
        out = module(torch.zeros(1, 3, probe, probe))
    maps = out.values() if isinstance(out, dict) else [out]
    return [int(m.shape[1]) for m in maps]


def detection_backbone(model: nn.Module, arch: str, *, frozen: bool, fpn_channels: int = 256
                       ) -> tuple[nn.Module, bool]:
    """(backbone with ``out_channels``, whether it is a pyramid) from a classifier."""
    model = freeze_batchnorm(model)
    if hasattr(model, "layer4") and hasattr(model, "layer1"):  # ResNet family
        layers = {f"layer{i}": str(i - 1) for i in range(1, 5)}
        from torchvision.models._utils import IntermediateLayerGetter

        channels = _channels(IntermediateLayerGetter(model, layers))
        backbone: nn.Module = BackboneWithFPN(model, layers, channels, fpn_channels)
        trunk_params = backbone.get_submodule("body").parameters()
        pyramid = True
    else:
        parts: list[nn.Module]
        if hasattr(model, "features"):
            parts = [model.get_submodule("features")]
            if arch.startswith("densenet"):
                parts.append(nn.ReLU(inplace=False))  # densenet applies it in forward()
        elif hasattr(model, "stage4") and hasattr(model, "conv5"):  # ShuffleNetV2
            parts = [model.get_submodule(name) for name in
                     ("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5")]
        elif hasattr(model, "layers"):  # MNASNet
            parts = [model.get_submodule("layers")]
        else:
            raise VeilError(f"no detection backbone for {arch}: it has neither ResNet stages"
                            " nor a `features` trunk")
        trunk = _Trunk(*parts)
        trunk.out_channels = _channels(trunk)[0]
        backbone, trunk_params, pyramid = trunk, trunk.parameters(), False
    if frozen:
        for p in trunk_params:
            p.requires_grad_(False)
    return backbone, pyramid


def build_detector(backbone: Backbone, num_classes: int, *, frozen: bool,
                   options: DetectionOptions) -> FasterRCNN:
    """Faster R-CNN with ``num_classes`` object classes (+ background) on the backbone."""
    net, pyramid = detection_backbone(backbone.load(), backbone.arch, frozen=frozen,
                                      fpn_channels=options.fpn_channels)
    extra: dict[str, Any] = {}
    if not pyramid:
        extra["rpn_anchor_generator"] = AnchorGenerator(((32, 64, 128, 256, 512),),
                                                        ((0.5, 1.0, 2.0),))
        extra["box_roi_pool"] = MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2)
    return FasterRCNN(net, num_classes=num_classes + 1, min_size=options.min_size,
                      max_size=options.max_size, image_mean=list(backbone.mean),
                      image_std=list(backbone.std), **extra)


# --------------------------------------------------------------------------- data


class VOCImages(torch.utils.data.Dataset):
    """Images as float tensors in 0..1 with their non-difficult boxes (labels from 1)."""

    def __init__(self, split: DetectionSplit, train: bool) -> None:
        self.paths: list[Path] = split.paths
        self.annotations = split.annotations
        self.train = train

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = load_image(self.paths[index]).image
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
        tensor = pixels.permute(2, 0, 1).float().div_(255)
        ann = self.annotations[index]
        keep = ~ann.difficult if self.train else np.ones(len(ann.labels), bool)
        target = {"boxes": torch.from_numpy(ann.boxes[keep]).float().reshape(-1, 4),
                  "labels": torch.from_numpy(ann.labels[keep] + 1).long(),
                  "index": torch.tensor(index)}
        return tensor, target


def collate(batch: list[Any]) -> tuple[Any, ...]:
    return tuple(zip(*batch, strict=True))


def _loader(dataset: VOCImages, batches: list[list[int]], workers: int
            ) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                       collate_fn=collate,
                                       multiprocessing_context=loader_context(workers))


def _flip(image: torch.Tensor, target: dict[str, torch.Tensor]
          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes}


# --------------------------------------------------------------------------- train, predict


@dataclass
class DetectionResult:
    detections: list[ImageDetections]
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0


def train_detector(model: FasterRCNN, split: DetectionSplit, *, options: DetectionOptions,
                   seed: int, device: torch.device, precision: str = "fp32",
                   progress: bool = False, label: str = "") -> tuple[list[dict[str, Any]], int]:
    recipe = resolve_recipe(
        "quick", epochs=options.epochs, batch_size=options.batch_size,
        lr=options.lr * 256 / 16, weight_decay=options.weight_decay, nesterov=False,
        schedule="onecycle", warmup_fraction=options.warmup_fraction, precision=precision)
    seed_everything(seed)
    model.to(device)
    optimizer = make_optimizer(model, recipe)
    env = DistEnv(device=device)
    dataset = VOCImages(split, train=True)
    per_epoch = len(train_batches(len(dataset), recipe.batch_size, env, seed, 0))
    if per_epoch == 0:
        raise VeilError(f"{len(dataset)} training image(s): too few for a detection batch")
    scheduler = make_scheduler(optimizer, recipe, per_epoch)
    history: list[dict[str, Any]] = []
    steps = 0
    for epoch in range(recipe.epochs):
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        batches = train_batches(len(dataset), recipe.batch_size, env, seed, epoch)
        model.train()
        start = time.perf_counter()
        total, seen = 0.0, 0
        bar = tqdm(total=sum(len(b) for b in batches), unit="img", leave=False,
                   disable=not progress, dynamic_ncols=True,
                   desc=f"detect-train {label} epoch {epoch + 1}/{recipe.epochs}")
        with bar:
            for images, targets in _loader(dataset, batches, options.workers):
                pairs = []
                for image, target in zip(images, targets, strict=True):
                    if torch.rand(1, generator=generator).item() < 0.5:
                        image, target = _flip(image, target)
                    pairs.append((image.to(device),
                                  {k: v.to(device) for k, v in target.items() if k != "index"}))
                with autocast(device, precision if device.type == "cuda" else "fp32"):
                    losses = model([p[0] for p in pairs], [p[1] for p in pairs])
                loss = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[union-attr]
                optimizer.step()
                scheduler.step()
                total += float(loss.detach()) * len(pairs)
                seen += len(pairs)
                steps += 1
                bar.update(len(pairs))
                if options.max_steps is not None and steps >= options.max_steps:
                    break
        history.append({"epoch": epoch + 1, "train_loss": total / max(seen, 1), "images": seen,
                        "seconds": time.perf_counter() - start})
        if options.max_steps is not None and steps >= options.max_steps:
            break
    return history, steps


@torch.no_grad()
def predict_detections(model: FasterRCNN, split: DetectionSplit, *, device: torch.device,
                       batch_size: int = 4, workers: int = 2, progress: bool = False
                       ) -> list[ImageDetections]:
    """Every test image's detections (labels 0-based) beside its ground truth."""
    model.eval().to(device)
    dataset = VOCImages(split, train=False)
    order = list(range(len(dataset)))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    out: list[ImageDetections | None] = [None] * len(dataset)
    bar = tqdm(total=len(dataset), unit="img", leave=False, disable=not progress,
               desc="detect", dynamic_ncols=True)
    with bar:
        for images, targets in _loader(dataset, batches, workers):
            found = model([i.to(device) for i in images])
            for result, target in zip(found, targets, strict=True):
                index = int(target["index"])
                ann = split.annotations[index]
                out[index] = ImageDetections(
                    boxes=result["boxes"].float().cpu().numpy(),
                    scores=result["scores"].float().cpu().numpy(),
                    labels=result["labels"].cpu().numpy().astype(np.int64) - 1,
                    gt_boxes=ann.boxes, gt_labels=ann.labels, gt_difficult=ann.difficult)
            bar.update(len(images))
    return [d for d in out if d is not None]
