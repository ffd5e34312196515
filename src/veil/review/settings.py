"""The team's review policy, stored in the face store so that every command agrees.

``veil review serve`` saves the flags it is given; ``export`` and ``stats`` read them
back. Anything never set has the default below. A flag given to a command overrides
the stored value; ``serve`` also records which values its start changed, so the page
and ``veil review stats`` can say what is in force and what changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from veil.errors import VeilError
from veil.store.review import ReviewLedger

AGGREGATES = ("union", "majority")
#: The paper's threshold: a gold answer passes at pixel IoU >= 0.72 of the union masks.
PAPER_GOLD_IOU = 0.72
PAPER_LIVES = 2
#: Where ``serve`` stores what its start changed (not a setting: a record of the change).
LAST_CHANGE = "_last_change"


@dataclass(frozen=True)
class ReviewSettings:
    """How many people look at each image, how their answers combine, how gold works."""

    reviews_per_image: int = 1  # k independent reviews an image needs
    aggregate: str = "union"  # how k answers combine: union (privacy: over-cover) or majority
    gold_rate: float = 0.1  # share of served items that are gold images (when any exist)
    gold_wrong: float = 0.5  # share of gold items shown with deliberately wrong boxes
    gold_iou: float = PAPER_GOLD_IOU  # pass mark: pixel IoU of the union masks
    lives: int = PAPER_LIVES  # failed gold answers an annotator may give per batch
    batch_size: int = 20  # answers per batch (lives are counted per batch)
    uncertain_below: float = 0.5  # detections scoring below this are "uncertain"
    lease_minutes: float = 10.0  # an image served stays with its annotator this long (0: never)

    def __post_init__(self) -> None:
        problems = []
        if self.reviews_per_image < 1:
            problems.append("reviews per image must be at least 1")
        if self.aggregate not in AGGREGATES:
            problems.append(f"aggregate must be one of {', '.join(AGGREGATES)}")
        for name in ("gold_rate", "gold_wrong", "gold_iou", "uncertain_below"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name.replace('_', ' ')} must be within 0..1")
        if self.lives < 1:
            problems.append("lives must be at least 1")
        if self.lease_minutes < 0:
            problems.append("lease minutes must be at least 0")
        if self.batch_size < 1:
            problems.append("batch size must be at least 1")
        if problems:
            raise VeilError("review settings: " + "; ".join(problems))

    @classmethod
    def load(cls, ledger: ReviewLedger, overrides: Mapping[str, Any] | None = None,
             *, save: bool = False) -> ReviewSettings:
        """Stored settings with ``overrides`` (None values ignored) on top; ``save``
        stores the overrides for the next command."""
        return cls.resolve(ledger, overrides, save=save).settings

    @classmethod
    def resolve(cls, ledger: ReviewLedger, overrides: Mapping[str, Any] | None = None,
                *, save: bool = False) -> Resolved:
        """The settings in force (given over stored over defaults) and what the given
        values change; ``save`` stores them and records the change for ``stats``."""
        names = {f.name for f in fields(cls)}
        stored_all = ledger.settings()
        stored = {k: v for k, v in stored_all.items() if k in names}
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        unknown = set(given) - names
        if unknown:
            raise ValueError(f"unknown review settings: {', '.join(sorted(unknown))}")
        before = cls(**stored)
        settings = cls(**{**stored, **given})
        changed = {name: (getattr(before, name), value) for name, value in given.items()
                   if getattr(before, name) != value}
        resolved = Resolved(settings, changed, stored_all.get(LAST_CHANGE))
        if save:
            return resolved.remember(ledger, given)
        return resolved

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Resolved:
    """Settings in force, what this command's flags changed (name -> (was, now)), and
    the change the last ``serve`` recorded (for commands that change nothing)."""

    settings: ReviewSettings
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    last_change: dict[str, Any] | None = None

    def remember(self, ledger: ReviewLedger, given: Mapping[str, Any]) -> Resolved:
        """Store ``given`` for later commands and record what this start changed."""
        given = {k: v for k, v in given.items() if v is not None}
        if not given:
            return self
        record = {"at": datetime.now(UTC).isoformat(timespec="seconds"),
                  "changed": {k: list(v) for k, v in self.changed.items()}}
        ledger.save_settings({**given, LAST_CHANGE: record})
        return Resolved(self.settings, self.changed, record)
