"""FaceStore: every stage's record of images, runs, detections and reviews.

History is append-only. The *current* boxes of an image are derived, in SQL:
the latest review (by id) if the image has one, otherwise the boxes of the latest
(highest id) detection run that is done or still running and processed the image
without error. Images with neither are absent: "never looked at" is not "no faces".
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    Connection,
    Select,
    and_,
    case,
    distinct,
    exists,
    func,
    inspect,
    select,
    union_all,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from veil import __version__
from veil.boxes import Box
from veil.errors import VeilError
from veil.store import (
    review_schema,  # noqa: F401  (registers the review tables on the metadata)
    sql,
)
from veil.store.records import ImageRecord, ReviewRecord, RunItem, RunRecord
from veil.store.schema import (
    ITEM_STATUSES,
    REVIEW_KINDS,
    RUN_STATUSES,
    SCHEMA_VERSION,
    Base,
    detections_t,
    images_t,
    meta_t,
    review_boxes_t,
    reviews_t,
    run_items_t,
    runs_t,
    shards_t,
)
from veil.store.values import BOX_COLUMNS, box_row, group_boxes, utcnow
from veil.store.vocabulary import RESUMABLE_RUN_STATUSES, canonical_config

#: Run kinds whose detections propose an image's boxes (audit re-detections do not).
DETECTION_RUN_KINDS: tuple[str, ...] = ("detect",)
#: A detection run counts while it runs (its finished shards are real) and once done.
CURRENT_RUN_STATUSES = ("running", "done")
#: A filtered query reads everything once when asked for more than 1/8 of all images.
_FULL_SCAN_RATIO = 8

def _reopen(url: str) -> FaceStore:
    return FaceStore(url, create=False)


class FaceStore:
    """The face database: a SQLite file (a plain path) or any SQLAlchemy URL.

    Every method runs in its own short transaction, so one store object can be
    shared by threads, and a pickled store reopens the same database in a worker.
    The methods that take a ``conn`` work inside the caller's :meth:`transaction`
    instead: they are the API for code that keeps its own tables here (the review
    ledger, :mod:`veil.store.review`) and must write atomically with the store's rows.
    """

    def __init__(
        self, url: str | os.PathLike[str], *, create: bool = True, echo: bool = False
    ) -> None:
        self.url: str = sql.resolve_url(url, create=create)
        self.engine = sql.make_engine(self.url, echo=echo)
        self._write_engine = self.engine.execution_options(**{sql.WRITE_OPTION: True})
        try:
            self._prepare(create)
        except SQLAlchemyError as exc:
            self.engine.dispose()
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise VeilError(f"cannot open face store {self.display_url}: {reason}") from exc

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def display_url(self) -> str:
        """The URL with any password masked: for messages and logs (``url`` keeps it)."""
        return self.engine.url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"FaceStore({self.display_url!r})"

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _reopen, (self.url,)

    def __enter__(self) -> FaceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    def _prepare(self, create: bool) -> None:
        if create:
            Base.metadata.create_all(self.engine)
            with self.transaction() as conn:
                known = conn.execute(
                    select(meta_t.c.value).where(meta_t.c.name == "schema_version")
                ).scalar()
                if known is None:
                    ins = sql.dialect_insert(conn, meta_t)
                    stmt = ins.on_conflict_do_nothing() if ins is not None else meta_t.insert()
                    conn.execute(stmt, {"name": "schema_version", "value": str(SCHEMA_VERSION)})
        elif not inspect(self.engine).has_table(runs_t.name):
            raise VeilError(f"{self.display_url} is not a veil face store (no tables)")
        with self.engine.connect() as conn:
            version = conn.execute(
                select(meta_t.c.value).where(meta_t.c.name == "schema_version")
            ).scalar()
        if version is not None and int(version) > SCHEMA_VERSION:
            raise VeilError(
                f"face store {self.display_url} has schema version {version}; this veil "
                f"understands up to {SCHEMA_VERSION}: upgrade veil"
            )

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction: committed when the block ends, rolled back on an error.

        For code that keeps its own tables in this database (the review ledger) and must
        change several rows atomically; the ``*(conn, ...)`` methods below work inside it.
        On SQLite it holds the database's write lock from its start.
        """
        with self._write_engine.begin() as conn:
            yield conn

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reading (no write lock taken); closed when the block ends."""
        with self.engine.connect() as conn:
            yield conn

    # -- images ------------------------------------------------------------------------------

    def register_images(self, records: Iterable[ImageRecord]) -> None:
        """Upsert catalogue entries by key (``None`` fields keep what is known)."""
        with self.transaction() as conn:
            for batch in sql.chunked(records, sql.BATCH):
                self._upsert_images(conn, batch)

    def _upsert_images(self, conn: Connection, records: Sequence[ImageRecord]) -> None:
        rows_by_key: dict[str, dict[str, Any]] = {}
        for rec in records:
            if rec.status not in ITEM_STATUSES:
                raise ValueError(f"image status must be one of {ITEM_STATUSES}: {rec.status!r}")
            rows_by_key[rec.key] = {
                "key": rec.key, "width": rec.width, "height": rec.height, "sha256": rec.sha256,
                "label": rec.label, "status": rec.status, "error": rec.error,
            }
        rows = list(rows_by_key.values())
        if not rows:
            return
        ins = sql.dialect_insert(conn, images_t)
        if ins is not None:
            c, ex = images_t.c, ins.excluded
            stmt = ins.on_conflict_do_update(
                index_elements=[c.key],
                set_={
                    "width": func.coalesce(ex.width, c.width),
                    "height": func.coalesce(ex.height, c.height),
                    "sha256": func.coalesce(ex.sha256, c.sha256),
                    "label": func.coalesce(ex.label, c.label),
                    "status": ex.status,
                    "error": ex.error,
                },
            )
            sql.insert_rows(conn, stmt, rows)
            return
        known = sql.existing(conn, images_t, "key", list(rows_by_key))
        new = [r for r in rows if r["key"] not in known]
        sql.insert_rows(conn, images_t.insert(), new)
        for row in rows:
            if row["key"] in known:
                values = {k: v for k, v in row.items() if v is not None or k == "error"}
                conn.execute(update(images_t).where(images_t.c.key == row["key"]).values(values))

    def ensure_image_ids(self, conn: Connection, keys: Iterable[str]) -> dict[str, int]:
        """Ids for ``keys`` (inside :meth:`transaction`), adding bare catalogue rows for
        keys never seen before: other tables refer to images by these ids."""
        wanted = list(dict.fromkeys(keys))
        ids: dict[str, int] = {}
        for part in sql.chunked(wanted, sql.CHUNK):
            ids.update(self._lookup_ids(conn, part))
            missing = [{"key": k, "status": "ok"} for k in part if k not in ids]
            if missing:
                ins = sql.dialect_insert(conn, images_t)
                stmt = ins.on_conflict_do_nothing() if ins is not None else images_t.insert()
                sql.insert_rows(conn, stmt, missing)
                ids.update(self._lookup_ids(conn, [m["key"] for m in missing]))
        return ids

    @staticmethod
    def image_id(conn: Connection, key: str) -> int | None:
        """The id of ``key``'s catalogue row, or None if the key was never seen."""
        return conn.execute(select(images_t.c.id).where(images_t.c.key == key)).scalar()

    @staticmethod
    def _lookup_ids(conn: Connection, keys: Sequence[str]) -> dict[str, int]:
        rows = conn.execute(
            select(images_t.c.key, images_t.c.id).where(images_t.c.key.in_(keys))
        )
        return {k: i for k, i in rows}

    def image(self, key: str) -> ImageRecord | None:
        c = images_t.c
        with self.connect() as conn:
            row = conn.execute(
                select(c.key, c.width, c.height, c.sha256, c.label, c.status, c.error)
                .where(c.key == key)
            ).first()
        return ImageRecord(*row) if row is not None else None

    def images(self, keys: Iterable[str] | None = None) -> Iterator[ImageRecord]:
        """Catalogue entries in key order (all, or those of ``keys`` that exist); streamed."""
        c = images_t.c
        base = select(c.key, c.width, c.height, c.sha256, c.label, c.status, c.error)
        if keys is None:
            with self.connect() as conn:
                result = conn.execution_options(yield_per=10_000).execute(base.order_by(c.key))
                for row in result:
                    yield ImageRecord(*row)
            return
        for part in sql.chunked(sorted(set(keys)), sql.CHUNK):
            with self.connect() as conn:
                rows = conn.execute(base.where(c.key.in_(part)).order_by(c.key)).all()
            for row in rows:
                yield ImageRecord(*row)

    def keys(self) -> list[str]:
        with self.connect() as conn:
            return list(conn.execute(select(images_t.c.key).order_by(images_t.c.key)).scalars())

    def count_images(self) -> int:
        with self.connect() as conn:
            return conn.execute(select(func.count()).select_from(images_t)).scalar_one()

    # -- runs and shards ---------------------------------------------------------------------

    def start_run(
        self, kind: str, config: Mapping[str, Any], shards: Sequence[Sequence[str]] = ()
    ) -> int:
        """Record a new run (status 'running') and its shards (all 'pending')."""
        stored, digest = canonical_config(config)
        with self.transaction() as conn:
            run_id = conn.execute(
                runs_t.insert().returning(runs_t.c.id),
                {
                    "kind": kind, "config": stored, "config_hash": digest, "status": "running",
                    "created_at": utcnow(), "veil_version": __version__,
                    "host": socket.gethostname(),
                },
            ).scalar_one()
            rows = (
                {"run_id": run_id, "shard_index": i, "keys": list(keys), "status": "pending",
                 "attempts": 0, "seconds": 0.0, "n_items": 0, "n_errors": 0}
                for i, keys in enumerate(shards)
            )
            sql.insert_rows(conn, shards_t.insert(), rows)
        return run_id

    def find_resumable_run(self, kind: str, config: Mapping[str, Any]) -> int | None:
        """The newest run of ``kind`` with an equal config that did not finish."""
        _, digest = canonical_config(config)
        c = runs_t.c
        with self.connect() as conn:
            return conn.execute(
                select(c.id)
                .where(c.kind == kind, c.config_hash == digest,
                       c.status.in_(RESUMABLE_RUN_STATUSES))
                .order_by(c.id.desc())
                .limit(1)
            ).scalar()

    def resume_run(self, run_id: int) -> None:
        """Mark a resumable run as running again (its done shards stay done)."""
        self._set_run(run_id, status="running", finished_at=None)

    def pending_shards(self, run_id: int) -> list[tuple[int, list[str]]]:
        """Shards not done yet, in index order: exactly the work a resumed run has left."""
        c = shards_t.c
        with self.connect() as conn:
            rows = conn.execute(
                select(c.shard_index, c["keys"])
                .where(c.run_id == run_id, c.status != "done")
                .order_by(c.shard_index)
            )
            return [(i, list(keys)) for i, keys in rows]

    def shards(self, run_id: int) -> list[dict[str, Any]]:
        """Every shard of a run with its bookkeeping (for progress and reports)."""
        c = shards_t.c
        with self.connect() as conn:
            rows = conn.execute(
                select(c.shard_index, c.status, c.attempts, c.seconds, c.n_items, c.n_errors,
                       c.error)
                .where(c.run_id == run_id)
                .order_by(c.shard_index)
            ).mappings()
            return [{**row, "index": row["shard_index"]} for row in rows]

    def complete_shard(
        self,
        run_id: int,
        index: int,
        *,
        items: Sequence[RunItem] = (),
        images: Sequence[ImageRecord] = (),
        detections: Mapping[str, Sequence[Box]] | None = None,
        seconds: float = 0.0,
    ) -> None:
        """Record a shard's results and mark it done, all in one transaction.

        A key with detections but no item counts as processed without error. A
        shard that is already done (a duplicate completion after a retry) is left
        untouched, so results are never recorded twice.
        """
        detections = detections or {}
        seen: set[str] = set()
        for item in items:
            if item.status not in ITEM_STATUSES:
                raise ValueError(f"run item status must be one of {ITEM_STATUSES}: {item.status!r}")
            if item.key in seen:
                raise ValueError(f"key {item.key!r} appears twice in the items of shard {index}")
            seen.add(item.key)
        all_items = list(items) + [RunItem(k) for k in detections if k not in seen]
        n_errors = sum(item.status == "error" for item in all_items)
        c = shards_t.c
        with self.transaction() as conn:
            claimed = conn.execute(
                update(shards_t)
                .where(c.run_id == run_id, c.shard_index == index, c.status != "done")
                .values(status="done", attempts=c.attempts + 1, seconds=float(seconds),
                        n_items=len(all_items), n_errors=n_errors, error=None)
            ).rowcount
            if claimed == 0:
                found = conn.execute(
                    select(c.status).where(c.run_id == run_id, c.shard_index == index)
                ).scalar()
                if found is None:
                    raise VeilError(f"run {run_id} has no shard {index}")
                return
            if images:
                self._upsert_images(conn, images)
            ids = self.ensure_image_ids(conn, (item.key for item in all_items))
            self._insert_run_items(conn, run_id, all_items, ids)
            self._insert_detections(conn, run_id, detections, ids)

    def _insert_run_items(
        self, conn: Connection, run_id: int, items: Sequence[RunItem], ids: Mapping[str, int]
    ) -> None:
        rows = (
            {"run_id": run_id, "image_id": ids[it.key], "status": it.status, "error": it.error,
             "info": it.info}
            for it in items
        )
        sql.insert_rows(conn, run_items_t.insert(), rows)

    def _insert_detections(
        self,
        conn: Connection,
        run_id: int,
        detections: Mapping[str, Sequence[Box]],
        ids: Mapping[str, int],
    ) -> None:
        rows = (
            {"run_id": run_id, "image_id": ids[key], **box_row(box)}
            for key, boxes in detections.items()
            for box in boxes
        )
        sql.insert_rows(conn, detections_t.insert(), rows)

    def fail_shard(self, run_id: int, index: int, error: str) -> None:
        """Record a failed attempt; a shard already done stays done."""
        c = shards_t.c
        with self.transaction() as conn:
            conn.execute(
                update(shards_t)
                .where(c.run_id == run_id, c.shard_index == index, c.status != "done")
                .values(status="failed", attempts=c.attempts + 1, error=error)
            )

    def finish_run(
        self, run_id: int, status: str = "done", timings: Mapping[str, Any] | None = None
    ) -> None:
        values: dict[str, Any] = {"status": status, "finished_at": utcnow()}
        if timings is not None:
            values["timings"] = canonical_config(timings)[0]
        self._set_run(run_id, **values)

    def _set_run(self, run_id: int, **values: Any) -> None:
        if values.get("status") not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {RUN_STATUSES}: {values.get('status')!r}")
        with self.transaction() as conn:
            changed = conn.execute(
                update(runs_t).where(runs_t.c.id == run_id).values(**values)
            ).rowcount
        if changed == 0:
            raise VeilError(f"no run {run_id} in {self.display_url}")

    def run(self, run_id: int) -> RunRecord:
        found = self._runs(runs_t.c.id == run_id)
        if not found:
            raise VeilError(f"no run {run_id} in {self.display_url}")
        return found[0]

    def runs(self, kind: str | None = None) -> list[RunRecord]:
        """Runs in creation order, optionally of one kind."""
        return self._runs(runs_t.c.kind == kind if kind is not None else None)

    def _runs(self, where: Any) -> list[RunRecord]:
        r, s = runs_t.c, shards_t.c
        counts = (
            select(
                s.run_id,
                func.count().label("total"),
                func.sum(case((s.status == "done", 1), else_=0)).label("done"),
                func.sum(case((s.status == "failed", 1), else_=0)).label("failed"),
            )
            .group_by(s.run_id)
            .subquery()
        )
        query = (
            select(r.id, r.kind, r.config, r.status, r.created_at, r.finished_at, r.timings,
                   r.veil_version, r.host, counts.c.total, counts.c.done, counts.c.failed)
            .outerjoin(counts, counts.c.run_id == r.id)
            .order_by(r.id)
        )
        if where is not None:
            query = query.where(where)
        with self.connect() as conn:
            rows = conn.execute(query).all()
        return [
            RunRecord(*row[:9], shards_total=int(row[9] or 0), shards_done=int(row[10] or 0),
                      shards_failed=int(row[11] or 0))
            for row in rows
        ]

    def run_items(self, run_id: int, status: str | None = None) -> list[RunItem]:
        ri, im = run_items_t.c, images_t.c
        query = (
            select(im.key, ri.status, ri.error, ri.info)
            .join(images_t, im.id == ri.image_id)
            .where(ri.run_id == run_id)
            .order_by(im.key)
        )
        if status is not None:
            query = query.where(ri.status == status)
        with self.connect() as conn:
            return [RunItem(*row) for row in conn.execute(query)]

    # -- boxes -------------------------------------------------------------------------------

    def detections(
        self, run_id: int | None = None, keys: Iterable[str] | None = None
    ) -> dict[str, list[Box]]:
        """Boxes of one run (every image it processed without error, faceless ones too),
        or with ``run_id=None`` of each image's latest current detection run."""
        return dict(self._stream(lambda ids: self._detection_rows(run_id, ids), keys))

    def current_boxes(self, keys: Iterable[str] | None = None) -> dict[str, list[Box]]:
        """The current answer per image (see the module docstring); unseen images absent."""
        return dict(self.iter_current_boxes(keys))

    def iter_current_boxes(
        self, keys: Iterable[str] | None = None
    ) -> Iterator[tuple[str, list[Box]]]:
        """Like :meth:`current_boxes`, streamed in key order for dataset-sized exports."""
        return self._stream(self._current_rows, keys)

    def _stream(
        self, rows_for: Callable[[list[int] | None], Any], keys: Iterable[str] | None
    ) -> Iterator[tuple[str, list[Box]]]:
        """(key, boxes) in key order from a box-rows subquery builder (see ``_current_rows``).

        All images: one query, streamed. Some keys: their ids are looked up first and
        the query is filtered by integer ids, chunk by chunk, which every planner indexes.
        """
        wanted = None if keys is None else sorted(set(keys))
        # Reading everything once beats many chunked lookups when a large share of the
        # images is asked for (measured: ~5 us per image scanned, 20-100 us per key looked up).
        scan_all = wanted is None or (
            len(wanted) > sql.CHUNK and len(wanted) * _FULL_SCAN_RATIO > self.count_images()
        )
        if scan_all:
            keep = None if wanted is None else set(wanted)
            rows = rows_for(None)
            im = images_t.c
            query = (
                select(im.key, *(rows.c[n] for n in BOX_COLUMNS))
                .join(images_t, im.id == rows.c.image_id)
                .order_by(im.key, rows.c.box_id)
            )
            with self.connect() as conn:
                result = conn.execution_options(yield_per=10_000).execute(query)
                for key, boxes in group_boxes(result):
                    if keep is None or key in keep:
                        yield key, boxes
            return
        for part in sql.chunked(wanted or [], sql.CHUNK):
            with self.connect() as conn:
                ids = self._lookup_ids(conn, part)
                if not ids:
                    continue
                rows = rows_for(list(ids.values()))
                query = select(rows.c.image_id, *(rows.c[n] for n in BOX_COLUMNS)).order_by(
                    rows.c.image_id, rows.c.box_id
                )
                found = dict(group_boxes(conn.execute(query)))
            for key in part:
                if key in ids and ids[key] in found:
                    yield key, found[ids[key]]

    @staticmethod
    def _latest_detection_runs(image_ids: list[int] | None, *, skip_reviewed: bool) -> Any:
        """(image_id, run_id) of each image's latest current detection run."""
        ri, r = run_items_t.c, runs_t.c
        query = (
            select(ri.image_id, func.max(ri.run_id).label("run_id"))
            .join(runs_t, r.id == ri.run_id)
            .where(r.kind.in_(DETECTION_RUN_KINDS), r.status.in_(CURRENT_RUN_STATUSES),
                   ri.status == "ok")
            .group_by(ri.image_id)
        )
        if image_ids is not None:
            query = query.where(ri.image_id.in_(image_ids))
        if skip_reviewed:
            query = query.where(~exists().where(reviews_t.c.image_id == ri.image_id))
        return query.subquery("latest_run")

    @staticmethod
    def _boxes_of_runs(pairs: Any) -> Select[Any]:
        """(image_id, box_id, box columns) for (image_id, run_id) pairs; no box -> NULLs."""
        d = detections_t.c
        joined = pairs.outerjoin(
            detections_t, and_(d.run_id == pairs.c.run_id, d.image_id == pairs.c.image_id)
        )
        return select(
            pairs.c.image_id, d.id.label("box_id"), *(d[n] for n in BOX_COLUMNS)
        ).select_from(joined)

    def _detection_rows(self, run_id: int | None, image_ids: list[int] | None) -> Any:
        if run_id is None:
            pairs = self._latest_detection_runs(image_ids, skip_reviewed=False)
        else:
            ri = run_items_t.c
            query = select(ri.image_id, ri.run_id).where(ri.run_id == run_id, ri.status == "ok")
            if image_ids is not None:
                query = query.where(ri.image_id.in_(image_ids))
            pairs = query.subquery("run_pairs")
        return self._boxes_of_runs(pairs).subquery("rows")

    def latest_detections(self, conn: Connection, image_id: int) -> list[Box]:
        """The boxes of the image's latest current detection run (none: empty), which
        is what the image shows when no review is taken into account."""
        rows = self._detection_rows(None, [image_id])
        return [
            Box(*row) for row in conn.execute(
                select(*(rows.c[n] for n in BOX_COLUMNS)).order_by(rows.c.box_id)
            ) if row[0] is not None
        ]

    def _current_rows(self, image_ids: list[int] | None) -> Any:
        """Subquery (image_id, box_id, box columns) of the current boxes, derived in SQL.

        An image with an answer but no boxes is one row of NULL box columns.
        """
        rv, rb = reviews_t.c, review_boxes_t.c
        latest_review = select(rv.image_id, func.max(rv.id).label("review_id")).group_by(
            rv.image_id
        )
        if image_ids is not None:
            latest_review = latest_review.where(rv.image_id.in_(image_ids))
        lr = latest_review.subquery("latest_review")
        from_reviews = select(
            lr.c.image_id, rb.id.label("box_id"), *(rb[n] for n in BOX_COLUMNS)
        ).select_from(lr.outerjoin(review_boxes_t, rb.review_id == lr.c.review_id))
        from_runs = self._boxes_of_runs(
            self._latest_detection_runs(image_ids, skip_reviewed=True)
        )
        return union_all(from_reviews, from_runs).subquery("current")

    # -- reviews -----------------------------------------------------------------------------

    def add_review(
        self,
        key: str,
        boxes: Sequence[Box],
        *,
        annotator: str,
        kind: str = "review",
        seconds: float | None = None,
        gold_passed: bool | None = None,
        note: str | None = None,
        run_id: int | None = None,
    ) -> int:
        """Append one review (its boxes are the complete answer; none = no faces)."""
        with self.transaction() as conn:
            ids = self.ensure_image_ids(conn, [key])
            return self.insert_reviews(
                conn,
                [(ids[key], boxes)],
                annotator=annotator, kind=kind, seconds=seconds, gold_passed=gold_passed,
                note=note, run_id=run_id,
            )[0]

    def add_reviews(
        self,
        reviews: Iterable[tuple[str, Sequence[Box]]],
        *,
        annotator: str,
        kind: str = "review",
        run_id: int | None = None,
    ) -> int:
        """Append many reviews in one transaction (all or nothing); returns how many."""
        count = 0
        with self.transaction() as conn:
            for batch in sql.chunked(reviews, sql.BATCH):
                ids = self.ensure_image_ids(conn, (key for key, _ in batch))
                self.insert_reviews(
                    conn, [(ids[key], boxes) for key, boxes in batch],
                    annotator=annotator, kind=kind, run_id=run_id,
                )
                count += len(batch)
        return count

    def insert_reviews(
        self,
        conn: Connection,
        reviews: Sequence[tuple[int, Sequence[Box]]],
        *,
        annotator: str,
        kind: str,
        seconds: float | None = None,
        gold_passed: bool | None = None,
        note: str | None = None,
        run_id: int | None = None,
    ) -> list[int]:
        """Append reviews of images given by id (inside :meth:`transaction`); returns
        the new review ids in order. Boxes without a source get ``human:<annotator>``."""
        if kind not in REVIEW_KINDS:
            raise ValueError(f"review kind must be one of {REVIEW_KINDS}: {kind!r}")
        now = utcnow()
        rows = [
            {"image_id": image_id, "annotator": annotator, "created_at": now,
             "seconds_spent": None if seconds is None else float(seconds), "kind": kind,
             "gold_passed": gold_passed, "note": note, "run_id": run_id}
            for image_id, _ in reviews
        ]
        review_ids = sql.reserve_ids(conn, reviews_t, len(rows))
        if review_ids is None:
            stmt = reviews_t.insert().returning(reviews_t.c.id, sort_by_parameter_order=True)
            review_ids = list(conn.execute(stmt, rows).scalars())
        else:
            for row, review_id in zip(rows, review_ids, strict=True):
                row["id"] = review_id
            sql.insert_rows(conn, reviews_t.insert(), rows)
        source = f"human:{annotator}"
        box_rows = [
            {"review_id": review_id, **box_row(box, source)}
            for review_id, (_, boxes) in zip(review_ids, reviews, strict=True)
            for box in boxes
        ]
        sql.insert_rows(conn, review_boxes_t.insert(), box_rows)
        return review_ids

    def reviews(self, key: str) -> list[ReviewRecord]:
        """Every review of an image, oldest first."""
        rv, rb, im = reviews_t.c, review_boxes_t.c, images_t.c
        with self.connect() as conn:
            heads = conn.execute(
                select(rv.id, im.key, rv.annotator, rv.created_at, rv.seconds_spent, rv.kind,
                       rv.gold_passed, rv.note, rv.run_id)
                .join(images_t, im.id == rv.image_id)
                .where(im.key == key)
                .order_by(rv.id)
            ).all()
            boxes: dict[int, list[Box]] = {row[0]: [] for row in heads}
            if heads:
                for review_id, *values in conn.execute(
                    select(rb.review_id, *(rb[n] for n in BOX_COLUMNS))
                    .where(rb.review_id.in_(list(boxes)))
                    .order_by(rb.id)
                ):
                    boxes[review_id].append(Box(*values))
        return [ReviewRecord(*row, boxes=tuple(boxes[row[0]])) for row in heads]

    # -- overview ----------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Counts for a status line: images, answered, with faces, faces, reviewed, runs, errors."""
        cur = self._current_rows(None)
        with self.connect() as conn:
            images = conn.execute(select(func.count()).select_from(images_t)).scalar_one()
            answered, with_faces, faces = conn.execute(
                select(
                    func.count(distinct(cur.c.image_id)),
                    func.count(distinct(case((cur.c.x0.is_not(None), cur.c.image_id)))),
                    func.count(cur.c.x0),
                )
            ).one()
            reviewed = conn.execute(
                select(func.count(distinct(reviews_t.c.image_id)))
            ).scalar_one()
            runs: dict[str, int] = dict(
                conn.execute(
                    select(runs_t.c.kind, func.count()).group_by(runs_t.c.kind)
                ).all()
            )
            errors = conn.execute(
                select(func.count()).select_from(images_t).where(images_t.c.status == "error")
            ).scalar_one()
        return {
            "images": images, "answered": answered, "with_faces": with_faces, "faces": faces,
            "reviewed": reviewed, "runs": runs, "errors": errors,
        }
