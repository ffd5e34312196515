"""The face store's tables (SQLAlchemy 2.x declarative).

History is append-only: detections, reviews and their boxes are only ever
inserted. The only rows updated in place are the image catalogue (upsert by key)
and the status fields of runs and shards. Every other table refers to images by
an integer id, which keeps the big tables (detections, run items) small at
ImageNet scale; an image row is created on demand the first time a key is seen.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from veil.store.vocabulary import (  # noqa: F401  (SCHEMA_VERSION: re-exported)
    ITEM_STATUSES,
    REVIEW_KINDS,
    RUN_STATUSES,
    SCHEMA_VERSION,
    SHARD_STATUSES,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored as UTC and always read back timezone-aware.

    SQLite keeps no zone, PostgreSQL does; this makes both return the same thing.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the face store; use UTC-aware times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def one_of(column: str, values: tuple[str, ...]) -> CheckConstraint:
    """A CHECK that ``column`` holds one of ``values`` (statuses, kinds)."""
    allowed = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=f"{column}_allowed")


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class MetaRow(Base):
    """Key/value facts about the store itself (schema version) for later migrations."""

    __tablename__ = "store_meta"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class ImageRow(Base):
    """The image catalogue: one row per dataset key, upserted, not history."""

    __tablename__ = "images"
    __table_args__ = (one_of("status", ITEM_STATUSES),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Byte order ("C") on PostgreSQL, as SQLite and Python sort: key order is the same
    # everywhere, and LIKE 'val/%' prefix scans can use the index.
    key: Mapped[str] = mapped_column(
        Text().with_variant(Text(collation="C"), "postgresql"), unique=True
    )
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    sha256: Mapped[str | None] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="ok")
    error: Mapped[str | None] = mapped_column(Text)


class RunRow(Base):
    """One invocation of a stage; ``config_hash`` makes resumable runs findable by config."""

    __tablename__ = "runs"
    __table_args__ = (
        one_of("status", RUN_STATUSES),
        Index("ix_runs_kind_config", "kind", "config_hash"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    config_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="running")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    veil_version: Mapped[str | None] = mapped_column(String(32))
    host: Mapped[str | None] = mapped_column(Text)


class ShardRow(Base):
    """A unit of work and retry: a list of keys within a run."""

    __tablename__ = "shards"
    __table_args__ = (one_of("status", SHARD_STATUSES),)

    run_id: Mapped[int] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column("shard_index", Integer, primary_key=True)
    keys: Mapped[list[str]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float] = mapped_column(Double, default=0.0)
    n_items: Mapped[int] = mapped_column(Integer, default=0)
    n_errors: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)


class RunItemRow(Base):
    """The outcome of one run for one image ("processed, 0 faces" is an ok row)."""

    __tablename__ = "run_items"
    __table_args__ = (
        one_of("status", ITEM_STATUSES),
        Index("ix_run_items_image", "image_id", "run_id"),
    )

    run_id: Mapped[int] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="ok")
    error: Mapped[str | None] = mapped_column(Text)
    info: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class BoxColumns:
    """A box's columns: corners in pixels, score (None for a person's box) and where it
    came from. Detections and review boxes are the same kind of box; declared once, they
    stay so. As a mixin they come after the table's own columns."""

    x0: Mapped[float] = mapped_column(Double)
    y0: Mapped[float] = mapped_column(Double)
    x1: Mapped[float] = mapped_column(Double)
    y1: Mapped[float] = mapped_column(Double)
    score: Mapped[float | None] = mapped_column(Double)
    source: Mapped[str | None] = mapped_column(Text)


class DetectionRow(BoxColumns, Base):
    """One box proposed by a run for an image."""

    __tablename__ = "detections"
    __table_args__ = (Index("ix_detections_run_image", "run_id", "image_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))


class ReviewRow(Base):
    """A person's (or an imported file's) complete answer for one image."""

    __tablename__ = "reviews"
    __table_args__ = (
        one_of("kind", REVIEW_KINDS),
        Index("ix_reviews_image", "image_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    annotator: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    seconds_spent: Mapped[float | None] = mapped_column(Double)
    kind: Mapped[str] = mapped_column(String(16), default="review")
    gold_passed: Mapped[bool | None] = mapped_column()
    note: Mapped[str | None] = mapped_column(Text)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))


class ReviewBoxRow(BoxColumns, Base):
    """One box of a review; a review without boxes means "no faces here"."""

    __tablename__ = "review_boxes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    review_id: Mapped[int] = mapped_column(
        ForeignKey("reviews.id", ondelete="CASCADE"), index=True
    )


meta_t = cast(Table, MetaRow.__table__)
images_t = cast(Table, ImageRow.__table__)
runs_t = cast(Table, RunRow.__table__)
shards_t = cast(Table, ShardRow.__table__)
run_items_t = cast(Table, RunItemRow.__table__)
detections_t = cast(Table, DetectionRow.__table__)
reviews_t = cast(Table, ReviewRow.__table__)
review_boxes_t = cast(Table, ReviewBoxRow.__table__)
