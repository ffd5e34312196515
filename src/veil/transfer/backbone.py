"""The backbones a study trained, and the surgery transfer needs on them.

A study run holds one ``model.pt`` (a torchvision classifier's ``state_dict``) per
architecture, seed and training condition (``original`` or an obfuscation method), with
its recipe in ``config.json``. Transfer keeps everything but the classifier's last layer:
:func:`final_layer` finds it for any torchvision classifier (the last ``Linear`` or
``Conv2d`` registered, which maps to the study's classes: ``fc``, ``classifier[-1]``,
SqueezeNet's 1x1 convolution, ``heads.head``), so no architecture is special-cased.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from veil.errors import VeilError
from veil.study.data import IMAGENET_MEAN, IMAGENET_STD
from veil.study.layout import (
    CONFIG_FILE,
    MODEL_FILE,
    ORIGINAL,
    STUDY_FILE,
    find_models,
    read_study,
    training_folder,
)
from veil.study.train import build_model

_HASHES: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, remembered per (path, size, change times) within the process."""
    info = path.stat()
    memo = (str(path.resolve()), info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    if memo not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHES[memo] = digest.hexdigest()
    return _HASHES[memo]


@dataclass(frozen=True)
class Backbone:
    """One trained network of a study run and the preprocessing it was trained with."""

    arch: str
    seed: int
    condition: str  # "original" or the method its training images were obfuscated with
    path: Path  # model.pt
    num_classes: int
    img_size: int
    eval_resize: int
    precision: str = "fp32"
    channels_last: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def label(self) -> str:
        return f"{self.arch}/seed{self.seed}/train-{self.condition}"

    @property
    def sha256(self) -> str:
        return file_sha256(self.path)

    def describe(self) -> dict[str, Any]:
        return {"arch": self.arch, "seed": self.seed, "condition": self.condition,
                "model": str(self.path), "sha256": self.sha256, "img_size": self.img_size,
                "eval_resize": self.eval_resize, "precision": self.precision}

    def load(self) -> nn.Module:
        """The study's classifier with its trained weights, on the CPU."""
        model = build_model(self.arch, self.num_classes, self.img_size)
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file: say which
            raise VeilError(f"cannot load {self.path}: {exc}") from exc
        if isinstance(state, dict) and "model" in state and "optimizer" in state:
            state = state["model"]  # a checkpoint.pt given instead of model.pt
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise VeilError(f"{self.path} does not fit {self.arch} with {self.num_classes}"
                            f" classes: {exc}") from exc
        return model


def _hyper(folder: Path, study: dict[str, Any]) -> dict[str, Any]:
    config = folder / CONFIG_FILE
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        return {**(study.get("hyper") or {}), **(data.get("hyper") or {}),
                "normalization": data.get("normalization")}
    return dict(study.get("hyper") or {})


def find_backbones(run_dir: str | Path, *, archs: Sequence[str] | None = None,
                   seeds: int | Sequence[int] | None = None,
                   conditions: Sequence[str] | None = None) -> tuple[list[Backbone], list[str]]:
    """Every finished backbone of a study run (those with a ``model.pt``), in the
    study's order, and notes on what was asked for but is not there.

    ``seeds``: a count (the run's first N seeds) or a list; ``None``: all.
    """
    root = Path(run_dir).expanduser()
    study = read_study(root)
    num_classes = len(study.get("classes") or [])
    if num_classes < 2:
        raise VeilError(f"{root / STUDY_FILE} lists {num_classes} classes")
    found = {(arch, seed, train): path for arch, seed, train, path in find_models(root)}
    if not found:
        where = training_folder("<arch>", "<k>", "<cond>")
        raise VeilError(f"{root} has no trained backbones yet ({where}/{MODEL_FILE});"
                        " run or finish `veil study` first")
    arch_order = list(dict.fromkeys([*study.get("archs", []), *sorted({k[0] for k in found})]))
    seed_order = sorted({k[1] for k in found} | set(study.get("seeds", [])))
    cond_order = list(dict.fromkeys([ORIGINAL, *study.get("methods", []),
                                     *sorted({k[2] for k in found})]))
    notes: list[str] = []
    if archs:
        arch_order = _select(archs, arch_order, f"{root} has no backbones of")
    if isinstance(seeds, int):
        if seeds < 1:
            raise VeilError("--seeds must be at least 1")
        if seeds > len(seed_order):
            notes.append(f"asked for {seeds} seeds, the run has {len(seed_order)}")
        seed_order = seed_order[:seeds]
    elif seeds is not None:
        unknown_seeds = sorted(set(seeds) - set(seed_order))
        if unknown_seeds:
            raise VeilError(f"{root} has no seed {unknown_seeds[0]} (seeds: {seed_order})")
        seed_order = [s for s in seed_order if s in seeds]
    if conditions:
        cond_order = _select(conditions, cond_order, f"{root} has no train condition")
    out = []
    for arch in arch_order:
        for seed in seed_order:
            for cond in cond_order:
                path = found.get((arch, seed, cond))
                if path is None:
                    planned = [*study.get("methods", []), ORIGINAL]
                    if cond in planned and arch in study.get("archs", []):
                        notes.append(f"{arch}/seed{seed}/train-{cond}: no {MODEL_FILE} yet")
                    continue
                hyper = _hyper(path.parent, study)
                if "img_size" not in hyper:
                    raise VeilError(f"{path.parent}: config.json and study.json give no img_size")
                norm = hyper.get("normalization") or {}
                out.append(Backbone(
                    arch=arch, seed=seed, condition=cond, path=path, num_classes=num_classes,
                    img_size=int(hyper["img_size"]),
                    eval_resize=int(hyper.get("eval_resize") or hyper["img_size"]),
                    precision=str(hyper.get("precision") or "fp32"),
                    channels_last=bool(hyper.get("channels_last", False)),
                    mean=tuple(norm.get("mean", IMAGENET_MEAN)),
                    std=tuple(norm.get("std", IMAGENET_STD)),
                ))
    if not out:
        raise VeilError(f"{root}: no backbone matches the archs, seeds and conditions asked for")
    return out, notes


# --------------------------------------------------------------------------- surgery


def final_layer(model: nn.Module) -> tuple[nn.Module, str, nn.Module]:
    """(parent, attribute, layer) of the classifier's last Linear or Conv2d."""
    last: tuple[str, nn.Module] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            last = (name, module)
    if last is None or not last[0]:
        raise VeilError(f"{type(model).__name__} has no final Linear or Conv2d layer")
    name, layer = last
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, attribute, layer


def strip_head(model: nn.Module) -> nn.Module:
    """The network up to (not including) its last layer: it returns the features the
    classifier read. Modifies and returns ``model``."""
    parent, attribute, _ = final_layer(model)
    setattr(parent, attribute, nn.Identity())
    return model


def replace_head(model: nn.Module, outputs: int, generator: torch.Generator) -> nn.Module:
    """``model`` with a freshly initialised last layer of ``outputs`` units (same kind as
    the old one), initialised from ``generator`` so a seed decides it."""
    parent, attribute, old = final_layer(model)
    new: nn.Module
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, outputs)
    else:
        assert isinstance(old, nn.Conv2d)
        shape = {k: getattr(old, k) for k in ("kernel_size", "stride", "padding")}
        new = nn.Conv2d(old.in_channels, outputs, **shape)
    with torch.no_grad():
        weight = new.weight
        bound = 1.0 / max(1, weight[0].numel()) ** 0.5
        weight.copy_(torch.empty_like(weight).uniform_(-bound, bound, generator=generator))
        if new.bias is not None:
            new.bias.zero_()
    setattr(parent, attribute, new.to(old.weight.device))
    return model


def feature_dim(model: nn.Module, img_size: int) -> int:
    """Width of the features a head-stripped model returns."""
    with torch.no_grad():
        was = model.training
        model.eval()
        device = next(model.parameters()).device
        out = model(torch.zeros(1, 3, img_size, img_size, device=device))
        model.train(was)
    return int(out.reshape(1, -1).shape[1])


def _select(wanted: Sequence[str], available: list[str], missing: str) -> list[str]:
    """``available`` narrowed to ``wanted`` (in the run's order); an unknown name is an
    error that lists what the run has."""
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise VeilError(f"{missing} {', '.join(unknown)}"
                        f" (it has {', '.join(name for name in available if name)})")
    return [name for name in available if name in wanted]
