"""Batches: the unit lives are counted in, failing one, and reinstating what it set aside.

An annotator's answers are saved in their open batch. Running out of lives fails the
batch: its reviews are rejected (by the batch's status, never by changing a review)
and the answers they changed are put back (:func:`restore_after`). A curator can
reinstate a failed batch after inspection: its answers are appended again.
"""

from __future__ import annotations

import json

from sqlalchemy import Connection, func, select, update

from veil.errors import VeilError
from veil.store.review.annotators import RESTORE_ANNOTATOR
from veil.store.review.records import Batch, FailedBatch, FollowUp, Reinstated
from veil.store.review.steps import (
    append_follow_up,
    batch_answers,
    batch_row,
    ensure_batch,
    is_human,
    is_rejected,
    keys_of,
    review_records,
)
from veil.store.review_schema import batch_reinstatements_t, batch_reviews_t, review_batches_t
from veil.store.schema import images_t, reviews_t
from veil.store.store import FaceStore
from veil.store.values import utcnow


class Batches:
    """Batches of an annotator's answers, and what became of failed ones."""

    store: FaceStore

    def open_batch(self, annotator: str, *, size: int, lives: int) -> Batch:
        """The annotator's open batch, or a new one with full lives."""
        with self.store.transaction() as conn:
            return ensure_batch(conn, annotator, size=size, lives=lives)

    def batch(self, batch_id: int) -> Batch:
        with self.store.connect() as conn:
            return batch_row(conn, batch_id)

    def count_served(self, batch_id: int) -> int:
        """Count one more item handed out in the batch; returns how many were before."""
        b = review_batches_t.c
        with self.store.transaction() as conn:
            before = conn.execute(select(b.served).where(b.id == batch_id)).scalar_one()
            conn.execute(update(review_batches_t).where(b.id == batch_id)
                         .values(served=b.served + 1))
            return int(before)

    def rejected_review_ids(self) -> set[int]:
        br, rb = batch_reviews_t.c, review_batches_t.c
        with self.store.connect() as conn:
            return set(conn.execute(
                select(br.review_id).join(review_batches_t, rb.id == br.batch_id)
                .where(rb.status == "failed")
            ).scalars())

    def failed_batches(self) -> int:
        b = review_batches_t.c
        with self.store.connect() as conn:
            return conn.execute(select(func.count()).where(b.status == "failed")).scalar_one()

    def answers_in_batch(self, batch_id: int) -> int:
        """The people's answers saved in a batch: what failing it would set aside."""
        with self.store.connect() as conn:
            return conn.execute(select(batch_answers(batch_id))).scalar_one()

    def failed_batch_list(self) -> list[FailedBatch]:
        """Failed batches, oldest first, with their set-aside answers (for an admin)."""
        b, br, rv, ri = (review_batches_t.c, batch_reviews_t.c, reviews_t.c,
                         batch_reinstatements_t.c)
        images = (select(func.count(rv.image_id.distinct())).select_from(batch_reviews_t)
                  .join(reviews_t, rv.id == br.review_id)
                  .where(br.batch_id == b.id, is_human(rv)).scalar_subquery())
        with self.store.connect() as conn:
            rows = conn.execute(
                select(b.id, b.annotator, b.ended_at, batch_answers(b.id), images,
                       ri.created_at)
                .outerjoin(batch_reinstatements_t, ri.batch_id == b.id)
                .where(b.status == "failed").order_by(b.id)
            )
            return [FailedBatch(i, who, end, int(n), int(k), at)
                    for i, who, end, n, k, at in rows]

    def reinstate_batch(
        self, batch_id: int, *, per_annotator: bool, follow_up: FollowUp | None = None,
    ) -> Reinstated:
        """Put back the answers a failed batch set aside, appending each image's last
        answer from the batch again as a new review (nothing is rewritten).

        An image answered again since the failure (by anyone, or with
        ``per_annotator`` by the batch's annotator) keeps that newer answer. The new
        reviews are saved in a new, passed batch, made on top of the answers they
        repeat; ``follow_up`` is called as in :meth:`save_review` (a consensus).
        """
        b, br, rv, ri = (review_batches_t.c, batch_reviews_t.c, reviews_t.c,
                         batch_reinstatements_t.c)
        with self.store.transaction() as conn:
            row = conn.execute(select(b.annotator, b.status, b.lives_left)
                               .where(b.id == batch_id)).first()
            if row is None:
                raise VeilError(f"no review batch {batch_id}")
            annotator, status_, lives_left = row
            if status_ != "failed":
                raise VeilError(f"batch {batch_id} did not fail ({status_}): nothing to reinstate")
            if conn.execute(select(ri.id).where(ri.batch_id == batch_id)).first() is not None:
                raise VeilError(f"batch {batch_id} was reinstated already")
            last = conn.execute(
                select(rv.image_id, func.max(rv.id))
                .join(batch_reviews_t, br.review_id == rv.id)
                .where(br.batch_id == batch_id, is_human(rv))
                .group_by(rv.image_id)
            ).all()
            chosen: list[tuple[int, int]] = []
            skipped: list[int] = []
            for image_id, review_id in sorted(last):
                newer = select(func.count()).where(rv.image_id == image_id, rv.id > review_id,
                                                   rv.annotator != RESTORE_ANNOTATOR)
                if per_annotator:
                    newer = newer.where(rv.annotator == annotator)
                else:
                    newer = newer.where(is_human(rv))
                if conn.execute(newer).scalar_one():
                    skipped.append(image_id)
                else:
                    chosen.append((image_id, review_id))
            new_batch = conn.execute(review_batches_t.insert().returning(b.id), {
                "annotator": annotator, "started_at": utcnow(), "ended_at": utcnow(),
                "status": "passed", "size": max(len(chosen), 1), "lives_left": lives_left,
                "served": 0, "answered": len(chosen),
            }).scalar_one()
            keys = keys_of(conn, [i for i, _ in chosen] + skipped)
            for image_id, review_id in chosen:
                (record,) = review_records(conn, rv.id == review_id)
                (new_id,) = self.store.insert_reviews(
                    conn, [(image_id, record.boxes)], annotator=annotator, kind="review",
                    seconds=record.seconds_spent,
                    note=json.dumps({"reinstated": {"batch": batch_id, "review": review_id}},
                                    sort_keys=True),
                )
                conn.execute(batch_reviews_t.insert(), {
                    "review_id": new_id, "batch_id": new_batch, "base_review_id": review_id,
                })
                append_follow_up(self.store, conn, follow_up, keys[image_id], image_id,
                                 batch_id=new_batch, on_top_of=new_id)
            conn.execute(batch_reinstatements_t.insert(), {
                "batch_id": batch_id, "created_at": utcnow(), "reviews": len(chosen),
                "skipped": len(skipped),
            })
            return Reinstated(batch_id, tuple(sorted(keys[i] for i, _ in chosen)),
                              tuple(sorted(keys[i] for i in skipped)))

    def failed_batches_by_annotator(self) -> dict[str, int]:
        b = review_batches_t.c
        with self.store.connect() as conn:
            rows = conn.execute(
                select(b.annotator, func.count()).where(b.status == "failed")
                .group_by(b.annotator)
            )
            return {who: int(n) for who, n in rows}


def restore_after(store: FaceStore, conn: Connection, batch_id: int) -> tuple[str, ...]:
    """Put back the answer of every image whose newest review came from the failed
    batch: the newest review not rejected, else the latest detections (as a
    ``veil:restore`` review, so nothing is rewritten in place)."""
    rv, br = reviews_t.c, batch_reviews_t.c
    touched = conn.execute(
        select(rv.image_id).join(batch_reviews_t, br.review_id == rv.id)
        .where(br.batch_id == batch_id).distinct()
    ).scalars().all()
    restored: list[str] = []
    for image_id in touched:
        newest = conn.execute(
            select(func.max(rv.id)).where(rv.image_id == image_id)
        ).scalar()
        in_batch = conn.execute(
            select(func.count()).where(br.review_id == newest, br.batch_id == batch_id)
        ).scalar_one()
        if not in_batch:
            continue
        keep = conn.execute(
            select(func.max(rv.id)).where(rv.image_id == image_id, ~is_rejected(rv.id))
        ).scalar()
        if keep is not None:
            record = review_records(conn, rv.id == keep)[0]
            boxes, note = list(record.boxes), {"batch": batch_id, "review": keep}
        else:
            boxes = store.latest_detections(conn, image_id)
            note = {"batch": batch_id, "review": None}
        store.insert_reviews(
            conn, [(image_id, boxes)], annotator=RESTORE_ANNOTATOR, kind="review",
            note=json.dumps({"restored_after_failed": note}, sort_keys=True),
        )
        restored.append(conn.execute(
            select(images_t.c.key).where(images_t.c.id == image_id)
        ).scalar_one())
    return tuple(sorted(restored))
