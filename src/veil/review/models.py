"""The JSON the review API takes and gives (pydantic models at the boundary).

Everything a client sends is checked here or in the service before anything is
written: unknown fields, non-finite numbers and inverted or empty boxes are a 422
with a message, and so are boxes outside the image (checked against its size).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from veil.boxes import Box

MAX_BOXES = 1000
Coord = Annotated[float, Field(allow_inf_nan=False)]


class BoxIn(BaseModel):
    """A box in displayed pixels: x0 < x1 and y0 < y1."""

    model_config = ConfigDict(extra="forbid")

    x0: Coord
    y0: Coord
    x1: Coord
    y1: Coord

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not (self.x0 < self.x1 and self.y0 < self.y1):
            raise ValueError(
                f"box ({self.x0:g}, {self.y0:g}, {self.x1:g}, {self.y1:g}) is inverted or empty: "
                "need x0 < x1 and y0 < y1"
            )
        return self

    def to_box(self) -> Box:
        return Box(self.x0, self.y0, self.x1, self.y1)


class ReviewIn(BaseModel):
    """One complete answer for an image: no boxes means "no faces here"."""

    model_config = ConfigDict(extra="forbid")

    boxes: list[BoxIn] = Field(max_length=MAX_BOXES)
    base_review_id: int | None = Field(
        default=None, ge=1,
        description="The review the client started from (null: it started from detections).",
    )
    seconds: float | None = Field(default=None, ge=0, le=24 * 3600, allow_inf_nan=False)


class BoxOut(BaseModel):
    x0: float
    y0: float
    x1: float
    y1: float
    score: float | None = None

    @classmethod
    def of(cls, box: Box) -> BoxOut:
        return cls(x0=box.x0, y0=box.y0, x1=box.x1, y1=box.y1, score=box.score)


class ItemOut(BaseModel):
    key: str
    width: int
    height: int
    boxes: list[BoxOut]
    base_review_id: int | None
    origin: str = Field(description="Where the boxes come from: detections, review, import, none.")
    origin_by: str | None
    reviewers: int = Field(description="People whose accepted review this image has.")
    mine: bool = Field(description="Whether you are one of them.")
    cursor: str | None = Field(description="Send back as ?after= for the next item.")


class ProgressOut(BaseModel):
    total: int
    complete: int
    remaining: int
    reviewed: int
    mine: int
    disagreement: int
    with_detections: int


class NextOut(BaseModel):
    item: ItemOut | None
    progress: ProgressOut


class GoldOut(BaseModel):
    passed: bool
    iou: float
    threshold: float
    truth: list[BoxOut]
    lives_left: int
    lives: int
    restarted: bool
    restored: int
    set_aside: int = Field(description="Your answers of the failed batch that were set aside "
                                       "(restarted only); an admin can reinstate them.")
    failed_batch: int | None = Field(description="The batch that failed (restarted only).")
    message: str


class SavedOut(BaseModel):
    review_id: int | None
    gold: GoldOut | None
    progress: ProgressOut
    lives_left: int
    at_stake: int = Field(description="Your answers in this batch: what running out of lives "
                                      "would set aside.")
    warning: str | None = Field(description="Said before the last life: what failing discards.")


class LatestOut(BaseModel):
    review_id: int | None
    annotator: str | None
    created_at: datetime | None
    boxes: list[BoxOut]


class ConflictOut(BaseModel):
    detail: str
    latest: LatestOut


class SessionOut(BaseModel):
    annotator: str
    reviews_per_image: int
    aggregate: str
    lives: int
    lives_left: int
    batch_size: int
    batch_answered: int
    at_stake: int = Field(description="Your answers in this batch: what running out of lives "
                                      "would set aside.")
    warning: str | None = Field(description="Said before the last life: what failing discards.")
    gold: bool
    uncertain_below: float
    filters: dict[str, str]
    orders: list[str]
    tokens_required: bool
    settings: dict[str, Any] = Field(description="Every review setting in force.")
    changed: dict[str, list[Any]] = Field(
        description="Settings this start of the server changed: name -> [was, now].")
