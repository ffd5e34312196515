"""The review ledger: what ``veil review`` reads and writes around the review rows.

Everything that must be atomic lives here, in one transaction each: saving a review
only if nobody saved a newer one (optimistic concurrency), grading a gold attempt and
spending a life, failing a batch and restoring the answers it had changed, reinstating
a failed batch's answers (appended again, never rewritten). Policy (which image next,
how to aggregate, what passes) is :mod:`veil.review`'s business and comes in as plain
values or a callback. Leases (who is looking at which image) live in the server's
memory, not here.

One module per concern, joined in :class:`ReviewLedger`:

- :mod:`~veil.store.review.annotators`: annotators, tokens, the naming rule;
- :mod:`~veil.store.review.gold`: gold items, attempts and the lives they cost;
- :mod:`~veil.store.review.batches`: batches, failing one, reinstating it;
- :mod:`~veil.store.review.threads`: saving reviews on top of the newest, reading them;
- :mod:`~veil.store.review.steps`: steps they share inside one transaction;
- :mod:`~veil.store.review.records`: the records handed back.

Everything goes through :class:`~veil.store.FaceStore`'s public transaction API.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select, update

from veil.store.review.annotators import (
    MACHINE_PREFIX,
    NAME_PATTERN,
    RESTORE_ANNOTATOR,
    AnnotatorInfo,
    Annotators,
    check_name,
    hash_token,
)
from veil.store.review.batches import Batches
from veil.store.review.gold import GoldStandard
from veil.store.review.records import (
    Batch,
    Conflict,
    FailedBatch,
    FollowUp,
    GoldAttempt,
    GoldItem,
    GradeResult,
    HumanReview,
    Reinstated,
    boxes_from_json,
    boxes_to_json,
    parents_of,
)
from veil.store.review.threads import ReviewThreads
from veil.store.review_schema import REVIEW_TABLES, review_settings_t
from veil.store.schema import Base
from veil.store.store import FaceStore

__all__ = [
    "MACHINE_PREFIX",
    "NAME_PATTERN",
    "RESTORE_ANNOTATOR",
    "AnnotatorInfo",
    "Batch",
    "Conflict",
    "FailedBatch",
    "FollowUp",
    "GoldAttempt",
    "GoldItem",
    "GradeResult",
    "HumanReview",
    "Reinstated",
    "ReviewLedger",
    "boxes_from_json",
    "boxes_to_json",
    "check_name",
    "hash_token",
    "parents_of",
]


class ReviewLedger(Annotators, GoldStandard, Batches, ReviewThreads):
    """Review-session records on top of a :class:`FaceStore` (same database).

    The parts share nothing but ``store``; what one needs of another inside a
    transaction is a function of :mod:`~veil.store.review.steps` or
    :func:`~veil.store.review.batches.restore_after`.
    """

    def __init__(self, store: FaceStore) -> None:
        self.store = store
        Base.metadata.create_all(store.engine, tables=list(REVIEW_TABLES))

    # -- settings (the team's review policy, as the server stored it) -----------------------

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
