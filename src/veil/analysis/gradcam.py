"""Grad-CAM of the original and the obfuscated model on the same validation images.

Where does each model look? The paper's appendix shows that models trained on blurred
faces attend to the same object evidence. One grid per method: for each image with
faces, the original image with the original model's Grad-CAM, and the obfuscated image
with the obfuscated model's, both for the true class. Models are torchvision archs by
name with RUN's ``model.pt`` weights; Grad-CAM comes from the ``grad-cam`` package
(``pytorch_grad_cam``). Without torch, the package, or the weights, it is skipped with a
note saying why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from veil.analysis.examples import Example, obfuscated, pick_examples
from veil.analysis.plots import image_grid
from veil.analysis.run import ORIGINAL, StudyRun
from veil.errors import VeilError
from veil.study.layout import RUNS_DIR

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CROP_KEYS = ("eval_crop", "eval_crop_size", "val_crop_size", "crop_size", "img_size",
              "image_size")
_RESIZE_KEYS = ("eval_resize", "eval_resize_size", "val_resize_size", "resize_size")


@dataclass
class GradcamResult:
    status: str  # "done" or "skipped"
    note: str
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "note": self.note, "files": self.files}


def target_layer(model: Any, arch: str) -> Any:
    """The last convolutional block, per torchvision family; else the last Conv2d."""
    import torch.nn as nn

    name = arch.lower()
    if name.startswith(("resnet", "resnext", "wide_resnet")):
        return model.layer4[-1]
    if name.startswith("shufflenet"):
        return model.conv5
    if name.startswith("regnet"):
        return model.trunk_output[-1]
    if name.startswith("mnasnet"):
        return model.layers[-1]
    if name.startswith("googlenet"):
        return model.inception5b
    if name.startswith("inception"):
        return model.Mixed_7c
    if name.startswith(("vgg", "alexnet", "densenet", "mobilenet", "squeezenet",
                        "efficientnet", "convnext")):
        return model.features[-1]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise VeilError(f"{arch} has no convolution layer for Grad-CAM")
    return convs[-1]


def load_model(arch: str, weights: Path, num_classes: int) -> Any:
    """A torchvision model by name with the run's weights (DDP/compile prefixes removed)."""
    import torch
    import torchvision

    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        cleaned[key] = value
    model.load_state_dict(cleaned)
    return model.eval()


def eval_sizes(hyper: dict[str, Any]) -> tuple[int, int]:
    """(resize, crop) of the study's evaluation transform; 256/224 as in the paper."""
    crop = next((int(hyper[k]) for k in _CROP_KEYS if hyper.get(k)), 224)
    resize = next((int(hyper[k]) for k in _RESIZE_KEYS if hyper.get(k)),
                  round(crop / 0.875))
    return resize, crop


def _preprocess(image: Any, resize: int, crop: int, mean: Any, std: Any) -> tuple[Any, Any]:
    import torchvision.transforms.functional as tf

    shown = tf.center_crop(tf.resize(image, resize), crop)
    tensor = tf.normalize(tf.to_tensor(shown), mean, std)
    return tensor, np.asarray(shown, dtype=np.float32) / 255.0


def gradcam_grids(run: StudyRun, out_dir: Path, *, images: int = 6,
                  archs: list[str] | None = None, faces: str | None = None) -> GradcamResult:
    """One grid PNG per method (for the first arch, or each of ``archs``, that has both
    models at a common seed)."""
    try:
        import torch
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.image import show_cam_on_image
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as exc:
        return GradcamResult("skipped", f"Grad-CAM needs torch, torchvision and grad-cam "
                                        f"(pip install 'veil[study]'): {exc}")
    jobs = _jobs(run, archs)
    if not jobs:
        return GradcamResult("skipped", "no model.pt for both the original and an obfuscated "
                                        "model of one arch and seed: Grad-CAM skipped")
    try:
        examples, _ = pick_examples(run, images, faces)
    except VeilError as exc:
        return GradcamResult("skipped", f"Grad-CAM skipped: {exc}")
    hyper = dict(run.study.get("hyper") or {})
    resize, crop = eval_sizes(hyper)
    mean = tuple(hyper.get("mean") or IMAGENET_MEAN)
    std = tuple(hyper.get("std") or IMAGENET_STD)
    names = run.class_names()
    files: list[str] = []
    for arch, seed, method in jobs:
        models = {side: load_model(arch, run.model_path(arch, seed, train), run.num_classes)
                  for side, train in (("original", ORIGINAL), ("obfuscated", method))}
        rows, labels = [], []
        for example in examples:
            row, label = _example_row(example, run, method, models, arch, resize, crop, mean,
                                      std, names, torch, GradCAM, ClassifierOutputTarget,
                                      show_cam_on_image)
            rows.append(row)
            labels.append(label)
        path = out_dir / f"gradcam_{arch}_{method}.png"
        image_grid(rows, ["original", f"original model (seed {seed})", method,
                          f"{method} model (seed {seed})"], labels, path)
        files.append(path.name)
    note = (f"Grad-CAM for the true class at the last convolutional block; eval transform "
            f"resize {resize}, crop {crop}. Row labels: the true class, then the predictions "
            f"of the original / the obfuscated model")
    return GradcamResult("done", note, files)


def _jobs(run: StudyRun, archs: list[str] | None) -> list[tuple[str, int, str]]:
    """(arch, seed, method) with both model.pt files, the lowest seed per arch."""
    jobs = []
    candidates = archs or sorted({p.name for p in (run.root / RUNS_DIR).glob("*")
                                  if p.is_dir()}, key=_arch_order(run))
    for method in run.methods:
        for arch in candidates:
            seeds = sorted(int(p.name[4:]) for p in (run.root / RUNS_DIR / arch).glob("seed*")
                           if p.name[4:].isdigit())
            seeds = [s for s in seeds if run.model_path(arch, s, ORIGINAL).is_file()
                     and run.model_path(arch, s, method).is_file()]
            if seeds:
                jobs.append((arch, seeds[0], method))
                if archs is None:
                    break
    return jobs


def _arch_order(run: StudyRun) -> Any:
    listed = list(run.study.get("archs") or [])
    return lambda a: (listed.index(a) if a in listed else len(listed), a)


def _example_row(example: Example, run: StudyRun, method: str, models: dict[str, Any],
                 arch: str, resize: int, crop: int, mean: Any, std: Any, names: list[str],
                 torch: Any, gradcam_cls: Any, target_cls: Any, overlay: Any
                 ) -> tuple[list[np.ndarray], str]:
    row: list[np.ndarray] = []
    predictions = []
    for side, image in (("original", example.original),
                        ("obfuscated", obfuscated(example, run, method))):
        tensor, shown = _preprocess(image, resize, crop, mean, std)
        model = models[side]
        with torch.no_grad():
            predictions.append(int(model(tensor[None]).argmax(1)))
        with gradcam_cls(model=model, target_layers=[target_layer(model, arch)]) as cam:
            heat = cam(input_tensor=tensor[None], targets=[target_cls(example.label)])[0]
        row += [(shown * 255).astype(np.uint8), overlay(shown, heat, use_rgb=True)]
    label = (f"{names[example.label]}\npred: {names[predictions[0]]} / "
             f"{names[predictions[1]]}")
    return row, label
