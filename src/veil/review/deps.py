"""FastAPI dependencies: the review service and the database it works on.

The service is created once per app (it holds the in-memory queue); the face store
and its review ledger are handed to routes through it, so a test or another app can
swap either without touching a route.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from veil.review.service import ReviewService
from veil.store import FaceStore
from veil.store.review import ReviewLedger


def get_service(request: Request) -> ReviewService:
    return request.app.state.service


def get_store(service: Annotated[ReviewService, Depends(get_service)]) -> FaceStore:
    """The face store (thread-safe: every call is its own short transaction)."""
    return service.store


def get_ledger(service: Annotated[ReviewService, Depends(get_service)]) -> ReviewLedger:
    return service.ledger


Service = Annotated[ReviewService, Depends(get_service)]
Store = Annotated[FaceStore, Depends(get_store)]
Ledger = Annotated[ReviewLedger, Depends(get_ledger)]
