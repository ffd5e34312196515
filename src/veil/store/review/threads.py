"""Review threads: saving an answer only on top of the newest one, and reading them back.

A save names the review its author started from; it is appended only if that is still
the image's newest review (or, with independent reviews, the annotator's own newest
accepted one): optimistic concurrency, one transaction, the image's row locked on
PostgreSQL. Each saved review records what it was made on top of
(``batch_reviews.base_review_id``), so an answer made on top of another's can be told
from an independent one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, and_, func, select

from veil.boxes import Box
from veil.store import sql
from veil.store.records import ReviewRecord
from veil.store.review.annotators import check_name
from veil.store.review.records import Conflict, FollowUp, HumanReview, parents_of
from veil.store.review.steps import (
    append_follow_up,
    count_answer,
    ensure_batch,
    human_reviews_where,
    is_human,
    is_rejected,
    review_records,
)
from veil.store.review_schema import batch_reviews_t
from veil.store.schema import images_t, review_boxes_t, reviews_t
from veil.store.store import FaceStore
from veil.store.values import BOX_COLUMNS


class ReviewThreads:
    """Each image's reviews: saving with conflict detection, and reading them back."""

    store: FaceStore

    def save_review(
        self,
        key: str,
        boxes: Sequence[Box],
        *,
        annotator: str,
        base_review_id: int | None,
        per_annotator: bool,
        batch_size: int,
        lives: int,
        seconds: float | None = None,
        follow_up: FollowUp | None = None,
    ) -> int | Conflict:
        """Append ``annotator``'s review of ``key`` unless a newer one exists.

        ``base_review_id`` is the review the client started from (None: none). The
        newest review it is compared with is the image's newest review of any kind,
        or with ``per_annotator`` (independent reviews) the annotator's own newest
        accepted one. The review joins the annotator's open batch (opened with
        ``batch_size`` and ``lives`` if there is none). ``follow_up`` may return a row
        for veil to append right after (a consensus), given the image's human reviews
        including this one.
        """
        check_name(annotator)
        with self.store.transaction() as conn:
            image_id = self.store.ensure_image_ids(conn, [key])[key]
            lock_image(conn, image_id)
            latest = thread_head_id(conn, image_id, annotator if per_annotator else None)
            if latest != base_review_id:
                return Conflict(
                    None if latest is None else review_records(conn, reviews_t.c.id == latest)[0]
                )
            batch = ensure_batch(conn, annotator, size=batch_size, lives=lives)
            (review_id,) = self.store.insert_reviews(
                conn, [(image_id, boxes)], annotator=annotator, kind="review", seconds=seconds,
            )
            batch_id = batch.id
            conn.execute(batch_reviews_t.insert(), {
                "review_id": review_id, "batch_id": batch_id, "base_review_id": base_review_id,
            })
            count_answer(conn, batch_id)
            append_follow_up(self.store, conn, follow_up, key, image_id, batch_id=batch_id,
                             on_top_of=review_id)
            return review_id

    def thread_head(self, key: str, annotator: str | None) -> ReviewRecord | None:
        """The newest review of ``key`` (or ``annotator``'s newest accepted one)."""
        with self.store.connect() as conn:
            image_id = self.store.image_id(conn, key)
            if image_id is None:
                return None
            head = thread_head_id(conn, image_id, annotator)
            if head is None:
                return None
            return review_records(conn, reviews_t.c.id == head)[0]

    def latest_of_kind(self, key: str, kind: str) -> ReviewRecord | None:
        rv, im = reviews_t.c, images_t.c
        with self.store.connect() as conn:
            head = conn.execute(
                select(func.max(rv.id)).join(images_t, im.id == rv.image_id)
                .where(im.key == key, rv.kind == kind)
            ).scalar()
            return None if head is None else review_records(conn, rv.id == head)[0]

    def human_reviews(
        self, *, after_id: int = 0, keys: Iterable[str] | None = None
    ) -> list[HumanReview]:
        """People's reviews (oldest first), rejected ones flagged; optionally only newer
        than ``after_id`` or of some keys."""
        rv, im = reviews_t.c, images_t.c
        where: Any = rv.id > after_id
        with self.store.connect() as conn:
            if keys is None:
                return human_reviews_where(conn, where)
            out: list[HumanReview] = []
            for part in sql.chunked(sorted(set(keys)), sql.CHUNK):
                out.extend(human_reviews_where(conn, and_(where, im.key.in_(part))))
            out.sort(key=lambda r: r.id)
            return out

    def iter_human_reviews(self) -> Iterator[HumanReview]:
        """Every person's review, streamed in (key, id) order: for exports and statistics."""
        rv, rb, im, br = reviews_t.c, review_boxes_t.c, images_t.c, batch_reviews_t.c
        base = reviews_t.alias("base")
        query = (
            select(rv.id, im.key, rv.annotator, rv.created_at, rv.seconds_spent,
                   is_rejected(rv.id).label("rejected"), br.base_review_id, base.c.annotator,
                   base.c.note, *(rb[n] for n in BOX_COLUMNS[:4]))
            .join(images_t, im.id == rv.image_id)
            .outerjoin(batch_reviews_t, br.review_id == rv.id)
            .outerjoin(base, base.c.id == br.base_review_id)
            .outerjoin(review_boxes_t, rb.review_id == rv.id)
            .where(is_human(rv))
            .order_by(im.key, rv.id, rb.id)
        )
        with self.store.connect() as conn:
            result = conn.execution_options(yield_per=10_000).execute(query)
            head: HumanReview | None = None
            boxes: list[Box] = []
            for rid, key, who, when, secs, rejected, bid, bwho, bnote, x0, y0, x1, y1 in result:
                if head is None or head.id != rid:
                    if head is not None:
                        yield replace(head, boxes=tuple(boxes))
                    head = HumanReview(rid, key, who, when, secs, (), bool(rejected),
                                       parents_of(bid, bwho, bnote))
                    boxes = []
                if x0 is not None:
                    boxes.append(Box(x0, y0, x1, y1))
            if head is not None:
                yield replace(head, boxes=tuple(boxes))

    def max_review_id(self) -> int:
        with self.store.connect() as conn:
            return conn.execute(select(func.max(reviews_t.c.id))).scalar() or 0


def lock_image(conn: Connection, image_id: int) -> None:
    """Serialise writers of one image (SQLite's write transactions already are)."""
    if conn.dialect.name != "sqlite":
        conn.execute(
            select(images_t.c.id).where(images_t.c.id == image_id).with_for_update()
        )


def thread_head_id(conn: Connection, image_id: int, annotator: str | None) -> int | None:
    """The newest review of the image (or ``annotator``'s newest accepted one)."""
    rv = reviews_t.c
    query = select(func.max(rv.id)).where(rv.image_id == image_id)
    if annotator is not None:
        query = query.where(rv.annotator == annotator, rv.kind == "review",
                            ~is_rejected(rv.id))
    return conn.execute(query).scalar()
