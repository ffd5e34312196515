"""Which image an annotator sees next: filters, ordering, progress.

The queue is an in-memory index over the review's images, kept in step with the
database by reading only the reviews newer than the last one it saw (a batch that
failed its gold checks triggers a full re-read, which is rare). The database stays
the authority: the queue only chooses what to show; saving checks concurrency in SQL.

Ordering ``priority`` puts first the images a person is most needed for: those with
an uncertain detection (score below ``uncertain_below``; most detections, then lowest
score first), then the other images with detections (most first), then images without
detections. Ordering ``key`` is the dataset's order.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from veil.boxes import Box
from veil.review.agreement import pairwise_ious
from veil.store.review import HumanReview, ReviewLedger

FILTERS = ("todo", "detections", "unreviewed", "disagreement", "all")
ORDERS = ("priority", "key")
FILTER_HELP = {
    "todo": "needs more reviews, not yet reviewed by you",
    "detections": "to do, and the detector found faces",
    "unreviewed": "never reviewed by anyone",
    "disagreement": "reviewers disagree (mask IoU below the gold pass mark)",
    "all": "every image, to browse and revise",
}


@dataclass(frozen=True)
class Progress:
    total: int  # images under review (gold images excluded)
    complete: int  # with as many accepted reviews as the policy asks
    reviewed: int  # with at least one accepted review
    mine: int  # reviewed by this annotator
    disagreement: int
    with_detections: int

    @property
    def remaining(self) -> int:
        return self.total - self.complete


def _priority(key: str, stats: tuple[int, float] | None, uncertain_below: float) -> tuple:
    if stats is None:
        return (2, 0, 0.0, key)
    n, low = stats
    if low < uncertain_below:
        return (0, -n, low, key)
    return (1, -n, 0.0, key)


class ReviewQueue:
    """The review's images, what each annotator has answered, and what comes next."""

    def __init__(
        self,
        keys: Sequence[str],
        detections: Mapping[str, Sequence[Box]],
        *,
        reviews_per_image: int,
        uncertain_below: float,
        agree_iou: float,
    ) -> None:
        self.k = reviews_per_image
        self.agree_iou = agree_iou
        self._dets: dict[str, tuple[int, float]] = {}
        for key, boxes in detections.items():
            if boxes:
                scores = [b.score for b in boxes if b.score is not None]
                self._dets[key] = (len(boxes), min(scores) if scores else 1.0)
        ordered = sorted(keys)
        self._all = set(ordered)
        self._orders = {
            "key": ordered,
            "priority": sorted(
                ordered, key=lambda k: _priority(k, self._dets.get(k), uncertain_below)
            ),
        }
        self._rank = {name: {k: i for i, k in enumerate(seq)} for name, seq in
                      self._orders.items()}
        self._gold: frozenset[str] = frozenset()
        self._unreadable: set[str] = set()
        self._lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        # key -> annotator -> (review id, boxes) of their latest accepted review
        self._answers: dict[str, dict[str, tuple[int, tuple[Box, ...]]]] = {}
        self._complete: set[str] = set()
        self._disagree: set[str] = set()
        self._mine: dict[str, int] = {}
        self._frontier = dict.fromkeys(self._orders, 0)
        self._last_id = 0
        self._failed_seen = -1

    # -- keeping up with the database -----------------------------------------------------------

    def refresh(self, ledger: ReviewLedger, gold_keys: Iterable[str] = ()) -> None:
        """Take in the reviews saved since the last refresh (by anyone, anywhere)."""
        with self._lock:
            self._gold = frozenset(gold_keys)
            failed = ledger.failed_batches()
            if failed != self._failed_seen:
                self._reset()
                self._failed_seen = failed
            new = ledger.human_reviews(after_id=self._last_id)
            self.ingest(new)

    def ingest(self, reviews: Iterable[HumanReview]) -> None:
        touched: set[str] = set()
        with self._lock:
            for review in reviews:
                self._last_id = max(self._last_id, review.id)
                if review.rejected or review.key not in self._all:
                    continue
                answers = self._answers.setdefault(review.key, {})
                if review.annotator not in answers:
                    self._mine[review.annotator] = self._mine.get(review.annotator, 0) + 1
                previous = answers.get(review.annotator)
                if previous is None or previous[0] < review.id:
                    answers[review.annotator] = (review.id, review.boxes)
                touched.add(review.key)
            for key in touched:
                self._update(key)

    def _update(self, key: str) -> None:
        answers = self._answers.get(key, {})
        if len(answers) >= self.k:
            self._complete.add(key)
        else:
            self._complete.discard(key)
        if len(answers) >= 2 and min(pairwise_ious([b for _, b in answers.values()])) < \
                self.agree_iou:
            self._disagree.add(key)
        else:
            self._disagree.discard(key)

    # -- asking -----------------------------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        return key in self._all

    def reviewers(self, key: str) -> dict[str, tuple[int, tuple[Box, ...]]]:
        with self._lock:
            return dict(self._answers.get(key, {}))

    def set_aside(self, key: str) -> None:
        """Leave out an image that cannot be shown (it stays in the totals)."""
        with self._lock:
            self._unreadable.add(key)

    def matches(self, key: str, filter_name: str, annotator: str) -> bool:
        if key in self._gold or key not in self._all or key in self._unreadable:
            return False
        answers = self._answers.get(key, {})
        if filter_name == "all":
            return True
        if filter_name == "disagreement":
            return key in self._disagree
        if filter_name == "unreviewed":
            return not answers
        todo = len(answers) < self.k and annotator not in answers
        if filter_name == "detections":
            return todo and key in self._dets
        return todo

    def next_key(
        self, annotator: str, filter_name: str = "todo", order: str = "priority",
        after: str | None = None,
    ) -> str | None:
        """The first key of the filter that comes after ``after`` in the order."""
        if filter_name not in FILTERS:
            raise ValueError(f"unknown filter {filter_name!r}")
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}")
        with self._lock:
            seq, rank = self._orders[order], self._rank[order]
            start = rank[after] + 1 if after in rank else 0
            if filter_name == "disagreement":
                later = [rank[k] for k in self._disagree
                         if rank[k] >= start and self.matches(k, filter_name, annotator)]
                return seq[min(later)] if later else None
            if filter_name != "all":
                # Everything before the frontier is complete: never part of these filters.
                frontier = self._frontier[order]
                while frontier < len(seq) and seq[frontier] in self._complete:
                    frontier += 1
                self._frontier[order] = frontier
                start = max(start, frontier)
            for i in range(start, len(seq)):
                if self.matches(seq[i], filter_name, annotator):
                    return seq[i]
            return None

    def progress(self, annotator: str) -> Progress:
        with self._lock:
            gold = self._gold & self._all
            return Progress(
                total=len(self._all) - len(gold),
                complete=len(self._complete - gold),
                reviewed=len(self._answers.keys() - gold),
                mine=self._mine.get(annotator, 0),
                disagreement=len(self._disagree - gold),
                with_detections=len(self._dets.keys() - gold),
            )

    def detection_count(self, key: str) -> int:
        stats = self._dets.get(key)
        return 0 if stats is None else stats[0]
