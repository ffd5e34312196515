"""The review ledger: what ``veil review`` reads and writes around the review rows.

Everything that must be atomic lives here, in one transaction each: saving a review
only if nobody saved a newer one (optimistic concurrency), grading a gold attempt and
spending a life, failing a batch and restoring the answers it had changed, reinstating
a failed batch's answers (appended again, never rewritten). Each saved review records
the review its author started from (``batch_reviews.base_review_id``), so an answer
made on top of another's can be told from an independent one. Policy
(which image next, how to aggregate, what passes) is :mod:`veil.review`'s business
and comes in as plain values or a callback.

Names: a person's name never contains ``:``. Rows that veil writes itself use
``veil:<what>`` (``veil:union``, ``veil:majority``, ``veil:restore``) and imports use
``import:<file>``, so "a human review" is a ``review`` row whose annotator has no colon.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, case, exists, func, select, update

from veil.boxes import Box
from veil.errors import VeilError
from veil.store import sql
from veil.store.records import ReviewRecord
from veil.store.review_schema import (
    REVIEW_TABLES,
    annotators_t,
    batch_reinstatements_t,
    batch_reviews_t,
    gold_attempts_t,
    gold_items_t,
    review_batches_t,
    review_settings_t,
)
from veil.store.schema import Base, images_t, review_boxes_t, reviews_t
from veil.store.store import FaceStore
from veil.store.values import BOX_COLUMNS, utcnow

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
MACHINE_PREFIX = "veil:"
RESTORE_ANNOTATOR = "veil:restore"

#: Given a key and its human reviews, (annotator, boxes, note) of a row for veil to append
#: right after a save (a consensus), or None.
FollowUp = Callable[[str, list["HumanReview"]], "tuple[str, Sequence[Box], dict[str, Any]] | None"]


def check_name(name: str) -> str:
    """A person's name as stored on their reviews: letters, digits, ``_ . @ -``."""
    if not NAME_PATTERN.fullmatch(name):
        raise VeilError(
            f"annotator name {name!r}: use 1-64 letters, digits, '_', '.', '@' or '-' "
            "(starting with a letter or digit)"
        )
    return name


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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


@dataclass(frozen=True)
class AnnotatorInfo:
    name: str
    created_at: datetime
    active: bool


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


def _is_human(rv: Any) -> Any:
    return and_(rv.kind == "review", ~rv.annotator.contains(":"))


def _batch_answers(batch_id: Any) -> Any:
    """SQL count of the people's answers saved in a batch (consensus rows excluded)."""
    rv, br = reviews_t.c, batch_reviews_t.c
    return (select(func.count()).select_from(batch_reviews_t)
            .join(reviews_t, rv.id == br.review_id)
            .where(br.batch_id == batch_id, _is_human(rv)).scalar_subquery())


def _rejected(review_id: Any) -> Any:
    """SQL truth of "this review was saved in a failed batch"."""
    br, rb = batch_reviews_t.c, review_batches_t.c
    return exists().where(
        br.review_id == review_id, br.batch_id == rb.id, rb.status == "failed"
    )


class ReviewLedger:
    """Review-session records on top of a :class:`FaceStore` (same database)."""

    def __init__(self, store: FaceStore) -> None:
        self.store = store
        Base.metadata.create_all(store.engine, tables=list(REVIEW_TABLES))

    # -- settings ----------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        c = review_settings_t.c
        with self.store.connect() as conn:
            return {name: value for name, value in conn.execute(select(c.name, c.value))}

    def save_settings(self, values: Mapping[str, Any]) -> None:
        c = review_settings_t.c
        with self.store.transaction() as conn:
            for name, value in values.items():
                changed = conn.execute(
                    update(review_settings_t).where(c.name == name).values(value=value)
                ).rowcount
                if not changed:
                    conn.execute(review_settings_t.insert(), {"name": name, "value": value})

    # -- annotators --------------------------------------------------------------------------

    def add_annotator(self, name: str, *, rotate: bool = False) -> str:
        """A new personal token for ``name`` (stored hashed); ``rotate`` replaces an old one."""
        check_name(name)
        token = secrets.token_urlsafe(32)
        c = annotators_t.c
        with self.store.transaction() as conn:
            known = conn.execute(select(c.id).where(c.name == name)).scalar()
            if known is not None and not rotate:
                raise VeilError(
                    f"annotator {name!r} already exists; pass --rotate to give them a new "
                    "link (the old one stops working)"
                )
            values = {"token_sha256": hash_token(token), "active": True}
            if known is None:
                conn.execute(annotators_t.insert(),
                             {"name": name, "created_at": utcnow(), **values})
            else:
                conn.execute(update(annotators_t).where(c.id == known).values(**values))
        return token

    def remove_annotator(self, name: str) -> bool:
        """Revoke ``name``'s token; their reviews stay."""
        c = annotators_t.c
        with self.store.transaction() as conn:
            return bool(
                conn.execute(
                    update(annotators_t).where(c.name == name)
                    .values(active=False, token_sha256=None)
                ).rowcount
            )

    def annotator_for_token(self, token: str) -> str | None:
        c = annotators_t.c
        with self.store.connect() as conn:
            return conn.execute(
                select(c.name).where(c.token_sha256 == hash_token(token), c.active.is_(True))
            ).scalar()

    def annotators(self) -> list[AnnotatorInfo]:
        c = annotators_t.c
        with self.store.connect() as conn:
            rows = conn.execute(select(c.name, c.created_at, c.active).order_by(c.name))
            return [AnnotatorInfo(*row) for row in rows]

    def has_active_annotators(self) -> bool:
        c = annotators_t.c
        with self.store.connect() as conn:
            return conn.execute(
                select(func.count()).where(c.active.is_(True), c.token_sha256.is_not(None))
            ).scalar_one() > 0

    # -- gold standard -----------------------------------------------------------------------

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

    # -- batches -----------------------------------------------------------------------------

    def open_batch(self, annotator: str, *, size: int, lives: int) -> Batch:
        """The annotator's open batch, or a new one with full lives."""
        with self.store.transaction() as conn:
            return self._ensure_batch(conn, annotator, size=size, lives=lives)

    def _ensure_batch(self, conn: Connection, annotator: str, *, size: int, lives: int) -> Batch:
        batch = self._open_batch(conn, annotator)
        if batch is not None:
            return batch
        conn.execute(
            review_batches_t.insert(),
            {"annotator": annotator, "started_at": utcnow(), "status": "open", "size": size,
             "lives_left": lives, "served": 0, "answered": 0},
        )
        batch = self._open_batch(conn, annotator)
        assert batch is not None
        return batch

    @staticmethod
    def _open_batch(conn: Connection, annotator: str) -> Batch | None:
        b = review_batches_t.c
        row = conn.execute(
            select(b.id, b.annotator, b.status, b.size, b.lives_left, b.served, b.answered)
            .where(b.annotator == annotator, b.status == "open")
            .order_by(b.id.desc())
            .limit(1)
        ).first()
        return Batch(*row) if row is not None else None

    def batch(self, batch_id: int) -> Batch:
        with self.store.connect() as conn:
            return self._batch(conn, batch_id)

    @staticmethod
    def _batch(conn: Connection, batch_id: int) -> Batch:
        b = review_batches_t.c
        row = conn.execute(
            select(b.id, b.annotator, b.status, b.size, b.lives_left, b.served, b.answered)
            .where(b.id == batch_id)
        ).one()
        return Batch(*row)

    def count_served(self, batch_id: int) -> int:
        """Count one more item handed out in the batch; returns how many were before."""
        b = review_batches_t.c
        with self.store.transaction() as conn:
            before = conn.execute(select(b.served).where(b.id == batch_id)).scalar_one()
            conn.execute(update(review_batches_t).where(b.id == batch_id)
                         .values(served=b.served + 1))
            return int(before)

    def _count_answer(self, conn: Connection, batch_id: int, *, failed: bool = False) -> Batch:
        """One more answer in the batch (a life less if ``failed``); closes it when done."""
        b = review_batches_t.c
        conn.execute(
            update(review_batches_t).where(b.id == batch_id, b.status == "open")
            .values(answered=b.answered + 1, lives_left=b.lives_left - int(failed))
        )
        batch = self._batch(conn, batch_id)
        status = None
        if batch.status == "open" and batch.lives_left <= 0:
            status = "failed"
        elif batch.status == "open" and batch.answered >= batch.size:
            status = "passed"
        if status is not None:
            conn.execute(update(review_batches_t).where(b.id == batch_id)
                         .values(status=status, ended_at=utcnow()))
            batch = self._batch(conn, batch_id)
        return batch

    # -- reviews -----------------------------------------------------------------------------

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
            self._lock_image(conn, image_id)
            latest = self._thread_head(conn, image_id, annotator if per_annotator else None)
            if latest != base_review_id:
                return Conflict(
                    None if latest is None else self._records(conn, reviews_t.c.id == latest)[0]
                )
            batch = self._ensure_batch(conn, annotator, size=batch_size, lives=lives)
            (review_id,) = self.store.insert_reviews(
                conn, [(image_id, boxes)], annotator=annotator, kind="review", seconds=seconds,
            )
            batch_id = batch.id
            conn.execute(batch_reviews_t.insert(), {
                "review_id": review_id, "batch_id": batch_id, "base_review_id": base_review_id,
            })
            self._count_answer(conn, batch_id)
            if follow_up is not None:
                extra = follow_up(key, self._human_reviews(conn, images_t.c.id == image_id))
                if extra is not None:
                    name, consensus, note = extra
                    (follow_id,) = self.store.insert_reviews(
                        conn, [(image_id, consensus)], annotator=name, kind="review",
                        note=json.dumps(note, sort_keys=True),
                    )
                    # Saved in the same batch: if the batch fails, the consensus built on
                    # its review is rejected with it.
                    conn.execute(batch_reviews_t.insert(), {
                        "review_id": follow_id, "batch_id": batch_id,
                        "base_review_id": review_id,
                    })
            return review_id

    @staticmethod
    def _lock_image(conn: Connection, image_id: int) -> None:
        """Serialise writers of one image (SQLite's write transactions already are)."""
        if conn.dialect.name != "sqlite":
            conn.execute(
                select(images_t.c.id).where(images_t.c.id == image_id).with_for_update()
            )

    @staticmethod
    def _thread_head(conn: Connection, image_id: int, annotator: str | None) -> int | None:
        rv = reviews_t.c
        query = select(func.max(rv.id)).where(rv.image_id == image_id)
        if annotator is not None:
            query = query.where(rv.annotator == annotator, rv.kind == "review",
                                ~_rejected(rv.id))
        return conn.execute(query).scalar()

    def thread_head(self, key: str, annotator: str | None) -> ReviewRecord | None:
        """The newest review of ``key`` (or ``annotator``'s newest accepted one)."""
        with self.store.connect() as conn:
            image_id = self.store.image_id(conn, key)
            if image_id is None:
                return None
            head = self._thread_head(conn, image_id, annotator)
            if head is None:
                return None
            return self._records(conn, reviews_t.c.id == head)[0]

    def latest_of_kind(self, key: str, kind: str) -> ReviewRecord | None:
        rv, im = reviews_t.c, images_t.c
        with self.store.connect() as conn:
            head = conn.execute(
                select(func.max(rv.id)).join(images_t, im.id == rv.image_id)
                .where(im.key == key, rv.kind == kind)
            ).scalar()
            return None if head is None else self._records(conn, rv.id == head)[0]

    @staticmethod
    def _records(conn: Connection, where: Any) -> list[ReviewRecord]:
        rv, rb, im = reviews_t.c, review_boxes_t.c, images_t.c
        heads = conn.execute(
            select(rv.id, im.key, rv.annotator, rv.created_at, rv.seconds_spent, rv.kind,
                   rv.gold_passed, rv.note, rv.run_id)
            .join(images_t, im.id == rv.image_id)
            .where(where)
            .order_by(rv.id)
        ).all()
        boxes: dict[int, list[Box]] = {row[0]: [] for row in heads}
        for part in sql.chunked(list(boxes), sql.CHUNK):
            for review_id, *values in conn.execute(
                select(rb.review_id, *(rb[n] for n in BOX_COLUMNS))
                .where(rb.review_id.in_(part)).order_by(rb.id)
            ):
                boxes[review_id].append(Box(*values))
        return [ReviewRecord(*row, boxes=tuple(boxes[row[0]])) for row in heads]

    def human_reviews(
        self, *, after_id: int = 0, keys: Iterable[str] | None = None
    ) -> list[HumanReview]:
        """People's reviews (oldest first), rejected ones flagged; optionally only newer
        than ``after_id`` or of some keys."""
        rv, im = reviews_t.c, images_t.c
        where: Any = rv.id > after_id
        with self.store.connect() as conn:
            if keys is None:
                return self._human_reviews(conn, where)
            out: list[HumanReview] = []
            for part in sql.chunked(sorted(set(keys)), sql.CHUNK):
                out.extend(self._human_reviews(conn, and_(where, im.key.in_(part))))
            out.sort(key=lambda r: r.id)
            return out

    def iter_human_reviews(self) -> Iterator[HumanReview]:
        """Every person's review, streamed in (key, id) order: for exports and statistics."""
        rv, rb, im, br = reviews_t.c, review_boxes_t.c, images_t.c, batch_reviews_t.c
        base = reviews_t.alias("base")
        query = (
            select(rv.id, im.key, rv.annotator, rv.created_at, rv.seconds_spent,
                   _rejected(rv.id).label("rejected"), br.base_review_id, base.c.annotator,
                   base.c.note, *(rb[n] for n in BOX_COLUMNS[:4]))
            .join(images_t, im.id == rv.image_id)
            .outerjoin(batch_reviews_t, br.review_id == rv.id)
            .outerjoin(base, base.c.id == br.base_review_id)
            .outerjoin(review_boxes_t, rb.review_id == rv.id)
            .where(_is_human(rv))
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

    def _human_reviews(self, conn: Connection, where: Any) -> list[HumanReview]:
        rv, im, br = reviews_t.c, images_t.c, batch_reviews_t.c
        base = reviews_t.alias("base")
        rows = conn.execute(
            select(rv.id, _rejected(rv.id).label("rejected"), br.base_review_id,
                   base.c.annotator, base.c.note)
            .join(images_t, im.id == rv.image_id)
            .outerjoin(batch_reviews_t, br.review_id == rv.id)
            .outerjoin(base, base.c.id == br.base_review_id)
            .where(where, _is_human(rv))
        ).all()
        if not rows:
            return []
        rejected = {rid: bool(flag) for rid, flag, *_ in rows}
        parents = {rid: parents_of(bid, bwho, bnote) for rid, _, bid, bwho, bnote in rows}
        records: list[ReviewRecord] = []
        for part in sql.chunked(sorted(rejected), sql.CHUNK):
            records.extend(self._records(conn, rv.id.in_(part)))
        return [
            HumanReview(r.id, r.key, r.annotator, r.created_at, r.seconds_spent, r.boxes,
                        rejected[r.id], parents[r.id])
            for r in records
        ]

    def rejected_review_ids(self) -> set[int]:
        br, rb = batch_reviews_t.c, review_batches_t.c
        with self.store.connect() as conn:
            return set(conn.execute(
                select(br.review_id).join(review_batches_t, rb.id == br.batch_id)
                .where(rb.status == "failed")
            ).scalars())

    def max_review_id(self) -> int:
        with self.store.connect() as conn:
            return conn.execute(select(func.max(reviews_t.c.id))).scalar() or 0

    def failed_batches(self) -> int:
        b = review_batches_t.c
        with self.store.connect() as conn:
            return conn.execute(select(func.count()).where(b.status == "failed")).scalar_one()

    # -- gold attempts -----------------------------------------------------------------------

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
            batch = self._count_answer(conn, batch_id, failed=not passed)
            restored: tuple[str, ...] = ()
            set_aside = 0
            if batch.status == "failed":
                restored = self._restore_after(conn, batch_id)
                set_aside = conn.execute(select(_batch_answers(batch_id))).scalar_one()
            return GradeResult(batch, restored, set_aside)

    def answers_in_batch(self, batch_id: int) -> int:
        """The people's answers saved in a batch: what failing it would set aside."""
        with self.store.connect() as conn:
            return conn.execute(select(_batch_answers(batch_id))).scalar_one()

    def failed_batch_list(self) -> list[FailedBatch]:
        """Failed batches, oldest first, with their set-aside answers (for an admin)."""
        b, br, rv, ri = (review_batches_t.c, batch_reviews_t.c, reviews_t.c,
                         batch_reinstatements_t.c)
        images = (select(func.count(rv.image_id.distinct())).select_from(batch_reviews_t)
                  .join(reviews_t, rv.id == br.review_id)
                  .where(br.batch_id == b.id, _is_human(rv)).scalar_subquery())
        with self.store.connect() as conn:
            rows = conn.execute(
                select(b.id, b.annotator, b.ended_at, _batch_answers(b.id), images,
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
                .where(br.batch_id == batch_id, _is_human(rv))
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
                    newer = newer.where(_is_human(rv))
                if conn.execute(newer).scalar_one():
                    skipped.append(image_id)
                else:
                    chosen.append((image_id, review_id))
            new_batch = conn.execute(review_batches_t.insert().returning(b.id), {
                "annotator": annotator, "started_at": utcnow(), "ended_at": utcnow(),
                "status": "passed", "size": max(len(chosen), 1), "lives_left": lives_left,
                "served": 0, "answered": len(chosen),
            }).scalar_one()
            keys = self._keys_of(conn, [i for i, _ in chosen] + skipped)
            for image_id, review_id in chosen:
                (record,) = self._records(conn, rv.id == review_id)
                (new_id,) = self.store.insert_reviews(
                    conn, [(image_id, record.boxes)], annotator=annotator, kind="review",
                    seconds=record.seconds_spent,
                    note=json.dumps({"reinstated": {"batch": batch_id, "review": review_id}},
                                    sort_keys=True),
                )
                conn.execute(batch_reviews_t.insert(), {
                    "review_id": new_id, "batch_id": new_batch, "base_review_id": review_id,
                })
                if follow_up is not None:
                    extra = follow_up(keys[image_id],
                                      self._human_reviews(conn, images_t.c.id == image_id))
                    if extra is not None:
                        name, consensus, note = extra
                        (follow_id,) = self.store.insert_reviews(
                            conn, [(image_id, consensus)], annotator=name, kind="review",
                            note=json.dumps(note, sort_keys=True),
                        )
                        conn.execute(batch_reviews_t.insert(), {
                            "review_id": follow_id, "batch_id": new_batch,
                            "base_review_id": new_id,
                        })
            conn.execute(batch_reinstatements_t.insert(), {
                "batch_id": batch_id, "created_at": utcnow(), "reviews": len(chosen),
                "skipped": len(skipped),
            })
            return Reinstated(batch_id, tuple(sorted(keys[i] for i, _ in chosen)),
                              tuple(sorted(keys[i] for i in skipped)))

    @staticmethod
    def _keys_of(conn: Connection, image_ids: Sequence[int]) -> dict[int, str]:
        im = images_t.c
        out: dict[int, str] = {}
        for part in sql.chunked(list(image_ids), sql.CHUNK):
            for image_id, key in conn.execute(select(im.id, im.key).where(im.id.in_(part))):
                out[image_id] = key
        return out

    def _restore_after(self, conn: Connection, batch_id: int) -> tuple[str, ...]:
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
                select(func.max(rv.id)).where(rv.image_id == image_id, ~_rejected(rv.id))
            ).scalar()
            if keep is not None:
                record = self._records(conn, rv.id == keep)[0]
                boxes, note = list(record.boxes), {"batch": batch_id, "review": keep}
            else:
                boxes = self.store.latest_detections(conn, image_id)
                note = {"batch": batch_id, "review": None}
            self.store.insert_reviews(
                conn, [(image_id, boxes)], annotator=RESTORE_ANNOTATOR, kind="review",
                note=json.dumps({"restored_after_failed": note}, sort_keys=True),
            )
            restored.append(conn.execute(
                select(images_t.c.key).where(images_t.c.id == image_id)
            ).scalar_one())
        return tuple(sorted(restored))

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

    def failed_batches_by_annotator(self) -> dict[str, int]:
        b = review_batches_t.c
        with self.store.connect() as conn:
            rows = conn.execute(
                select(b.annotator, func.count()).where(b.status == "failed")
                .group_by(b.annotator)
            )
            return {who: int(n) for who, n in rows}
