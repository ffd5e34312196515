"""Who is reviewing, under which policy, and how the team is doing."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from veil.review.auth import Annotator
from veil.review.deps import Ledger, Service
from veil.review.models import SessionOut
from veil.review.queue import FILTER_HELP, ORDERS
from veil.review.routers.items import stake_warning
from veil.review.stats import team_stats

router = APIRouter(prefix="/api", tags=["team"])


@router.get("/session", response_model=SessionOut)
def session(service: Service, annotator: Annotator) -> SessionOut:
    """Who you are, the review's policy, and your lives in the current batch."""
    s = service.settings
    batch = service.batch(annotator)
    at_stake = service.ledger.answers_in_batch(batch.id)
    gold = bool(service.gold_keys()) and s.gold_rate > 0
    return SessionOut(
        annotator=annotator, reviews_per_image=s.reviews_per_image, aggregate=s.aggregate,
        lives=s.lives, lives_left=batch.lives_left, batch_size=batch.size,
        batch_answered=batch.answered, gold=gold, at_stake=at_stake,
        warning=stake_warning(batch.lives_left, at_stake) if gold else None,
        uncertain_below=s.uncertain_below,
        filters=FILTER_HELP, orders=list(ORDERS),
        tokens_required=service.local_annotator is None,
        settings=s.as_dict(), changed={k: list(v) for k, v in service.changed.items()},
    )


@router.get("/stats")
def stats(service: Service, ledger: Ledger, annotator: Annotator) -> dict[str, Any]:
    """Progress, per-annotator throughput and gold accuracy, and agreement."""
    del annotator  # only people of the review may see it
    return team_stats(ledger, service.settings, service.keys)
