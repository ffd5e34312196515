"""Tables of the human review (``veil review``), kept apart from the core schema.

They sit on the same metadata as the core tables, so every store created by this veil
has them, and :class:`veil.store.review.ReviewLedger` creates them on older stores.
The answers themselves are ordinary review rows (``reviews``); these tables hold what
a review *session* needs around them: who may review (hashed tokens), the team's
settings, gold-standard truths and attempts, and the batches that lives are counted in.

Reviews stay append-only. A review is "rejected" (left out of aggregation) by the
status of the batch it was saved in, never by changing the review row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import JSON, Boolean, Double, ForeignKey, Index, Integer, String, Table, Text
from sqlalchemy.orm import Mapped, mapped_column

from veil.store.schema import Base, UTCDateTime, one_of

BATCH_STATUSES = ("open", "passed", "failed")


class AnnotatorRow(Base):
    """A person who may review. Only the SHA-256 of their token is stored.

    Tokens are 256 random bits, so a fast hash is enough: there is nothing to guess.
    """

    __tablename__ = "annotators"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    token_sha256: Mapped[str | None] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class ReviewSettingRow(Base):
    """The team's review policy (k, aggregation, gold rate, ...), so that ``serve``,
    ``export`` and ``stats`` agree without repeating flags."""

    __tablename__ = "review_settings"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)


class GoldItemRow(Base):
    """A gold-standard image: its trusted boxes as ``[[x0, y0, x1, y1], ...]``.

    Replacing an image's truth deactivates the old row and adds a new one, so past
    attempts keep pointing at the truth they were graded against.
    """

    __tablename__ = "gold_items"
    __table_args__ = (Index("ix_gold_items_image_active", "image_id", "active"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    boxes: Mapped[list[list[float]]] = mapped_column(JSON)
    source: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class ReviewBatchRow(Base):
    """A stretch of one annotator's work in which their lives are counted.

    ``served`` counts the items handed out (it seeds the gold draw), ``answered`` the
    answers given; a batch passes after ``size`` answers and fails when lives run out.
    """

    __tablename__ = "review_batches"
    __table_args__ = (
        one_of("status", BATCH_STATUSES),
        Index("ix_review_batches_annotator_status", "annotator", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    annotator: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default="open")
    size: Mapped[int] = mapped_column(Integer)
    lives_left: Mapped[int] = mapped_column(Integer)
    served: Mapped[int] = mapped_column(Integer, default=0)
    answered: Mapped[int] = mapped_column(Integer, default=0)


class BatchReviewRow(Base):
    """Which batch a review was saved in, and the review its author started from."""

    __tablename__ = "batch_reviews"

    review_id: Mapped[int] = mapped_column(
        ForeignKey("reviews.id", ondelete="CASCADE"), primary_key=True
    )
    batch_id: Mapped[int] = mapped_column(
        ForeignKey("review_batches.id", ondelete="CASCADE"), index=True
    )
    base_review_id: Mapped[int | None] = mapped_column(Integer)


class GoldAttemptRow(Base):
    """One gold image served to one annotator, and (once answered) how they did.

    Kept out of ``reviews`` on purpose: a gold attempt tests the annotator; as a
    review it would become the image's current answer.
    """

    __tablename__ = "gold_attempts"
    __table_args__ = (Index("ix_gold_attempts_annotator", "annotator", "image_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("review_batches.id", ondelete="CASCADE"))
    gold_id: Mapped[int] = mapped_column(ForeignKey("gold_items.id"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    annotator: Mapped[str] = mapped_column(Text)
    shown: Mapped[list[list[float]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    answer: Mapped[list[list[float]] | None] = mapped_column(JSON)
    passed: Mapped[bool | None] = mapped_column(Boolean)
    iou: Mapped[float | None] = mapped_column(Double)
    seconds: Mapped[float | None] = mapped_column(Double)


class BatchReinstatementRow(Base):
    """A failed batch whose set-aside answers a curator put back after inspection
    (``veil review reinstate``): the answers were appended again as new reviews."""

    __tablename__ = "batch_reinstatements"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("review_batches.id"), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reviews: Mapped[int] = mapped_column(Integer)  # answers appended again
    skipped: Mapped[int] = mapped_column(Integer)  # images answered again since: left as they are


annotators_t = cast(Table, AnnotatorRow.__table__)
review_settings_t = cast(Table, ReviewSettingRow.__table__)
gold_items_t = cast(Table, GoldItemRow.__table__)
review_batches_t = cast(Table, ReviewBatchRow.__table__)
batch_reviews_t = cast(Table, BatchReviewRow.__table__)
gold_attempts_t = cast(Table, GoldAttemptRow.__table__)
batch_reinstatements_t = cast(Table, BatchReinstatementRow.__table__)

REVIEW_TABLES = (
    annotators_t, review_settings_t, gold_items_t, review_batches_t, batch_reviews_t,
    gold_attempts_t, batch_reinstatements_t,
)
