"""The face store: a database of images, runs, detections and reviews.

``FaceStore("faces.sqlite")`` opens (or creates) a SQLite file; any SQLAlchemy URL
(``postgresql+psycopg://...``) works for teams. See :mod:`veil.store.store`.
"""

from veil.store import review_schema  # noqa: F401  (registers the review tables on the metadata)
from veil.store.records import ImageRecord, ReviewRecord, RunItem, RunRecord
from veil.store.store import DETECTION_RUN_KINDS, FaceStore

__all__ = [
    "DETECTION_RUN_KINDS",
    "FaceStore",
    "ImageRecord",
    "ReviewRecord",
    "RunItem",
    "RunRecord",
]
