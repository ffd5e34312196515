"""The face store: a database of images, runs, detections and reviews.

``FaceStore("faces.sqlite")`` opens (or creates) a SQLite file; any SQLAlchemy URL
(``postgresql+psycopg://...``) works for teams. See :mod:`veil.store.store`. A run's
ledger (:class:`RunLedger`, :mod:`veil.store.ledger`) is a SQLite face store written
without SQLAlchemy.

``FaceStore`` is imported on first use: SQLAlchemy and the table mapping cost ~0.4 s of
start-up, which a command that only needs a ledger or a records type does not pay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from veil.store.ledger import RunLedger
from veil.store.records import ImageRecord, ReviewRecord, RunItem, RunRecord

if TYPE_CHECKING:
    from veil.store.store import DETECTION_RUN_KINDS, FaceStore

__all__ = [
    "DETECTION_RUN_KINDS",
    "FaceStore",
    "ImageRecord",
    "ReviewRecord",
    "RunItem",
    "RunLedger",
    "RunRecord",
]

_LAZY = {"FaceStore", "DETECTION_RUN_KINDS"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from veil.store import store

        return getattr(store, name)
    raise AttributeError(f"module 'veil.store' has no attribute {name!r}")
