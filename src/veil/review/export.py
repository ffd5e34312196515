"""The review's answer per image, for ``veil review export``.

An image reviewed by people gets the aggregate of its *independent* answers: each
person's latest accepted answer, except that an answer made on top of another
person's review supersedes it (reviewer B opened A's 72 boxes, deleted 10 and saved:
the answer is B's 62, as the page and ``veil export-faces`` show). With one review per
image every save is made on top of the one before, so the newest answer is the
image's answer; with k > 1 each person starts from their own answer, and those are
combined (union by default; see :func:`veil.review.agreement.aggregate`). A gold
image gets its trusted boxes. With ``include_unreviewed`` every other image the
store has an answer for keeps its current boxes (detections or imports), so the
file can drive obfuscation of the whole dataset.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from veil.boxes import Box
from veil.interchange import write_faces
from veil.review.agreement import aggregate
from veil.review.settings import ReviewSettings
from veil.review.stats import latest_answers
from veil.store.review import ReviewLedger


def reviewed_faces(
    ledger: ReviewLedger, settings: ReviewSettings, *, min_reviews: int = 1,
    include_unreviewed: bool = False,
) -> dict[str, list[Box]]:
    """key -> boxes: aggregated reviews (images with >= ``min_reviews`` reviewers) and gold."""
    faces: dict[str, list[Box]] = {}
    for key, latest in latest_answers(ledger.iter_human_reviews()):
        if len(latest) >= min_reviews:
            answers = [r.boxes for r in sorted(latest.values(), key=lambda r: r.id)]
            faces[key] = aggregate(answers, settings.aggregate)
    for item in ledger.gold_items():
        faces[item.key] = list(item.boxes)
    if include_unreviewed:
        for key, boxes in _current(ledger):
            faces.setdefault(key, boxes)
    return dict(sorted(faces.items()))


def _current(ledger: ReviewLedger) -> Iterator[tuple[str, list[Box]]]:
    yield from ledger.store.iter_current_boxes()


def export_reviewed(
    ledger: ReviewLedger, settings: ReviewSettings, path: str | os.PathLike[str], fmt: str,
    *, min_reviews: int = 1, include_unreviewed: bool = False, flatten_val: bool = True,
) -> int:
    """Write :func:`reviewed_faces` as a faces file (paper, coco or parquet); returns images."""
    faces = reviewed_faces(ledger, settings, min_reviews=min_reviews,
                           include_unreviewed=include_unreviewed)
    images = None
    if fmt in ("coco", "parquet"):
        images = {rec.key: rec for rec in ledger.store.images(list(faces))}
    return write_faces(faces, path, fmt, images=images, flatten_val=flatten_val)
