"""Plain records the face store takes and gives back (no database types leak out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from veil.boxes import Box


@dataclass(frozen=True)
class ImageRecord:
    """A catalogue entry. ``None`` fields mean "unknown" and never erase known values."""

    key: str
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    label: str | None = None
    status: str = "ok"
    error: str | None = None


@dataclass(frozen=True)
class RunItem:
    """What one run did with one image; "processed, no faces" is ``RunItem(key)``."""

    key: str
    status: str = "ok"
    error: str | None = None
    info: dict[str, Any] | None = None


@dataclass(frozen=True)
class RunRecord:
    id: int
    kind: str
    config: dict[str, Any]
    status: str
    created_at: datetime
    finished_at: datetime | None
    timings: dict[str, Any] | None
    veil_version: str | None
    host: str | None
    shards_total: int = 0
    shards_done: int = 0
    shards_failed: int = 0


@dataclass(frozen=True)
class ReviewRecord:
    id: int
    key: str
    annotator: str
    created_at: datetime
    seconds_spent: float | None
    kind: str
    gold_passed: bool | None
    note: str | None
    run_id: int | None
    boxes: tuple[Box, ...] = field(default_factory=tuple)
