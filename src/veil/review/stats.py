"""Team statistics: progress, throughput and gold accuracy per annotator, agreement.

Computed from the database alone (one pass over people's reviews), so the stats page
of a running server and ``veil review stats`` give the same numbers.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from veil.review.agreement import mask_iou
from veil.review.settings import LAST_CHANGE, ReviewSettings
from veil.store.review import HumanReview, ReviewLedger


def latest_answers(
    reviews: Iterable[HumanReview],
) -> Iterator[tuple[str, dict[str, HumanReview]]]:
    """(key, annotator -> latest accepted, independent review) from reviews sorted by key.

    An answer made on top of another person's review (its author saw and edited it:
    the usual case with one review per image) supersedes that review, so only the
    newer one is kept. What remains are independent answers: with k > 1 each person
    starts from their own, and those are the answers that aggregation combines.
    Rejected reviews are never kept, but still link an answer to what it was made on.
    """
    for key, group in itertools.groupby(reviews, key=lambda r: r.key):
        parents: dict[int, tuple[int, ...]] = {}
        latest: dict[str, HumanReview] = {}
        for review in group:
            parents[review.id] = review.parents
            if not review.rejected and (review.annotator not in latest
                                        or latest[review.annotator].id < review.id):
                latest[review.annotator] = review
        superseded: set[int] = set()
        for review in latest.values():
            superseded |= _ancestors(review.id, parents)
        kept = {name: r for name, r in latest.items() if r.id not in superseded}
        if kept:
            yield key, kept


def _ancestors(review_id: int, parents: dict[int, tuple[int, ...]]) -> set[int]:
    """Every review ``review_id`` was made on top of, directly or through others."""
    seen: set[int] = set()
    todo = list(parents.get(review_id, ()))
    while todo:
        rid = todo.pop()
        if rid not in seen:
            seen.add(rid)
            todo.extend(parents.get(rid, ()))
    return seen


@dataclass
class _Person:
    reviews: int = 0
    images: int = 0
    rejected: int = 0
    seconds: float = 0.0
    timed: int = 0


def team_stats(
    ledger: ReviewLedger, settings: ReviewSettings, keys: Collection[str] | None = None
) -> dict[str, Any]:
    """Progress over ``keys`` (default: every image in the store), per-annotator work
    and gold accuracy, and agreement (mean pairwise pixel IoU of answers)."""
    gold_keys = {g.key for g in ledger.gold_items()}
    universe = set(ledger.store.keys() if keys is None else keys) - gold_keys
    people: dict[str, _Person] = {}
    complete = reviewed = multi = 0
    agree_all: list[float] = []
    per_pair: dict[tuple[str, str], list[float]] = {}
    k = settings.reviews_per_image

    def person(name: str) -> _Person:
        return people.setdefault(name, _Person())

    def reviews() -> Iterator[HumanReview]:
        seen: set[str] = set()  # who has an accepted review of the current key
        last_key = None
        for review in ledger.iter_human_reviews():
            p = person(review.annotator)
            if review.key != last_key:
                seen, last_key = set(), review.key
            if review.rejected:
                p.rejected += 1
            else:
                p.reviews += 1
                if review.annotator not in seen:
                    seen.add(review.annotator)
                    p.images += 1
                if review.seconds is not None:
                    p.seconds += review.seconds
                    p.timed += 1
            yield review  # rejected ones too: they link answers to what they were made on

    for key, latest in latest_answers(reviews()):
        if key not in universe:
            continue
        reviewed += 1
        complete += len(latest) >= k
        multi += len(latest) >= 2
        for (a, ra), (b, rb) in itertools.combinations(sorted(latest.items()), 2):
            iou = mask_iou(ra.boxes, rb.boxes)
            agree_all.append(iou)
            per_pair.setdefault((a, b), []).append(iou)

    gold = ledger.gold_accuracy()
    failed = ledger.failed_batches_by_annotator()
    annotators = []
    for name in sorted(set(people) | set(gold) | set(failed)):
        p = people.get(name, _Person())
        answered, passed = gold.get(name, (0, 0))
        annotators.append({
            "annotator": name,
            "reviews": p.reviews,
            "images": p.images,
            "rejected": p.rejected,
            "seconds": round(p.seconds, 1),
            "seconds_per_image": round(p.seconds / p.timed, 2) if p.timed else None,
            "images_per_hour": round(3600 * p.timed / p.seconds, 1) if p.seconds > 0 else None,
            "gold_answered": answered,
            "gold_passed": passed,
            "gold_accuracy": round(passed / answered, 4) if answered else None,
            "failed_batches": failed.get(name, 0),
        })
    threshold = settings.gold_iou
    last_change = ledger.settings().get(LAST_CHANGE)
    set_aside = [
        {"batch": f.id, "annotator": f.annotator,
         "ended_at": f.ended_at.isoformat(timespec="seconds") if f.ended_at else None,
         "answers": f.set_aside, "images": f.images,
         "reinstated_at": (f.reinstated_at.isoformat(timespec="seconds")
                           if f.reinstated_at else None)}
        for f in ledger.failed_batch_list()
    ]
    return {
        "settings": settings.as_dict(),
        "last_change": last_change if isinstance(last_change, dict) else None,
        "images": len(universe),
        "gold_images": len(gold_keys),
        "reviewed": reviewed,
        "complete": complete,
        "remaining": len(universe) - complete,
        "annotators": annotators,
        "set_aside": set_aside,
        "agreement": {
            "images": multi,
            "pairs": len(agree_all),
            "mean_iou": round(sum(agree_all) / len(agree_all), 4) if agree_all else None,
            "share_agreeing": (round(sum(v >= threshold for v in agree_all) / len(agree_all), 4)
                               if agree_all else None),
            "threshold": threshold,
            "by_pair": [
                {"annotators": list(pair), "images": len(values),
                 "mean_iou": round(sum(values) / len(values), 4)}
                for pair, values in sorted(per_pair.items())
            ],
        },
    }


def format_stats(stats: dict[str, Any]) -> list[str]:
    """The stats as lines of plain text for the terminal."""
    lines = [
        f"images {stats['images']:,}  complete {stats['complete']:,}  "
        f"remaining {stats['remaining']:,}  reviewed at least once {stats['reviewed']:,}  "
        f"gold images {stats['gold_images']:,}",
        "settings: " + ", ".join(f"{name.replace('_', ' ')} {value}"
                                 for name, value in stats["settings"].items()),
    ]
    last = stats.get("last_change")
    if last:
        changed = last.get("changed") or {}
        what = ", ".join(f"{name.replace('_', ' ')} {was} -> {now}"
                         for name, (was, now) in sorted(changed.items())) or "nothing"
        lines.append(f"last server start ({last.get('at', '?')}) changed: {what}")
    header = ("annotator", "reviews", "rejected", "img/h", "s/img", "gold", "gold acc",
              "failed batches")
    rows = [header]
    for a in stats["annotators"]:
        rows.append((
            a["annotator"], str(a["reviews"]), str(a["rejected"]),
            "-" if a["images_per_hour"] is None else f"{a['images_per_hour']:.0f}",
            "-" if a["seconds_per_image"] is None else f"{a['seconds_per_image']:.1f}",
            f"{a['gold_passed']}/{a['gold_answered']}",
            "-" if a["gold_accuracy"] is None else f"{100 * a['gold_accuracy']:.0f}%",
            str(a["failed_batches"]),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    waiting = [b for b in stats.get("set_aside", []) if not b["reinstated_at"]]
    for b in stats.get("set_aside", []):
        state = (f"reinstated {b['reinstated_at']}" if b["reinstated_at"] else
                 f"set aside (reinstate: veil review reinstate --batch {b['batch']})")
        lines.append(f"failed batch {b['batch']} ({b['annotator']}, {b['ended_at'] or '?'}): "
                     f"{b['answers']} answer(s) on {b['images']} image(s) {state}")
    if waiting:
        lines.append(f"{sum(b['answers'] for b in waiting)} answer(s) in {len(waiting)} failed "
                     "batch(es) are set aside")
    ag = stats["agreement"]
    if ag["mean_iou"] is None:
        lines.append("agreement: no image has two reviewers yet")
    else:
        lines.append(
            f"agreement: mean pairwise IoU {ag['mean_iou']:.3f} over {ag['pairs']} pairs; "
            f"{100 * ag['share_agreeing']:.0f}% at or above {ag['threshold']}"
        )
        for p in ag["by_pair"]:
            lines.append(f"  {' & '.join(p['annotators'])}: {p['mean_iou']:.3f} "
                         f"({p['images']} images)")
    return lines
