"""What the review app does, independent of HTTP: serve items, save answers, grade gold.

One :class:`ReviewService` per server. It owns the in-memory queue and reads and writes
the face store through :class:`~veil.store.review.ReviewLedger`, whose transactions
make concurrent saves safe (the queue may lag; the database decides).
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from veil.boxes import Box
from veil.datasets import Dataset
from veil.errors import ImageError, VeilError
from veil.review import gold as gold_mod
from veil.review.agreement import aggregate
from veil.review.images import ImageServer
from veil.review.queue import ReviewQueue
from veil.review.settings import ReviewSettings
from veil.store import FaceStore, ImageRecord
from veil.store.review import (
    MACHINE_PREFIX,
    Batch,
    Conflict,
    GoldItem,
    HumanReview,
    ReviewLedger,
)

log = logging.getLogger(__name__)

#: Filters that hand out work (leased); "all" and "disagreement" are for browsing.
LEASED_FILTERS = ("todo", "detections", "unreviewed")


class NotFound(VeilError):
    """The key is not an image of this review (unknown, not in the dataset, or hidden)."""


class Forbidden(VeilError):
    """The request is understood but not allowed for this annotator."""


class Invalid(VeilError):
    """The answer cannot be right for this image (boxes outside it, ...)."""


@dataclass(frozen=True)
class Item:
    """An image to review and the boxes to start from."""

    key: str
    width: int
    height: int
    boxes: tuple[Box, ...]
    base_review_id: int | None  # the review these boxes come from (send it back on save)
    origin: str  # detections | review | import | none
    origin_by: str | None
    reviewers: int
    mine: bool
    cursor: str | None  # pass back as ``after`` to get the next item


@dataclass(frozen=True)
class GoldOutcome:
    passed: bool
    iou: float
    threshold: float
    truth: tuple[Box, ...]
    lives_left: int
    lives: int
    restarted: bool
    restored: int
    set_aside: int = 0  # answers of the failed batch set aside (restarted only)
    failed_batch: int | None = None  # the batch that failed (restarted only)


@dataclass(frozen=True)
class SaveOutcome:
    review_id: int | None = None
    gold: GoldOutcome | None = None
    conflict: Conflict | None = None
    conflict_start: Item | None = None  # when the newest answer is no review at all


@dataclass
class ReviewService:
    store: FaceStore
    dataset: Dataset
    settings: ReviewSettings
    local_annotator: str | None = None  # who requests without a token are (None: nobody)
    secret: str = field(default_factory=lambda: secrets.token_hex(16))
    follow_links: bool = False  # serve files that are links leading out of the dataset
    #: settings this start changed: name -> (stored before, now in force)
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ledger = ReviewLedger(self.store)
        self.images = ImageServer(self.dataset, follow_links=self.follow_links)
        known = {rec.key: rec for rec in self.store.images(self.dataset.keys())}
        missing = [ImageRecord(e.key, label=e.label) for e in self.dataset if e.key not in known]
        if missing:
            self.store.register_images(missing)
        self.keys = [k for k in self.dataset.keys() if k not in known or
                     known[k].status != "error"]
        self._key_set = frozenset(self.keys)
        s = self.settings
        self.queue = ReviewQueue(
            self.keys, self.store.detections(keys=self.keys),
            reviews_per_image=s.reviews_per_image, uncertain_below=s.uncertain_below,
            agree_iou=s.gold_iou,
        )
        self._gold: dict[str, GoldItem] = {}
        self._sized = {k for k, rec in known.items() if rec.width is not None}
        self._refresh_lock = threading.Lock()
        self._cursors: OrderedDict[str, str | None] = OrderedDict()
        self._leases: dict[str, dict[str, float]] = {}  # key -> annotator -> expiry
        self._hand_out_lock = threading.Lock()  # cursors and leases (not the database)
        self.refresh()

    # -- state --------------------------------------------------------------------------------

    def refresh(self) -> None:
        with self._refresh_lock:
            self._gold = {g.key: g for g in self.ledger.gold_items() if g.key in self._key_set}
            self.queue.refresh(self.ledger, self._gold)

    @property
    def independent(self) -> bool:
        """k > 1: each annotator answers on their own (never sees the others' boxes)."""
        return self.settings.reviews_per_image > 1

    def batch(self, annotator: str) -> Batch:
        s = self.settings
        return self.ledger.open_batch(annotator, size=s.batch_size, lives=s.lives)

    def gold_keys(self) -> frozenset[str]:
        return frozenset(self._gold)

    def has_open_attempt(self, annotator: str, key: str) -> bool:
        return self._open_attempt(annotator, key) is not None

    def check_key(self, key: str) -> None:
        if key not in self._key_set:
            raise NotFound(f"no image {key!r} in this review")

    # -- cursors ------------------------------------------------------------------------------

    #: Cursors remembered (oldest forgotten first; a forgotten one starts the queue over).
    MAX_CURSORS = 200_000

    def cursor(self, after: str | None) -> str:
        """A fresh, opaque cursor meaning "continue after ``after``".

        Every item gets a new random one, so a gold item (which continues after the
        image before it) cannot be told from a normal one by its cursor.
        """
        token = secrets.token_urlsafe(12)
        with self._hand_out_lock:
            self._cursors[token] = after
            while len(self._cursors) > self.MAX_CURSORS:
                self._cursors.popitem(last=False)
        return token

    def position(self, cursor: str | None) -> str | None:
        """The key a cursor continues after (None: from the start)."""
        if cursor is None:
            return None
        with self._hand_out_lock:
            if cursor in self._cursors:
                return self._cursors[cursor]
        return cursor if cursor in self._key_set else None

    # -- leases -------------------------------------------------------------------------------

    def _taken(self, key: str, annotator: str, now: float) -> bool:
        """Whether others hold enough live leases on ``key`` to cover the reviews it
        still needs (then ``annotator`` is given another image)."""
        with self._hand_out_lock:
            holders = dict(self._leases.get(key, {}))
        others = sum(1 for who, until in holders.items() if who != annotator and until > now)
        if not others:
            return False
        reviewers = self.queue.reviewers(key)
        return len(reviewers) + others >= self.settings.reviews_per_image

    def _lease(self, key: str, annotator: str, now: float) -> None:
        minutes = self.settings.lease_minutes
        if minutes <= 0:
            return
        with self._hand_out_lock:
            for held in self._leases.values():  # one image at a time per annotator
                held.pop(annotator, None)
            self._leases = {k: v for k, v in self._leases.items() if v}
            self._leases.setdefault(key, {})[annotator] = now + 60 * minutes

    def release(self, key: str, annotator: str) -> None:
        """``annotator`` is done with ``key`` (saved): others may be given it."""
        with self._hand_out_lock:
            held = self._leases.get(key)
            if held is not None:
                held.pop(annotator, None)

    # -- items --------------------------------------------------------------------------------

    def item(self, key: str, annotator: str, cursor: str | None = None) -> Item:
        """The image ``key`` as ``annotator`` should start reviewing it."""
        self.check_key(key)
        width, height = self.images.size(key)
        reviewers = self.queue.reviewers(key)
        if key in self._gold:
            attempt = self._open_attempt(annotator, key)
            if attempt is None:
                raise NotFound(f"no image {key!r} in this review")
            return Item(key, width, height, attempt.shown, None, "detections", None, 0, False,
                        cursor)
        head = self.ledger.thread_head(key, annotator if self.independent else None)
        base = head.id if head is not None else None
        if head is None and self.independent:
            head = self.ledger.latest_of_kind(key, "import")
        if head is not None:
            origin = "import" if head.kind == "import" else "review"
            return Item(key, width, height, head.boxes, base, origin, head.annotator,
                        len(reviewers), annotator in reviewers, cursor)
        detections = self.store.detections(keys=[key])
        origin = "detections" if key in detections else "none"
        boxes = tuple(detections.get(key, ()))
        return Item(key, width, height, boxes, None, origin, None, len(reviewers),
                    annotator in reviewers, cursor)

    def _open_attempt(self, annotator: str, key: str) -> Any:
        batch = self.batch(annotator)
        found = self.ledger.attempts(annotator=annotator, key=key, batch_id=batch.id,
                                     answered=False)
        return found[0] if found else None

    def next_item(
        self, annotator: str, filter_name: str = "todo", order: str = "priority",
        after: str | None = None,
    ) -> Item | None:
        """The next item: the queue's next image, or now and then a gold image.

        An image that cannot be read is logged and set aside, so one broken file
        never blocks the queue (it can be fixed and the server restarted).
        """
        self.refresh()
        after = self.position(after)
        leasing = filter_name in LEASED_FILTERS and self.settings.lease_minutes > 0
        now = time.monotonic()
        start = after
        while True:
            key = self.queue.next_key(annotator, filter_name, order, start)
            if key is None:
                return None
            if leasing and self._taken(key, annotator, now):
                start = key  # someone else is on it: offer the next one
                continue
            try:
                self.images.size(key)
            except ImageError as exc:
                log.warning("veil review: %s set aside: %s", key, exc)
                self.queue.set_aside(key)
                continue
            break
        gold = self._maybe_gold(annotator, after)
        if gold is not None:
            return gold
        if leasing:
            self._lease(key, annotator, now)
        return self.item(key, annotator, cursor=self.cursor(key))

    def _maybe_gold(self, annotator: str, after: str | None) -> Item | None:
        s = self.settings
        if not self._gold or s.gold_rate <= 0:
            return None
        batch = self.batch(annotator)
        serial = self.ledger.count_served(batch.id)
        rng = random.Random(f"{self.secret}/{annotator}/{batch.id}/{serial}")
        if rng.random() >= s.gold_rate:
            return None
        pending = self.ledger.attempts(annotator=annotator, batch_id=batch.id, answered=False)
        pending = [a for a in pending if a.key in self._gold]
        if pending:
            return self.item(pending[0].key, annotator, cursor=self.cursor(after))
        seen: dict[str, int] = {}
        for attempt in self.ledger.attempts(annotator=annotator):
            seen[attempt.key] = seen.get(attempt.key, 0) + 1
        chosen = gold_mod.choose(sorted(self._gold.values(), key=lambda g: g.key), seen, rng)
        size = self.images.size(chosen.key)
        shown = gold_mod.shown_boxes(chosen.boxes, size, wrong_rate=s.gold_wrong,
                                     threshold=s.gold_iou, rng=rng)
        self.ledger.open_attempt(batch.id, annotator, chosen, shown)
        return self.item(chosen.key, annotator, cursor=self.cursor(after))

    # -- answers ------------------------------------------------------------------------------

    def validate(self, key: str, boxes: Sequence[Box]) -> None:
        width, height = self.images.size(key)
        for i, b in enumerate(boxes):
            if b.x0 < 0 or b.y0 < 0 or b.x1 > width or b.y1 > height:
                raise Invalid(
                    f"box {i} ({b.x0:g}, {b.y0:g}, {b.x1:g}, {b.y1:g}) reaches outside the "
                    f"{width}x{height} image"
                )

    def save(
        self, key: str, annotator: str, boxes: Sequence[Box], *, base_review_id: int | None,
        seconds: float | None,
    ) -> SaveOutcome:
        self.check_key(key)
        self.validate(key, boxes)
        if key in self._gold:
            attempt = self._open_attempt(annotator, key)
            if attempt is None:
                raise Forbidden(f"{key!r} is a gold-standard image; it is answered only "
                                "when the review serves it to you")
            return SaveOutcome(gold=self._grade(attempt, boxes, seconds))
        s = self.settings
        result = self.ledger.save_review(
            key, boxes, annotator=annotator, base_review_id=base_review_id,
            per_annotator=self.independent, batch_size=s.batch_size, lives=s.lives,
            seconds=seconds, follow_up=self._consensus if self.independent else None,
        )
        if isinstance(result, Conflict):
            start = None if result.latest is not None else self.item(key, annotator)
            return SaveOutcome(conflict=result, conflict_start=start)
        self.release(key, annotator)
        if key not in self._sized:  # so that COCO exports know the image's size
            width, height = self.images.size(key)
            self.store.register_images([ImageRecord(key, width, height)])
            self._sized.add(key)
        self.refresh()
        return SaveOutcome(review_id=result)

    def _grade(self, attempt: Any, boxes: Sequence[Box], seconds: float | None) -> GoldOutcome:
        s = self.settings
        size = self.images.size(attempt.key)
        passed, iou = gold_mod.grade(boxes, attempt.truth, size, s.gold_iou)
        result = self.ledger.grade_attempt(attempt.id, boxes, passed=passed, iou=iou,
                                           seconds=seconds)
        restarted = result.batch.status == "failed"
        if restarted:
            self.refresh()
        lives_left = result.batch.lives_left if result.batch.status == "open" else s.lives
        return GoldOutcome(passed, iou, s.gold_iou, attempt.truth, lives_left, s.lives,
                           restarted, len(result.restored), result.set_aside,
                           result.batch.id if restarted else None)

    def at_stake(self, annotator: str) -> int:
        """The answers in ``annotator``'s open batch: what running out of lives sets aside."""
        return self.ledger.answers_in_batch(self.batch(annotator).id)

    def _consensus(
        self, key: str, reviews: list[HumanReview]
    ) -> tuple[str, list[Box], dict[str, Any]] | None:
        return consensus(self.settings, key, reviews)


def consensus(
    settings: ReviewSettings, key: str, reviews: list[HumanReview]
) -> tuple[str, list[Box], dict[str, Any]] | None:
    """The consensus row to append once an image has k accepted answers (k > 1)."""
    del key
    latest: dict[str, HumanReview] = {}
    for review in reviews:
        if not review.rejected:
            latest[review.annotator] = review
    if len(latest) < settings.reviews_per_image:
        return None
    policy = settings.aggregate
    used = sorted(latest.values(), key=lambda r: r.id)
    boxes = aggregate([r.boxes for r in used], policy)
    return f"{MACHINE_PREFIX}{policy}", boxes, {
        "consensus": policy, "reviews": [r.id for r in used],
    }
