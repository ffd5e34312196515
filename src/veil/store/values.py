"""How Python values become the store's column values and back: UTC timestamps and boxes.

Shared by :mod:`veil.store.store` and the review ledger (:mod:`veil.store.review`), so
both write timestamps and box rows the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from veil.boxes import Box

#: A box's columns in the detections and review-box tables, in :class:`Box` field order.
BOX_COLUMNS: tuple[str, ...] = ("x0", "y0", "x1", "y1", "score", "source")


def utcnow() -> datetime:
    """The current time, UTC-aware (the store refuses naive datetimes)."""
    return datetime.now(UTC)


def box_row(box: Box, default_source: str | None = None) -> dict[str, Any]:
    """Column values of a box; floats are forced to Python floats (numpy ones do not bind)."""
    return {
        "x0": float(box.x0), "y0": float(box.y0), "x1": float(box.x1), "y1": float(box.y1),
        "score": None if box.score is None else float(box.score),
        "source": box.source if box.source is not None else default_source,
    }


def group_boxes(rows: Iterable[Any]) -> Iterator[tuple[Any, list[Box]]]:
    """Rows (group, x0, y0, x1, y1, score, source), sorted by group -> (group, boxes).

    A row with NULL coordinates stands for an image with an answer and no boxes.
    """
    current: Any = None
    boxes: list[Box] = []
    started = False
    for group, x0, y0, x1, y1, score, source in rows:
        if not started or group != current:
            if started:
                yield current, boxes
            current, boxes, started = group, [], True
        if x0 is not None:
            boxes.append(Box(x0, y0, x1, y1, score, source))
    if started:
        yield current, boxes
