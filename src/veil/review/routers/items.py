"""Images to review, their pixels, and answers."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import FileResponse, JSONResponse, Response

from veil.errors import ImageError
from veil.review.auth import Annotator
from veil.review.deps import Service
from veil.review.models import (
    BoxOut,
    ConflictOut,
    GoldOut,
    ItemOut,
    LatestOut,
    NextOut,
    ProgressOut,
    ReviewIn,
    SavedOut,
)
from veil.review.queue import FILTERS, ORDERS
from veil.review.service import Forbidden, GoldOutcome, Invalid, Item, NotFound, ReviewService

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["review"])

FilterParam = Annotated[str, Query(pattern="^(" + "|".join(FILTERS) + ")$")]
OrderParam = Annotated[str, Query(pattern="^(" + "|".join(ORDERS) + ")$")]


def item_out(item: Item) -> ItemOut:
    return ItemOut(
        key=item.key, width=item.width, height=item.height,
        boxes=[BoxOut.of(b) for b in item.boxes], base_review_id=item.base_review_id,
        origin=item.origin, origin_by=item.origin_by, reviewers=item.reviewers,
        mine=item.mine, cursor=item.cursor,
    )


def progress_out(service: ReviewService, annotator: str) -> ProgressOut:
    p = service.queue.progress(annotator)
    return ProgressOut(total=p.total, complete=p.complete, remaining=p.remaining,
                       reviewed=p.reviewed, mine=p.mine, disagreement=p.disagreement,
                       with_detections=p.with_detections)


def _gold_message(g: GoldOutcome) -> str:
    if g.passed:
        return ("Well done: that was a gold-standard image, and your answer matches "
                f"(IoU {g.iou:.2f}).")
    text = (f"That was a gold-standard image and your answer missed it (IoU {g.iou:.2f}, "
            f"needs {g.threshold:.2f}). The correct boxes are shown in green.")
    if g.restarted:
        answers = f"{g.set_aside} answer{'' if g.set_aside == 1 else 's'}"
        return text + (f" You are out of lives: the {answers} you saved in this batch "
                       f"(batch {g.failed_batch}) were set aside and those images are to do "
                       "again; an admin can inspect them (`veil review stats`) and put them "
                       f"back. A new batch starts with {g.lives} lives.")
    return text + f" Lives left: {g.lives_left} of {g.lives}."


def stake_warning(lives_left: int, at_stake: int) -> str | None:
    """What failing the next gold check would discard, said while one life is left."""
    if lives_left != 1:
        return None
    answers = f"{at_stake} answer{'' if at_stake == 1 else 's'}"
    return (f"Last life: one more missed gold-standard check sets aside the {answers} you "
            "saved in this batch.")


def _errors(exc: Exception) -> HTTPException:
    if isinstance(exc, NotFound):
        return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))
    if isinstance(exc, Forbidden):
        return HTTPException(status.HTTP_403_FORBIDDEN, str(exc))
    if isinstance(exc, Invalid):
        return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))
    if isinstance(exc, ImageError):
        # Never the reason over HTTP: it may quote the file (a link to /etc/passwd
        # "looks like text: 'root:x:0:0'"). The server's log has it.
        log.warning("veil review: cannot read an image: %s", exc)
        return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                             "cannot read this image (the review server's log says why)")
    raise exc


@router.get("/next", response_model=NextOut)
def next_item(
    service: Service, annotator: Annotator, filter: FilterParam = "todo",
    order: OrderParam = "priority", after: str | None = None,
) -> NextOut:
    """The next image to review after ``after`` (a cursor from the previous item)."""
    try:
        item = service.next_item(annotator, filter, order, after)
    except (NotFound, ImageError) as exc:
        raise _errors(exc) from exc
    return NextOut(item=None if item is None else item_out(item),
                   progress=progress_out(service, annotator))


@router.get("/items/{key:path}", response_model=ItemOut)
def get_item(key: str, service: Service, annotator: Annotator) -> ItemOut:
    """One image and the boxes to start reviewing it from."""
    try:
        return item_out(service.item(key, annotator, cursor=service.cursor(key)))
    except (NotFound, ImageError) as exc:
        raise _errors(exc) from exc


@router.get("/images/{key:path}")
def get_image(key: str, service: Service, annotator: Annotator) -> Response:
    """The image as displayed (EXIF orientation applied, identifying metadata removed)."""
    try:
        service.check_key(key)
        if key in service.gold_keys() and not service.has_open_attempt(annotator, key):
            raise NotFound(f"no image {key!r} in this review")
        served = service.images.serve(key)
    except (NotFound, ImageError) as exc:
        raise _errors(exc) from exc
    headers = {"Cache-Control": "private, max-age=3600"}
    if served.path is not None:
        return FileResponse(served.path, media_type=served.media_type, headers=headers)
    return Response(served.data, media_type=served.media_type, headers=headers)


@router.post(
    "/items/{key:path}/review", response_model=SavedOut,
    responses={409: {"model": ConflictOut}, 404: {}, 403: {}, 422: {}},
)
def save_review(key: str, body: ReviewIn, service: Service, annotator: Annotator) -> Response:
    """Save a complete answer for the image (no boxes: no faces here).

    Send ``base_review_id`` from the item: if someone saved a newer answer meanwhile,
    nothing is saved and the answer is 409 with the newest boxes.
    """
    boxes = [b.to_box() for b in body.boxes]
    try:
        outcome = service.save(key, annotator, boxes, base_review_id=body.base_review_id,
                               seconds=body.seconds)
    except (NotFound, Forbidden, Invalid, ImageError) as exc:
        raise _errors(exc) from exc
    if outcome.conflict is not None:
        latest = outcome.conflict.latest
        if latest is not None:
            out = LatestOut(review_id=latest.id, annotator=latest.annotator,
                            created_at=latest.created_at,
                            boxes=[BoxOut.of(b) for b in latest.boxes])
            who = f"{latest.annotator} saved this image at {latest.created_at:%H:%M:%S} UTC"
        else:
            start = outcome.conflict_start
            out = LatestOut(review_id=None, annotator=None, created_at=None,
                            boxes=[BoxOut.of(b) for b in (start.boxes if start else ())])
            who = "the answer you started from was set aside"
        body_out = ConflictOut(
            detail=f"Not saved: {who} after you opened it; look at their boxes and save again.",
            latest=out,
        )
        return JSONResponse(body_out.model_dump(mode="json"), status.HTTP_409_CONFLICT)
    gold = None
    if outcome.gold is not None:
        g = outcome.gold
        gold = GoldOut(passed=g.passed, iou=round(g.iou, 4), threshold=g.threshold,
                       truth=[BoxOut.of(b) for b in g.truth], lives_left=g.lives_left,
                       lives=g.lives, restarted=g.restarted, restored=g.restored,
                       set_aside=g.set_aside, failed_batch=g.failed_batch,
                       message=_gold_message(g))
    batch = service.batch(annotator)
    at_stake = service.ledger.answers_in_batch(batch.id)
    gold_on = bool(service.gold_keys()) and service.settings.gold_rate > 0
    saved = SavedOut(review_id=outcome.review_id, gold=gold,
                     progress=progress_out(service, annotator), lives_left=batch.lives_left,
                     at_stake=at_stake,
                     warning=stake_warning(batch.lives_left, at_stake) if gold_on else None)
    return JSONResponse(saved.model_dump(mode="json"))
