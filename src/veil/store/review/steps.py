"""Steps that several parts of the ledger take inside one transaction.

Each takes the open connection of the caller's transaction (``FaceStore.transaction``),
so that saving an answer, counting it in a batch and failing the batch stay atomic
whichever part of the ledger starts the transaction. Also the SQL that says which
reviews are people's and which are rejected (saved in a batch that failed).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, exists, func, select, update

from veil.boxes import Box
from veil.store import sql
from veil.store.records import ReviewRecord
from veil.store.review.records import Batch, FollowUp, HumanReview, parents_of
from veil.store.review_schema import batch_reviews_t, review_batches_t
from veil.store.schema import images_t, review_boxes_t, reviews_t
from veil.store.store import FaceStore
from veil.store.values import BOX_COLUMNS, utcnow


def is_human(rv: Any) -> Any:
    """SQL truth of "this review row is a person's answer" (not veil's, not an import)."""
    return and_(rv.kind == "review", ~rv.annotator.contains(":"))


def batch_answers(batch_id: Any) -> Any:
    """SQL count of the people's answers saved in a batch (consensus rows excluded)."""
    rv, br = reviews_t.c, batch_reviews_t.c
    return (select(func.count()).select_from(batch_reviews_t)
            .join(reviews_t, rv.id == br.review_id)
            .where(br.batch_id == batch_id, is_human(rv)).scalar_subquery())


def is_rejected(review_id: Any) -> Any:
    """SQL truth of "this review was saved in a failed batch"."""
    br, rb = batch_reviews_t.c, review_batches_t.c
    return exists().where(
        br.review_id == review_id, br.batch_id == rb.id, rb.status == "failed"
    )


def ensure_batch(conn: Connection, annotator: str, *, size: int, lives: int) -> Batch:
    """The annotator's open batch, or a new one with full lives."""
    batch = open_batch_row(conn, annotator)
    if batch is not None:
        return batch
    conn.execute(
        review_batches_t.insert(),
        {"annotator": annotator, "started_at": utcnow(), "status": "open", "size": size,
         "lives_left": lives, "served": 0, "answered": 0},
    )
    batch = open_batch_row(conn, annotator)
    assert batch is not None
    return batch


def open_batch_row(conn: Connection, annotator: str) -> Batch | None:
    """The annotator's open batch, if any."""
    b = review_batches_t.c
    row = conn.execute(
        select(b.id, b.annotator, b.status, b.size, b.lives_left, b.served, b.answered)
        .where(b.annotator == annotator, b.status == "open")
        .order_by(b.id.desc())
        .limit(1)
    ).first()
    return Batch(*row) if row is not None else None


def batch_row(conn: Connection, batch_id: int) -> Batch:
    """A batch by id (it must exist)."""
    b = review_batches_t.c
    row = conn.execute(
        select(b.id, b.annotator, b.status, b.size, b.lives_left, b.served, b.answered)
        .where(b.id == batch_id)
    ).one()
    return Batch(*row)


def count_answer(conn: Connection, batch_id: int, *, failed: bool = False) -> Batch:
    """One more answer in the batch (a life less if ``failed``); closes it when done."""
    b = review_batches_t.c
    conn.execute(
        update(review_batches_t).where(b.id == batch_id, b.status == "open")
        .values(answered=b.answered + 1, lives_left=b.lives_left - int(failed))
    )
    batch = batch_row(conn, batch_id)
    status = None
    if batch.status == "open" and batch.lives_left <= 0:
        status = "failed"
    elif batch.status == "open" and batch.answered >= batch.size:
        status = "passed"
    if status is not None:
        conn.execute(update(review_batches_t).where(b.id == batch_id)
                     .values(status=status, ended_at=utcnow()))
        batch = batch_row(conn, batch_id)
    return batch


def review_records(conn: Connection, where: Any) -> list[ReviewRecord]:
    """Reviews matching ``where`` (on ``reviews``), oldest first, with their boxes."""
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


def human_reviews_where(conn: Connection, where: Any) -> list[HumanReview]:
    """People's reviews matching ``where`` (on ``reviews`` and ``images``)."""
    rv, im, br = reviews_t.c, images_t.c, batch_reviews_t.c
    base = reviews_t.alias("base")
    rows = conn.execute(
        select(rv.id, is_rejected(rv.id).label("rejected"), br.base_review_id,
               base.c.annotator, base.c.note)
        .join(images_t, im.id == rv.image_id)
        .outerjoin(batch_reviews_t, br.review_id == rv.id)
        .outerjoin(base, base.c.id == br.base_review_id)
        .where(where, is_human(rv))
    ).all()
    if not rows:
        return []
    flagged = {rid: bool(flag) for rid, flag, *_ in rows}
    parents = {rid: parents_of(bid, bwho, bnote) for rid, _, bid, bwho, bnote in rows}
    records: list[ReviewRecord] = []
    for part in sql.chunked(sorted(flagged), sql.CHUNK):
        records.extend(review_records(conn, rv.id.in_(part)))
    return [
        HumanReview(r.id, r.key, r.annotator, r.created_at, r.seconds_spent, r.boxes,
                    flagged[r.id], parents[r.id])
        for r in records
    ]


def keys_of(conn: Connection, image_ids: Sequence[int]) -> dict[int, str]:
    """image id -> key, for the ids given."""
    im = images_t.c
    out: dict[int, str] = {}
    for part in sql.chunked(list(image_ids), sql.CHUNK):
        for image_id, key in conn.execute(select(im.id, im.key).where(im.id.in_(part))):
            out[image_id] = key
    return out


def append_follow_up(
    store: FaceStore, conn: Connection, follow_up: FollowUp | None, key: str, image_id: int,
    *, batch_id: int, on_top_of: int,
) -> None:
    """Append the row ``follow_up`` asks for (a consensus) after review ``on_top_of``.

    It is saved in the same batch: if the batch fails, the consensus built on its
    review is rejected with it.
    """
    if follow_up is None:
        return
    extra = follow_up(key, human_reviews_where(conn, images_t.c.id == image_id))
    if extra is None:
        return
    name, consensus, note = extra
    (follow_id,) = store.insert_reviews(
        conn, [(image_id, consensus)], annotator=name, kind="review",
        note=json.dumps(note, sort_keys=True),
    )
    conn.execute(batch_reviews_t.insert(), {
        "review_id": follow_id, "batch_id": batch_id, "base_review_id": on_top_of,
    })
