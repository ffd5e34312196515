"""Pixels decoded once per task split, and frozen features computed once per backbone.

Two caches, both plain ``.npy`` files under the cache folder:

- **pixels**: each split decoded into uint8 NHWC squares of side ``resize`` with the
  study's evaluation transform (torchvision ``Resize`` of the shorter side, then
  ``CenterCrop``), written straight into a memory-mapped file so a split larger than
  memory is fine. Every backbone with the same ``eval_resize`` shares it, and fine-tuning
  samples its random crops from it on the device, as the study does.
- **features**: the head-stripped backbone's output on the center crop of every image.
  The file name carries a digest of the backbone file's SHA-256, the split's
  fingerprint (keys, file sizes and times, or the array bytes) and the preprocessing, so
  a retrained backbone, changed data or other preprocessing can never reuse a stale
  entry; writing a new entry removes the old ones of the same backbone and split.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2 as T
from tqdm import tqdm

from veil.files import atomic_path
from veil.study.data import center_crop, fill_in_order
from veil.study.evaluate import autocast
from veil.transfer.backbone import Backbone, strip_head
from veil.transfer.tasks.base import ImageSource, TaskSplit

PIXEL_VERSION = 1  # bump when the decoding changes what a pixel cache holds
FEATURE_VERSION = 1  # bump when the extraction changes what a feature cache holds
CHUNK = 256


@dataclass(frozen=True)
class Preprocess:
    """How images reach a backbone: squares of side ``resize`` (stored), center-cropped
    to ``crop`` and normalised with ``mean``/``std``; ``precision`` of the forward pass."""

    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    precision: str = "fp32"

    @classmethod
    def for_backbone(cls, backbone: Backbone, *, img_size: int | None = None,
                     precision: str | None = None) -> Preprocess:
        """The backbone's own evaluation transform; ``img_size`` rescales both sides by
        the study's ratio (e.g. 224 for paper-profile backbones on 32 px CIFAR)."""
        crop = img_size or backbone.img_size
        resize = (backbone.eval_resize if img_size is None
                  else round(img_size * backbone.eval_resize / backbone.img_size))
        return cls(resize, crop, tuple(backbone.mean), tuple(backbone.std),
                   precision or backbone.precision)

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1) * 255
        return (x.float() - mean) / std


# --------------------------------------------------------------------------- pixels


def _decode_chunk(args: tuple[ImageSource, int]) -> np.ndarray:
    source, size = args
    out = np.empty((len(source), size, size, 3), dtype=np.uint8)
    for i in range(len(source)):
        image = source.image(i)
        image = T.functional.center_crop(T.functional.resize(image, size), [size, size])
        out[i] = np.asarray(image, dtype=np.uint8)
    return out


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def pixel_cache_path(cache_dir: Path, task: str, split: TaskSplit, size: int) -> Path:
    digest = _digest(split.fingerprint(), size, PIXEL_VERSION)
    return cache_dir / "pixels" / f"{task}-{split.name}-{size}px-{digest}.npy"


def load_pixels(cache_dir: Path, task: str, split: TaskSplit, size: int, *, workers: int = 1,
                progress: bool = False) -> np.ndarray:
    """The split as uint8 NHWC squares of side ``size``, decoded on first use only."""
    path = pixel_cache_path(cache_dir, task, split, size)
    if not path.exists():
        n = len(split)
        chunks = [list(range(s, min(s + CHUNK, n))) for s in range(0, n, CHUNK)]
        jobs = [(split.images.take(c), size) for c in chunks]
        bar = tqdm(total=n, desc=f"decode {task}/{split.name}", unit="img", leave=False,
                   disable=not progress, dynamic_ncols=True)
        with atomic_path(path) as tmp, bar:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                              shape=(n, size, size, 3))
            fill_in_order(array, jobs, _decode_chunk, workers, bar)
            array.flush()
            del array
    return np.load(path, mmap_mode="r")


# --------------------------------------------------------------------------- features


def model_input(pixels: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """uint8 NCHW squares -> the normalised center crop the backbone evaluates."""
    return pre.normalize(center_crop(pixels, pre.crop)).contiguous(
        memory_format=torch.channels_last)


@torch.no_grad()
def extract_features(model: torch.nn.Module, pixels: np.ndarray, pre: Preprocess,
                     device: torch.device, *, batch_size: int = 256, progress: bool = False,
                     description: str = "features") -> np.ndarray:
    """Features of every image (float32, one row each) from a head-stripped model."""
    model.eval()
    rows: list[np.ndarray] = []
    bar = tqdm(total=len(pixels), desc=description, unit="img", leave=False,
               disable=not progress, dynamic_ncols=True)
    with bar:
        for start in range(0, len(pixels), batch_size):
            batch = torch.from_numpy(np.array(pixels[start:start + batch_size]))
            x = model_input(batch.permute(0, 3, 1, 2).to(device, non_blocking=True), pre)
            with autocast(device, pre.precision):
                out = model(x)
            rows.append(out.float().reshape(len(batch), -1).cpu().numpy())
            bar.update(len(batch))
    if not rows:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(rows).astype(np.float32, copy=False)


def feature_backbone(backbone: Backbone, device: torch.device) -> torch.nn.Module:
    model = strip_head(backbone.load())
    if backbone.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.to(device).eval()


def feature_cache_path(cache_dir: Path, task: str, split: TaskSplit, backbone: Backbone,
                       pre: Preprocess) -> Path:
    digest = _digest(backbone.sha256, split.fingerprint(), pre.describe(), FEATURE_VERSION)
    return cache_dir / "features" / f"{_stem(task, split, backbone)}-{digest}.npy"


def _stem(task: str, split: TaskSplit, backbone: Backbone) -> str:
    return f"{task}-{split.name}-{backbone.arch}-seed{backbone.seed}-{backbone.condition}"


@dataclass
class FeatureStats:
    """What the feature cache did (tests and logs read it)."""

    computed: int = 0
    reused: int = 0
    removed: int = 0


def cached_features(cache_dir: Path, task: str, split: TaskSplit, backbone: Backbone,
                    pre: Preprocess, pixels: Callable[[], np.ndarray], *,
                    model: Callable[[], torch.nn.Module], device: torch.device,
                    batch_size: int = 256, progress: bool = False,
                    stats: FeatureStats | None = None) -> np.ndarray:
    """The split's features under ``backbone``: from the cache when its entry matches,
    else computed (``pixels()`` and ``model()`` are called only then) and stored."""
    path = feature_cache_path(cache_dir, task, split, backbone, pre)
    if path.exists():
        if stats is not None:
            stats.reused += 1
        return np.load(path)
    features = extract_features(model(), pixels(), pre, device, batch_size=batch_size,
                                progress=progress,
                                description=f"features {backbone.label} {split.name}")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, features)
    stem = _stem(task, split, backbone)
    for stale in path.parent.glob(f"{stem}-*.npy"):
        if stale != path and re.fullmatch(rf"{re.escape(stem)}-[0-9a-f]{{16}}\.npy", stale.name):
            stale.unlink(missing_ok=True)
            if stats is not None:
                stats.removed += 1
    if stats is not None:
        stats.computed += 1
    return features
