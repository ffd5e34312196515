"""Named detection profiles: CenterFace with test-time augmentation, tuned once, by name.

``fast`` costs about what deface costs and finds more faces; ``thorough`` trades time
for recall. Both are :class:`~veil.detection.multiscale.MultiScaleDetector` settings
over CenterFace (RGB input, as deface feeds it: fed BGR the same network loses a third
of its recall on WIDER FACE). The settings and why (measured on the 97 WIDER FACE
validation images in ``shared/``, the only images they were chosen on; see
``benchmarks/detect.py`` for the numbers and their sensitivity):

- ``box_scale``: a profile's boxes are reshaped (width, height about the centre) into
  the annotation convention. Plain CenterFace's boxes are ~1.1x wider and ~0.85x as
  tall as annotated face boxes at every face size (median width ratios 1.09-1.17,
  height ratios 0.82-0.90 over the four height bins), so ``fast`` uses the rounded
  inverses (0.9, 1.2). ``thorough``'s fused boxes have another shape: its stretched
  views undo most of that bias (median ratios 1.02-1.06 wide, 0.92-1.03 tall by
  size), so it uses (0.97, 1.03); with (0.9, 1.2) its boxes were a fifth too tall and
  many small faces missed IoU 0.5 (recall 0.845 at best at precision >= 0.8).
- ``fast``: one view at 1.15x (rounded to CenterFace's 32 px grid): the speed veil's
  batched CenterFace has over deface is spent on ~1.3x the pixels, which small faces
  need most; threshold 0.2, deface's.
- ``thorough``: scales 1x and 2x, each also stretched in width (1.5x, 2.25x) and in
  height (1.5x, 2.25x), with their mirror images: 20 views, each reporting boxes from
  0.05 up, merged by weighted box fusion at IoU 0.55 (the WBF paper's default). The
  stretched views (aspect TTA, both directions so no direction is assumed) show the
  network faces at other proportions: more plain scales stopped helping (seven scales
  1x-3x reached recall 0.81 at precision 0.8). A face's score is the root mean square
  of the views' scores: a face that k of the 20 views see at score s gets
  s * sqrt(k / 20), so a real face seen by most views keeps a high score and a blip
  one view reports drops to a fifth, while a small face that only the upsampled views
  can see is not halved for it (the plain mean would). Views that disagree on a
  face's shape can leave two clusters on it: a last NMS at IoU 0.3 keeps the stronger
  (one box per face; it also lifts precision, a misshapen duplicate is a false alarm).
  Threshold 0.16: on WIDER, recall is 0.853-0.856 for any threshold from 0.155 to
  0.165 (precision 0.81-0.84), where the mean-score recipe held 0.85 only at one
  threshold. Most of the remaining misses are 16-24 px faces that a few views find
  weakly.
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
        "scales": (1.15,),
        "flip": False,
        "threshold": 0.2,
        "candidate_threshold": 0.2,
        "fusion": "wbf",
        "fusion_iou": 0.55,
        "box_scale": (0.9, 1.2),
        "source": "fast",
    },
    "thorough": {
        "base": "centerface",
        "scales": (1.0, 2.0),
        "aspects": (1.0, 1.5, 1 / 1.5, 2.25, 1 / 2.25),
        "flip": True,
        "threshold": 0.16,
        "candidate_threshold": 0.05,
        "fusion": "wbf",
        "fusion_iou": 0.55,
        "fusion_score": "rms",
        "dedupe_iou": 0.3,
        "box_scale": (0.97, 1.03),
        "source": "thorough",
    },
}


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
    if "views" in PROFILES[profile] and any(
            overrides.get(k) is not None for k in ("scales", "aspects", "flip")):
        # The user's scales / flip describe the views afresh: the profile's list yields.
        options.pop("views")
    if options["base"] != "centerface" and "box_scale" not in overrides:
        options["box_scale"] = (1.0, 1.0)
    return options


def create_profile(profile: str, **overrides: Any) -> MultiScaleDetector:
    """Build the detector of ``profile`` (``create_detector(profile)`` does the same)."""
    return MultiScaleDetector(**profile_options(profile, **overrides))


def fast(**overrides: Any) -> MultiScaleDetector:
    return create_profile("fast", **overrides)


def thorough(**overrides: Any) -> MultiScaleDetector:
    return create_profile("thorough", **overrides)
