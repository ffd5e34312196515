"""Training recipes by name: the paper's, and a quick one sized for two CPU cores.

A :class:`Recipe` is everything that decides what a training run computes, so it is
what ``study.json`` records as ``hyper`` and what a resumed study must match. The
``paper`` profile is the paper's recipe exactly (torchvision's reference ImageNet
script: SGD momentum 0.9, weight decay 1e-4, batch 256, lr x batch/256 divided by 10
every 30 of 90 epochs, RandomResizedCrop(224) + flip, Resize(256) + CenterCrop(224)),
with the rate per architecture (:data:`PAPER_ARCH_LR`: 0.01 for AlexNet and VGG, 0.1
for the rest) and the paper's seeds and methods (:data:`PROFILE_DEFAULTS`).
The ``quick`` profile trades resolution and epochs for time; the measurements behind
its numbers are in :data:`QUICK_MEASUREMENTS`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from veil.errors import VeilError

SCHEDULES = ("step", "onecycle")
PRECISIONS = ("fp32", "bf16")
LOADERS = ("cache", "stream")
PROFILES = ("quick", "paper")


@dataclass(frozen=True)
class Recipe:
    """One training + evaluation recipe. ``lr`` is the rate for a batch of 256; the
    rate used is ``lr * batch_size / 256`` (the linear scaling rule the paper's
    script follows), so changing ``--batch-size`` keeps the recipe's meaning."""

    profile: str
    archs: tuple[str, ...]  # default architectures of the profile
    epochs: int
    img_size: int  # training crop and evaluation crop side
    eval_resize: int  # evaluation: Resize(eval_resize) then CenterCrop(img_size)
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    schedule: str = "step"  # "step": x gamma every step_epochs; "onecycle": per iteration
    step_epochs: int = 30
    gamma: float = 0.1
    warmup_fraction: float = 0.25  # onecycle: share of iterations spent warming up
    label_smoothing: float = 0.0
    min_crop_scale: float = 0.08  # RandomResizedCrop scale=(min_crop_scale, 1)
    loader: str = "stream"  # "stream": decode + PIL transforms per step; "cache": uint8
    #                         squares of side eval_resize, decoded once (veil.study.data)
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    val_every: int = 1  # evaluate on the val split every N epochs (0: the last only)
    arch_lr: tuple[tuple[str, float], ...] = ()  # (arch, lr for a batch of 256) that
    #                                              replace ``lr`` for those archs

    @property
    def effective_lr(self) -> float:
        return self.lr * self.batch_size / 256

    def lr_for(self, arch: str) -> float:
        """The rate (batch of 256) ``arch`` trains at: its row of ``arch_lr``, else ``lr``."""
        return dict(self.arch_lr).get(arch, self.lr)

    def for_arch(self, arch: str) -> Recipe:
        """This recipe as one architecture trains: ``lr`` is that arch's rate."""
        return dataclasses.replace(self, lr=self.lr_for(arch))

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["archs"] = list(self.archs)
        out["arch_lr"] = dict(self.arch_lr)
        out["effective_lr"] = self.effective_lr
        return out

    def training_fields(self) -> dict[str, Any]:
        """What decides a training run's result: everything but the default archs."""
        out = self.to_json()
        out.pop("archs")
        if not out["arch_lr"]:
            out.pop("arch_lr")  # as studies recorded it before per-arch rates existed
        return out


# Chosen by measurement on this project's 2-core AMD EPYC (see QUICK_MEASUREMENTS).
QUICK = Recipe(
    profile="quick",
    archs=("resnet18",),
    epochs=10,
    img_size=64,
    eval_resize=73,  # 64 / 0.875, the paper's 224/256 ratio
    batch_size=128,
    lr=0.8,  # x 128/256 = 0.4 peak of the one-cycle schedule
    weight_decay=5e-5,
    nesterov=True,
    schedule="onecycle",
    warmup_fraction=0.25,
    label_smoothing=0.1,
    min_crop_scale=0.35,
    loader="cache",
    precision="bf16",
    channels_last=True,
    compile=False,
    val_every=0,
)

#: The paper's rate per architecture, for a batch of 256 (the rest train at 0.1).
#: The authors' trainval.py "is based on an example from PyTorch with only minor changes"
#: (princetonvisualai/imagenet-face-obfuscation@52d6d78, README.md line 43) and keeps
#: its default ``--lr 0.1`` (experiments/trainval.py, the ``--lr`` argument); that
#: example's README says 0.1 "is appropriate for ResNet and models with batch
#: normalization, but too high for AlexNet and VGG. Use 0.01 as the initial learning
#: rate for AlexNet or VGG" (pytorch/examples@37ce940, imagenet/README.md line 20).
PAPER_ARCH_LR: tuple[tuple[str, float], ...] = (
    # The authors' README trains AlexNet with --learning_rate 0.01 (README.md line 63);
    # pytorch/examples imagenet/README.md line 20 (and its line 23: -a alexnet --lr 0.01).
    ("alexnet", 0.01),
    # VGG (no batch norm): pytorch/examples imagenet/README.md line 20, "0.01 ... for
    # AlexNet or VGG", which the authors' README (line 43) refers to for the options.
    ("vgg11", 0.01),
    ("vgg13", 0.01),  # same source: pytorch/examples imagenet/README.md line 20
    ("vgg16", 0.01),  # same source: pytorch/examples imagenet/README.md line 20
    ("vgg19", 0.01),  # same source: pytorch/examples imagenet/README.md line 20
    # Every other architecture keeps ``lr`` = 0.1: trainval.py's default; the authors'
    # README runs resnet18 (line 46), resnet50 (line 50) and resnet152 (line 68) with
    # --learning-rate 0.1; pytorch/examples imagenet/README.md line 20 ("appropriate for
    # ResNet and models with batch normalization").
)

PAPER = Recipe(
    profile="paper",
    archs=(
        "alexnet", "squeezenet1_0", "shufflenet_v2_x1_0", "vgg11", "vgg13", "vgg16", "vgg19",
        "mobilenet_v2", "densenet121", "densenet201", "resnet18", "resnet34", "resnet50",
        "resnet101", "resnet152",
    ),
    epochs=90,
    img_size=224,
    eval_resize=256,
    batch_size=256,
    lr=0.1,
    schedule="step",
    step_epochs=30,
    gamma=0.1,
    loader="stream",
    precision="fp32",
    val_every=1,
    arch_lr=PAPER_ARCH_LR,
)

PROFILE_RECIPES = {"quick": QUICK, "paper": PAPER}


@dataclass(frozen=True)
class StudyDefaults:
    """What a profile studies when the command line does not say: seeds and methods."""

    seeds: tuple[int, ...]
    methods: tuple[str, ...]


#: The paper: three runs per model (Table 3's mean +- SD over 3 seeds), numbered 1-3,
#: and both obfuscations (Table 3: blur; Table B: overlay). Every condition the paper
#: reports is in each study: train original / eval original, train M / eval M, and
#: train M / eval original (the authors' --blur-train without --blur-val).
PROFILE_DEFAULTS = {
    "quick": StudyDefaults(seeds=(0,), methods=("blur",)),
    "paper": StudyDefaults(seeds=(1, 2, 3), methods=("blur", "overlay")),
}

#: What the quick profile's choice rests on (2-core AMD EPYC with avx512_bf16, torch
#: 2.14.1, other jobs sharing the cores; throughput in CPU time of one thread, which
#: such sharing disturbs least). Imagenette: 9,469 train / 3,925 val images.
QUICK_MEASUREMENTS: dict[str, Any] = {
    "resnet18 train step, img/s per core (64 px, batch 64)": {
        "fp32": 86.4, "fp32 channels_last": 100.7, "bf16": 153.7, "bf16 channels_last": 175.0,
    },
    "resnet18 bf16 channels_last img/s per core by size": {
        64: 175.8, 80: 110.7, 96: 85.9, 112: 66.0, 128: 51.3,
    },
    "other archs at 64 px, bf16 channels_last, img/s per core": {
        "resnet34": 91.4, "resnet50": 64.8,
    },
    "SGD step, resnet18, seconds": {"default": 0.047, "foreach": 0.023, "fused": 0.007},
    "torch.compile (inductor, CPU)": "165 img/s per core vs 186 eager, 59 s to compile: off",
    "two threads vs two single-thread jobs": (
        "with other programs on the cores, 2-thread OpenMP steps stalled (10-70 img/s "
        "wall); two trainings in parallel, one thread each, kept ~110-170 img/s each"),
    "trials (one training, 1 thread, cores shared with a second trial)": {
        "64 px x 12 epochs": {"top1": 0.7725, "seconds": 1041},
        "80 px x 8 epochs": {"top1": 0.7225, "seconds": 1097},
    },
    "test-time size for the 64 px model (crop/resize)": {
        "64/73": 0.7725, "72/82": 0.7068, "80/91": 0.7447,
    },
    "cache build (decode 13,394 JPEGs at 73 px, 2 processes)": "6-16 s",
    "this profile, one seed, original vs blur (veil study ... --profile quick)": {
        "wall seconds": 838, "cpu share": "130% of 2 cores (other jobs running)",
        "epoch seconds": "52 quiet, up to 112 shared", "train-original/eval-original": 0.7592,
        "train-blur/eval-blur": 0.7409, "train-blur/eval-original": 0.7381,
    },
}

_OVERRIDABLE = {f.name for f in dataclasses.fields(Recipe)} - {"profile"}


def resolve_recipe(profile: str, **overrides: Any) -> Recipe:
    """The named profile with the given fields replaced (``None`` values are ignored).

    Overriding ``img_size`` alone rescales ``eval_resize`` by the profile's ratio, so
    ``--img-size 96`` still means "Resize(110) + CenterCrop(96)".
    """
    try:
        base = PROFILE_RECIPES[profile]
    except KeyError:
        raise VeilError(
            f"unknown profile {profile!r}; choose one of {', '.join(PROFILE_RECIPES)}"
        ) from None
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - _OVERRIDABLE
    if unknown:
        raise VeilError(f"unknown recipe field(s): {', '.join(sorted(unknown))}")
    if "archs" in given:
        given["archs"] = tuple(given["archs"])
    # --lr replaces every arch's rate; --lr-for (arch_lr) then sets single archs.
    table = {} if "lr" in given else dict(base.arch_lr)
    table.update(dict(given.pop("arch_lr", {})))
    given["arch_lr"] = tuple(sorted(table.items()))
    if "img_size" in given:
        ratio = base.eval_resize / base.img_size
        given.setdefault("eval_resize", round(given["img_size"] * ratio))
    recipe = dataclasses.replace(base, **given)
    check_recipe(recipe)
    return recipe


def check_recipe(recipe: Recipe) -> None:
    """Refuse recipes that cannot run, with the reason."""
    problems = []
    if recipe.schedule not in SCHEDULES:
        problems.append(f"schedule must be one of {', '.join(SCHEDULES)}")
    if recipe.precision not in PRECISIONS:
        problems.append(f"precision must be one of {', '.join(PRECISIONS)}")
    if recipe.loader not in LOADERS:
        problems.append(f"loader must be one of {', '.join(LOADERS)}")
    if recipe.epochs < 1:
        problems.append("epochs must be >= 1")
    if recipe.batch_size < 1:
        problems.append("batch size must be >= 1")
    if recipe.img_size < 8:
        problems.append("img size must be >= 8")
    if recipe.eval_resize < recipe.img_size:
        problems.append("eval resize must be >= img size (it is center-cropped to img size)")
    if not 0 < recipe.min_crop_scale <= 1:
        problems.append("min crop scale must be in (0, 1]")
    if recipe.lr <= 0 or any(lr <= 0 for _, lr in recipe.arch_lr):
        problems.append("lr must be > 0")
    if not 0 <= recipe.label_smoothing < 1:
        problems.append("label smoothing must be in [0, 1)")
    if problems:
        raise VeilError("invalid recipe: " + "; ".join(problems))
