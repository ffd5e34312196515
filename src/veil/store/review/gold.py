"""The gold standard: trusted answers, the attempts made at them, and the lives they cost.

A gold image is served like any other; the answer is graded against the truth. A
failed attempt costs a life in the annotator's batch, and the last life fails the
batch (:mod:`veil.store.review.batches`), all in the grading transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from sqlalchemy import case, func, select, update

from veil.boxes import Box
from veil.errors import VeilError
from veil.store import sql
from veil.store.review.batches import restore_after
from veil.store.review.records import (
    GoldAttempt,
    GoldItem,
    GradeResult,
    boxes_from_json,
    boxes_to_json,
)
from veil.store.review.steps import batch_answers, count_answer
from veil.store.review_schema import gold_attempts_t, gold_items_t
from veil.store.schema import images_t
from veil.store.store import FaceStore
from veil.store.values import utcnow


class GoldStandard:
    """Gold items and attempts; grading spends lives."""

    store: FaceStore

    def set_gold(self, items: Mapping[str, Sequence[Box]], source: str | None = None) -> int:
        """Make each key a gold image with these trusted boxes (replacing an older truth)."""
        g = gold_items_t.c
        now = utcnow()
        with self.store.transaction() as conn:
            ids = self.store.ensure_image_ids(conn, items)
            for part in sql.chunked(list(ids.values()), sql.CHUNK):
                conn.execute(
                    update(gold_items_t).where(g.image_id.in_(part), g.active.is_(True))
                    .values(active=False)
                )
            rows = [
                {"image_id": ids[key], "boxes": boxes_to_json(boxes), "source": source,
                 "created_at": now, "active": True}
                for key, boxes in items.items()
            ]
            sql.insert_rows(conn, gold_items_t.insert(), rows)
        return len(items)

    def remove_gold(self, keys: Iterable[str]) -> int:
        g, im = gold_items_t.c, images_t.c
        removed = 0
        with self.store.transaction() as conn:
            for part in sql.chunked(list(keys), sql.CHUNK):
                ids = select(im.id).where(im.key.in_(part)).scalar_subquery()
                removed += conn.execute(
                    update(gold_items_t).where(g.image_id.in_(ids), g.active.is_(True))
                    .values(active=False)
                ).rowcount
        return removed

    def gold_items(self) -> list[GoldItem]:
        """Active gold images, in key order."""
        g, im = gold_items_t.c, images_t.c
        with self.store.connect() as conn:
            rows = conn.execute(
                select(g.id, im.key, g.boxes, g.source, g.created_at)
                .join(images_t, im.id == g.image_id)
                .where(g.active.is_(True))
                .order_by(im.key)
            )
            return [GoldItem(i, k, boxes_from_json(b), s, t) for i, k, b, s, t in rows]

    def open_attempt(
        self, batch_id: int, annotator: str, gold: GoldItem, shown: Sequence[Box]
    ) -> int:
        with self.store.transaction() as conn:
            image_id = self.store.ensure_image_ids(conn, [gold.key])[gold.key]
            return conn.execute(
                gold_attempts_t.insert().returning(gold_attempts_t.c.id),
                {"batch_id": batch_id, "gold_id": gold.id, "image_id": image_id,
                 "annotator": annotator, "shown": boxes_to_json(shown), "created_at": utcnow()},
            ).scalar_one()

    def attempts(
        self, *, annotator: str | None = None, key: str | None = None,
        batch_id: int | None = None, answered: bool | None = None,
    ) -> list[GoldAttempt]:
        """Gold attempts, newest first, filtered as asked."""
        a, g, im = gold_attempts_t.c, gold_items_t.c, images_t.c
        query = (
            select(a.id, a.batch_id, a.gold_id, im.key, a.annotator, a.shown, g.boxes,
                   a.answered_at.is_not(None), a.passed, a.iou)
            .join(images_t, im.id == a.image_id)
            .join(gold_items_t, g.id == a.gold_id)
            .order_by(a.id.desc())
        )
        if annotator is not None:
            query = query.where(a.annotator == annotator)
        if key is not None:
            query = query.where(im.key == key)
        if batch_id is not None:
            query = query.where(a.batch_id == batch_id)
        if answered is not None:
            query = query.where(a.answered_at.is_not(None) if answered else
                                a.answered_at.is_(None))
        with self.store.connect() as conn:
            return [
                GoldAttempt(i, b, gid, k, who, boxes_from_json(shown), boxes_from_json(truth),
                            bool(done), passed, iou)
                for i, b, gid, k, who, shown, truth, done, passed, iou in conn.execute(query)
            ]

    def grade_attempt(
        self, attempt_id: int, answer: Sequence[Box], *, passed: bool, iou: float,
        seconds: float | None,
    ) -> GradeResult:
        """Record the answer to a gold image; a failure costs a life, and the last life
        fails the batch: its reviews are rejected and the answers they changed restored."""
        a = gold_attempts_t.c
        with self.store.transaction() as conn:
            batch_id = conn.execute(
                select(a.batch_id).where(a.id == attempt_id, a.answered_at.is_(None))
            ).scalar()
            if batch_id is None:
                raise VeilError(f"gold attempt {attempt_id} is unknown or already answered")
            conn.execute(
                update(gold_attempts_t).where(a.id == attempt_id).values(
                    answered_at=utcnow(), answer=boxes_to_json(answer), passed=passed,
                    iou=float(iou), seconds=None if seconds is None else float(seconds),
                )
            )
            batch = count_answer(conn, batch_id, failed=not passed)
            restored: tuple[str, ...] = ()
            set_aside = 0
            if batch.status == "failed":
                restored = restore_after(self.store, conn, batch_id)
                set_aside = conn.execute(select(batch_answers(batch_id))).scalar_one()
            return GradeResult(batch, restored, set_aside)

    def gold_accuracy(self) -> dict[str, tuple[int, int]]:
        """annotator -> (gold answers, passed)."""
        a = gold_attempts_t.c
        with self.store.connect() as conn:
            rows = conn.execute(
                select(a.annotator, func.count(),
                       func.sum(case((a.passed.is_(True), 1), else_=0)))
                .where(a.answered_at.is_not(None)).group_by(a.annotator)
            )
            return {who: (int(n), int(ok or 0)) for who, n, ok in rows}
