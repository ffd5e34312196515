"""Several detectors as one: the union of their boxes, fused to one box per face.

Different networks miss different faces, so the ensemble keeps every face that any
member reports (at that member's own threshold) and fuses the boxes that several
members put on one face (weighted box fusion: their score-weighted mean; the score
is the best member's, or with ``score="mean"`` / ``"rms"`` the mean / root mean square
over members).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from veil.boxes import Box
from veil.detection.base import Detector, check_image, create_detector
from veil.detection.fusion import FUSIONS, SCORES, fuse
from veil.errors import VeilError

DEFAULT_MEMBERS = ("centerface", "mtcnn")


class EnsembleDetector:
    """``members`` (registered names) built with ``member_options[name]``, fused.

    ``fusion`` ('wbf' or 'nms') at ``fusion_iou``; ``weights`` per member (WBF only);
    ``threshold`` drops fused boxes below it; ``batch_size`` and ``threads`` go to
    every member.
    """

    name = "ensemble"

    def __init__(
        self,
        *,
        members: Sequence[str] = DEFAULT_MEMBERS,
        member_options: Mapping[str, Mapping[str, object]] | None = None,
        weights: Sequence[float] | None = None,
        fusion: str = "wbf",
        fusion_iou: float = 0.55,
        score: str = "max",
        threshold: float = 0.0,
        batch_size: int = 8,
        threads: int | None = None,
    ) -> None:
        members = tuple(members)
        if not members:
            raise VeilError("an ensemble needs at least one member detector")
        if "ensemble" in members:
            raise VeilError("an ensemble cannot contain itself")
        if len(set(members)) != len(members):
            raise VeilError(f"ensemble members must differ, got {', '.join(members)}")
        options = dict(member_options or {})
        unknown = sorted(set(options) - set(members))
        if unknown:
            raise VeilError(f"member_options for detectors not in the ensemble: {unknown}")
        if fusion not in FUSIONS:
            raise VeilError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        if score not in SCORES:
            raise VeilError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        if weights is not None and len(weights) != len(members):
            raise VeilError(f"need one weight per member ({len(members)}), got {len(weights)}")
        if not 0.0 < fusion_iou <= 1.0:
            raise VeilError(f"fusion_iou must be in (0, 1], got {fusion_iou}")
        if not 0.0 <= threshold < 1.0:
            raise VeilError(f"threshold must be in [0, 1), got {threshold}")
        self.members: list[Detector] = [
            create_detector(name, batch_size=batch_size, threads=threads,
                            **dict(options.get(name, {})))
            for name in members
        ]
        self.member_names = members
        self.member_options = {k: dict(v) for k, v in options.items()}
        self.weights = None if weights is None else [float(w) for w in weights]
        self.fusion = fusion
        self.fusion_iou = float(fusion_iou)
        self.score = score
        self.threshold = float(threshold)

    @property
    def options(self) -> dict[str, object]:
        return {
            "members": list(self.member_names), "member_options": self.member_options,
            "weights": self.weights, "fusion": self.fusion, "fusion_iou": self.fusion_iou,
            "score": self.score, "threshold": self.threshold,
        }

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        arrays = [check_image(image, index) for index, image in enumerate(images)]
        found = [member.detect(arrays) for member in self.members]
        out = []
        for index, image in enumerate(arrays):
            views = [
                np.array([[b.x0, b.y0, b.x1, b.y1, b.score or 0.0] for b in per_member[index]],
                         dtype=np.float64).reshape(-1, 5)
                for per_member in found
            ]
            merged = fuse(views, self.fusion, self.fusion_iou, weights=self.weights,
                          score=self.score)
            merged = merged[merged[:, 4] >= self.threshold]
            height, width = image.shape[:2]
            merged[:, [0, 2]] = np.clip(merged[:, [0, 2]], 0, width)
            merged[:, [1, 3]] = np.clip(merged[:, [1, 3]], 0, height)
            keep = (merged[:, 2] > merged[:, 0]) & (merged[:, 3] > merged[:, 1])
            out.append([
                Box(float(x0), float(y0), float(x1), float(y1), score=float(s), source=self.name)
                for x0, y0, x1, y1, s in merged[keep]
            ])
        return out
