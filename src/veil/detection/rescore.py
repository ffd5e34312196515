"""A fused box's score from what its views say about it, by a small fitted model.

Weighted box fusion (:mod:`veil.detection.fusion`) reduces a face's views to one
number (the mean or root mean square of their scores). A cluster carries more than
that: how many of the views saw it, how confident the best one was, at what scale the
best one saw it, and the box's own size and shape. False positives differ from faces
in these (a blip seen by one upsampled view at a low score; a large box seen weakly
at every scale) more than in the mean score alone, so a logistic model over a handful
of them, fitted on training images only (``benchmarks/detect_cv.py``,
``fit_rescorer``), may rank boxes better than the fused score; the profile's threshold
is then set on its probability.

:class:`Rescorer` holds the fitted numbers (features standardised into the
coefficients) and applies them with numpy: nothing is fitted at run time and
scikit-learn is not needed there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from veil.detection.fusion import score_votes
from veil.errors import VeilError

#: The features a :class:`Rescorer` may use, each a column of :func:`box_features`.
FEATURES = ("logit_rms", "logit_max", "mean", "seen", "log_height", "log_scale",
            "log_aspect")
#: Scores are clipped this far from 0 and 1 before their logit.
_EPS = 1e-4


def box_features(
    boxes: np.ndarray,
    votes: np.ndarray,
    view_scales: Sequence[float],
    width: int,
    height: int,
    names: Sequence[str] = FEATURES,
) -> np.ndarray:
    """``(k, len(names))`` features of fused boxes ``(k, >= 4)`` and their ``votes``
    (each view's best score in the cluster, ``(k, n_views)``, 0: missed):

    - ``logit_rms``: the logit of the root mean square of the views' scores (WBF's
      'rms', a missing view counts 0);
    - ``logit_max``: the logit of the best view's score;
    - ``mean``: the mean score over views (a missing view counts 0; WBF's 'mean');
    - ``seen``: the share of views that saw the box;
    - ``log_height``: log of the box's height over the image's height;
    - ``log_scale``: log2 of the pixels per source pixel of the view that scored it
      best (``view_scales``, one per view);
    - ``log_aspect``: log of the box's width over its height.
    """
    _check_names(names)
    boxes = np.asarray(boxes, dtype=np.float64)
    votes = np.asarray(votes, dtype=np.float64)
    scales = np.asarray(view_scales, dtype=np.float64)
    if votes.shape != (len(boxes), len(scales)):
        raise VeilError(f"need votes of shape (boxes, views) = ({len(boxes)}, {len(scales)}), "
                        f"got {votes.shape}")
    if len(boxes) == 0:
        return np.empty((0, len(names)))
    best = np.clip(votes.max(axis=1), _EPS, 1 - _EPS)
    box_w = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-3)
    box_h = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-3)
    rms = np.clip(score_votes(votes, "rms"), _EPS, 1 - _EPS)  # WBF's own scores
    columns = {
        "logit_rms": lambda: np.log(rms / (1 - rms)),
        "logit_max": lambda: np.log(best / (1 - best)),
        "mean": lambda: score_votes(votes, "mean"),
        "seen": lambda: (votes > 0).mean(axis=1),
        "log_height": lambda: np.log(box_h / max(height, 1)),
        "log_scale": lambda: np.log2(scales[np.argmax(votes, axis=1)]),
        "log_aspect": lambda: np.log(box_w / box_h),
    }
    return np.stack([columns[name]() for name in names], axis=1)


def _check_names(names: Sequence[str]) -> None:
    unknown = sorted(set(names) - set(FEATURES))
    if unknown:
        raise VeilError(f"unknown rescoring features {unknown}; known: {', '.join(FEATURES)}")


@dataclass(frozen=True)
class Rescorer:
    """A logistic model over :func:`box_features`: ``sigmoid(features @ coef +
    intercept)`` is a fused box's new score. Boxes whose fused score is below
    ``floor`` are dropped first (the fitting never saw them)."""

    features: tuple[str, ...]
    coef: tuple[float, ...]
    intercept: float
    floor: float = 0.0

    def __post_init__(self) -> None:
        if len(self.features) != len(self.coef):
            raise VeilError(f"rescoring needs one coefficient per feature, got "
                            f"{len(self.coef)} for {len(self.features)}")
        _check_names(self.features)
        if not all(math.isfinite(c) for c in (*self.coef, self.intercept, self.floor)):
            raise VeilError("rescoring coefficients must be finite numbers")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Rescorer:
        """From a profile's ``rescore`` dict (:meth:`options`)."""
        try:
            return cls(tuple(options["features"]), tuple(float(c) for c in options["coef"]),
                       float(options["intercept"]), float(options.get("floor", 0.0)))
        except (KeyError, TypeError, ValueError) as error:
            raise VeilError(f"rescore needs features, coef and intercept; got {options!r}"
                            ) from error

    def options(self) -> dict[str, Any]:
        return {"features": list(self.features), "coef": list(self.coef),
                "intercept": self.intercept, "floor": self.floor}

    def __call__(self, boxes: np.ndarray, votes: np.ndarray, view_scales: Sequence[float],
                 width: int, height: int) -> np.ndarray:
        """New scores of ``boxes`` (one per row)."""
        x = box_features(boxes, votes, view_scales, width, height, self.features)
        z = x @ np.asarray(self.coef, dtype=np.float64) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))
