"""Gold-standard checks as in the paper: known answers mixed into the work.

A gold image is shown like any other, sometimes with deliberately wrong boxes that
the annotator must fix. The answer passes when the pixel IoU of its union mask and
the truth's is at least the pass mark (0.72 in the paper), or when both are empty.
A failure costs a life and shows the correct answer; when the lives of a batch run
out, the batch restarts (its reviews are rejected, see :mod:`veil.store.review`).

Where gold comes from: a curator marks reviewed images as gold (``veil review gold
add KEYS``: their current answer becomes the truth) or loads trusted boxes from a
faces file (``veil review gold add --from faces.json``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from veil.boxes import Box
from veil.review.agreement import mask_iou
from veil.store.review import GoldItem


def grade(
    answer: Sequence[Box], truth: Sequence[Box], size: tuple[int, int], threshold: float
) -> tuple[bool, float]:
    """(passed, IoU) of an answer to a gold image; both empty is IoU 1 and a pass."""
    iou = mask_iou(answer, truth, size)
    return iou >= threshold, iou


def choose(
    items: Sequence[GoldItem], attempts: Mapping[str, int], rng: random.Random
) -> GoldItem:
    """A gold image the annotator has seen least often (random among those)."""
    fewest = min(attempts.get(item.key, 0) for item in items)
    return rng.choice([item for item in items if attempts.get(item.key, 0) == fewest])


def _clip(box: Box, width: int, height: int) -> Box | None:
    clipped = box.clipped(width, height)
    return None if clipped.is_degenerate else clipped


def _spurious(truth: Sequence[Box], width: int, height: int, rng: random.Random) -> Box:
    """A box where there is no face, about the size of the faces (or 1/5 of the image)."""
    if truth:
        side = max(8.0, sum(b.longer_side for b in truth) / len(truth))
    else:
        side = max(8.0, min(width, height) / 5)
    side = min(side, width / 2, height / 2)
    for _ in range(50):
        x0, y0 = rng.uniform(0, width - side), rng.uniform(0, height - side)
        box = Box(x0, y0, x0 + side, y0 + side)
        if all(box.iou(t) == 0 for t in truth):
            return box
    return Box(0, 0, side, side)


def _mistakes(
    truth: list[Box], width: int, height: int, rng: random.Random
) -> list[list[Box]]:
    """Candidate wrong versions of ``truth``, in random order: a face left out, a box
    shifted off its face or shrunk, a box where there is no face."""
    out: list[list[Box]] = []
    if truth:
        i = rng.randrange(len(truth))
        out.append(truth[:i] + truth[i + 1:])
        b = truth[i]
        dx = b.width * rng.choice((-0.7, 0.7))
        dy = b.height * rng.choice((-0.7, 0.7))
        shifted = _clip(Box(b.x0 + dx, b.y0 + dy, b.x1 + dx, b.y1 + dy), width, height)
        if shifted is not None:
            out.append([*truth[:i], shifted, *truth[i + 1:]])
        cx, cy = (b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2
        shrunk = Box(cx - b.width / 5, cy - b.height / 5, cx + b.width / 5, cy + b.height / 5)
        out.append([*truth[:i], shrunk, *truth[i + 1:]])
    out.append([*truth, _spurious(truth, width, height, rng)])
    rng.shuffle(out)
    return out


def wrong_boxes(
    truth: Sequence[Box], size: tuple[int, int], threshold: float, rng: random.Random
) -> list[Box]:
    """Deliberately wrong boxes for a gold image: wrong enough to fail if left as shown."""
    width, height = size
    truth = [Box(b.x0, b.y0, b.x1, b.y1) for b in truth]
    for candidate in _mistakes(truth, width, height, rng):
        if mask_iou(candidate, truth, size) < threshold:
            return candidate
    # Every single mistake still passes (a crowd: one face is a small share of the
    # mask). Leave out faces, in random order, until enough of the mask is missing.
    if truth:
        remaining = list(truth)
        for face in rng.sample(truth, len(truth)):
            remaining.remove(face)
            if mask_iou(remaining, truth, size) < threshold:
                return remaining
        return []
    return [Box(width / 4, height / 4, 3 * width / 4, 3 * height / 4)]


def shown_boxes(
    truth: Sequence[Box], size: tuple[int, int], *, wrong_rate: float, threshold: float,
    rng: random.Random,
) -> list[Box]:
    """What the annotator sees: the truth, or with probability ``wrong_rate`` a wrong version."""
    if rng.random() < wrong_rate:
        return wrong_boxes(truth, size, threshold, rng)
    return [Box(b.x0, b.y0, b.x1, b.y1) for b in truth]
