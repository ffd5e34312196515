"""Comparing and combining people's answers: pixel IoU of union masks, aggregation.

An answer is the list of boxes one person gave for an image. Two answers agree as
much as the pixels they cover do: the paper grades gold answers by the IoU of the
union masks (so one box around two faces and two boxes around them can both pass).
A pixel is covered when its centre lies inside a box.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from veil.boxes import Box

Answer = Sequence[Box]

#: Boxes of different people for the same face overlap at least this much (box IoU).
SAME_FACE_IOU = 0.5


def _span(lo: float, hi: float) -> tuple[int, int]:
    """Pixel indices whose centres lie in [lo, hi)."""
    return math.ceil(lo - 0.5), math.ceil(hi - 0.5)


def mask_iou(a: Answer, b: Answer, size: tuple[int, int] | None = None) -> float:
    """IoU of the pixels covered by ``a`` and by ``b`` (1.0 when both cover nothing).

    ``size`` (width, height) clips to the image; only the region the boxes reach is
    rasterised, so huge images cost no more than small ones.
    """
    boxes = [box for box in (*a, *b) if not box.is_degenerate]
    if not boxes:
        return 1.0
    left, right = _span(min(x.x0 for x in boxes), max(x.x1 for x in boxes))
    top, bottom = _span(min(x.y0 for x in boxes), max(x.y1 for x in boxes))
    if size is not None:
        left, top = max(left, 0), max(top, 0)
        right, bottom = min(right, size[0]), min(bottom, size[1])
    if right <= left or bottom <= top:
        return 1.0
    masks = []
    for answer in (a, b):
        mask = np.zeros((bottom - top, right - left), dtype=bool)
        for box in answer:
            if box.is_degenerate:
                continue
            x0, x1 = _span(box.x0, box.x1)
            y0, y1 = _span(box.y0, box.y1)
            mask[max(y0 - top, 0):max(y1 - top, 0), max(x0 - left, 0):max(x1 - left, 0)] = True
        masks.append(mask)
    union = np.count_nonzero(masks[0] | masks[1])
    if union == 0:
        return 1.0
    return float(np.count_nonzero(masks[0] & masks[1]) / union)


def faces_of(answers: Sequence[Answer], same_face_iou: float = SAME_FACE_IOU) -> list[list[Box]]:
    """Group the boxes of several answers into faces: boxes of different answers that
    overlap (box IoU >= ``same_face_iou``) are one face; each group holds at most one
    box per answer. Greedy, largest overlap first."""
    faces: list[list[Box]] = []
    owners: list[set[int]] = []
    for who, answer in enumerate(answers):
        for box in answer:
            best, best_iou = None, same_face_iou
            for i, face in enumerate(faces):
                if who in owners[i]:
                    continue
                overlap = max(box.iou(other) for other in face)
                if overlap >= best_iou:
                    best, best_iou = i, overlap
            if best is None:
                faces.append([box])
                owners.append({who})
            else:
                faces[best].append(box)
                owners[best].add(who)
    return faces


def aggregate(answers: Sequence[Answer], policy: str = "union") -> list[Box]:
    """One answer from several.

    union: every face anyone marked, as the smallest box covering everyone's box
    for it (privacy prefers over-coverage). majority: the faces at least half of
    the answers marked, as the mean of their boxes.
    """
    if policy not in ("union", "majority"):
        raise ValueError(f"aggregation policy must be union or majority, got {policy!r}")
    if len(answers) == 1:
        return [Box(b.x0, b.y0, b.x1, b.y1) for b in answers[0]]
    out = []
    for face in faces_of(answers):
        if policy == "union":
            out.append(Box(min(b.x0 for b in face), min(b.y0 for b in face),
                           max(b.x1 for b in face), max(b.y1 for b in face)))
        elif 2 * len(face) >= len(answers):
            n = len(face)
            out.append(Box(sum(b.x0 for b in face) / n, sum(b.y0 for b in face) / n,
                           sum(b.x1 for b in face) / n, sum(b.y1 for b in face) / n))
    return sorted(out, key=lambda b: (b.y0, b.x0))


def pairwise_ious(answers: Sequence[Answer]) -> list[float]:
    """Mask IoU of every pair of answers."""
    return [mask_iou(a, b) for a, b in itertools.combinations(answers, 2)]
