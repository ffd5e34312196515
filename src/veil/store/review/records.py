"""What the review ledger hands back: plain, frozen records (no database handles)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from veil.boxes import Box
from veil.store.records import ReviewRecord
from veil.store.review.annotators import MACHINE_PREFIX

#: Given a key and its human reviews, (annotator, boxes, note) of a row for veil to append
#: right after a save (a consensus), or None.
FollowUp = Callable[[str, list["HumanReview"]], "tuple[str, Sequence[Box], dict[str, Any]] | None"]


def boxes_to_json(boxes: Iterable[Box]) -> list[list[float]]:
    return [[float(b.x0), float(b.y0), float(b.x1), float(b.y1)] for b in boxes]


def boxes_from_json(rows: Iterable[Sequence[float]] | None) -> tuple[Box, ...]:
    return tuple(
        Box(float(x0), float(y0), float(x1), float(y1)) for x0, y0, x1, y1, *_ in rows or ()
    )


@dataclass(frozen=True)
class Batch:
    id: int
    annotator: str
    status: str
    size: int
    lives_left: int
    served: int
    answered: int


@dataclass(frozen=True)
class GoldItem:
    id: int
    key: str
    boxes: tuple[Box, ...]
    source: str | None
    created_at: datetime


@dataclass(frozen=True)
class GoldAttempt:
    id: int
    batch_id: int
    gold_id: int
    key: str
    annotator: str
    shown: tuple[Box, ...]
    truth: tuple[Box, ...]
    answered: bool
    passed: bool | None
    iou: float | None


@dataclass(frozen=True)
class HumanReview:
    """A person's review as the review session sees it."""

    id: int
    key: str
    annotator: str
    created_at: datetime
    seconds: float | None
    boxes: tuple[Box, ...]
    rejected: bool  # saved in a batch that failed its gold checks
    #: the reviews this one was made on top of (what its author saw): the review the
    #: client started from, or what a restore or consensus row it started from repeats
    parents: tuple[int, ...] = ()


@dataclass(frozen=True)
class Conflict:
    """A save refused: ``latest`` is newer than the review the client started from
    (None: the review it started from was rejected and nothing newer exists)."""

    latest: ReviewRecord | None


@dataclass(frozen=True)
class GradeResult:
    batch: Batch
    restored: tuple[str, ...]  # keys whose current answer was put back after a failed batch
    set_aside: int = 0  # the annotator's answers the failed batch set aside


@dataclass(frozen=True)
class FailedBatch:
    """A batch that failed its gold checks, and what became of its answers."""

    id: int
    annotator: str
    ended_at: datetime | None
    set_aside: int  # the annotator's answers saved in it (now rejected)
    images: int
    reinstated_at: datetime | None  # when a curator put them back (None: not yet)


@dataclass(frozen=True)
class Reinstated:
    batch: int
    keys: tuple[str, ...]  # images whose answer was appended again
    skipped: tuple[str, ...]  # images answered again since the failure: left as they are


def parents_of(base_id: int | None, base_annotator: str | None,
               base_note: str | None) -> tuple[int, ...]:
    """The reviews an answer started from ``base_id`` was made on top of: the base
    itself, or for a row veil wrote (restore, consensus) the reviews it repeats."""
    if base_id is None:
        return ()
    if base_annotator is None or not base_annotator.startswith(MACHINE_PREFIX):
        return (base_id,)
    try:
        note = json.loads(base_note or "{}")
    except ValueError:
        return (base_id,)
    restored = note.get("restored_after_failed") if isinstance(note, dict) else None
    if isinstance(restored, dict):
        kept = restored.get("review")
        return (base_id,) if kept is None else (base_id, int(kept))
    if isinstance(note, dict) and isinstance(note.get("reviews"), list):
        return (base_id, *(int(r) for r in note["reviews"]))
    return (base_id,)
