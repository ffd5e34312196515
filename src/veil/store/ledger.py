"""A run ledger in a SQLite file, kept with the standard library's ``sqlite3``.

``veil obfuscate`` records its run (config, shards, one row per image) so that an
interrupted run resumes and ``veil audit`` knows what was done to each image. That needs
five of the face store's tables and none of SQLAlchemy, whose import and table mapping
cost ~0.4 s: more than the rest of a small job's start-up together. :class:`RunLedger`
writes those tables itself, with the face store's own DDL (``LEDGER_DDL``; a test
compiles the same statements from :mod:`veil.store.schema` and compares, so the two
cannot drift), the same JSON and timestamp encodings and the same SQLite settings (WAL,
foreign keys, ``BEGIN IMMEDIATE`` for writes). A ledger file is therefore a face store:
``FaceStore(path)`` opens one, and a ledger an older veil wrote with ``FaceStore``
resumes here.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from veil import __version__
from veil.errors import VeilError
from veil.store.records import ImageRecord, RunItem, RunRecord
from veil.store.vocabulary import (
    ITEM_STATUSES,
    RESUMABLE_RUN_STATUSES,
    RUN_STATUSES,
    SCHEMA_VERSION,
    canonical_config,
)

__all__ = ["LEDGER_DDL", "RunLedger"]

LEDGER_DDL: tuple[str, ...] = (
    """CREATE TABLE store_meta (
	name VARCHAR(64) NOT NULL,
	value TEXT NOT NULL,
	CONSTRAINT pk_store_meta PRIMARY KEY (name)
)""",
    """CREATE TABLE images (
	id INTEGER NOT NULL,
	"key" TEXT NOT NULL,
	width INTEGER,
	height INTEGER,
	sha256 VARCHAR(64),
	label TEXT,
	status VARCHAR(16) NOT NULL,
	error TEXT,
	CONSTRAINT pk_images PRIMARY KEY (id),
	CONSTRAINT ck_images_status_allowed CHECK (status IN ('ok', 'error')),
	CONSTRAINT uq_images_key UNIQUE ("key")
)""",
    """CREATE TABLE runs (
	id INTEGER NOT NULL,
	kind VARCHAR(32) NOT NULL,
	config JSON NOT NULL,
	config_hash VARCHAR(64) NOT NULL,
	status VARCHAR(16) NOT NULL,
	created_at DATETIME NOT NULL,
	finished_at DATETIME,
	timings JSON,
	veil_version VARCHAR(32),
	host TEXT,
	CONSTRAINT pk_runs PRIMARY KEY (id),
	CONSTRAINT ck_runs_status_allowed CHECK (status IN ('running', 'done', 'failed', \
'interrupted'))
)""",
    "CREATE INDEX ix_runs_kind_config ON runs (kind, config_hash)",
    """CREATE TABLE shards (
	run_id INTEGER NOT NULL,
	shard_index INTEGER NOT NULL,
	keys JSON NOT NULL,
	status VARCHAR(16) NOT NULL,
	attempts INTEGER NOT NULL,
	seconds DOUBLE NOT NULL,
	n_items INTEGER NOT NULL,
	n_errors INTEGER NOT NULL,
	error TEXT,
	CONSTRAINT pk_shards PRIMARY KEY (run_id, shard_index),
	CONSTRAINT ck_shards_status_allowed CHECK (status IN ('pending', 'done', 'failed')),
	CONSTRAINT fk_shards_run_id_runs FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE CASCADE
)""",
    """CREATE TABLE run_items (
	run_id INTEGER NOT NULL,
	image_id INTEGER NOT NULL,
	status VARCHAR(16) NOT NULL,
	error TEXT,
	info JSON,
	CONSTRAINT pk_run_items PRIMARY KEY (run_id, image_id),
	CONSTRAINT ck_run_items_status_allowed CHECK (status IN ('ok', 'error')),
	CONSTRAINT fk_run_items_run_id_runs FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE \
CASCADE,
	CONSTRAINT fk_run_items_image_id_images FOREIGN KEY(image_id) REFERENCES images (id)
)""",
    "CREATE INDEX ix_run_items_image ON run_items (image_id, run_id)",
)
"""The face store's run tables as SQLAlchemy creates them on SQLite."""

_CHUNK = 900
"""Keys per ``IN (...)`` list: below SQLite's default limit of 999 parameters."""


def _timestamp(moment: datetime) -> str:
    """A UTC time as SQLAlchemy's SQLite DATETIME stores it (naive, microseconds)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _parse_timestamp(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)


def _json(value: Any) -> str:
    return json.dumps(value)


def _unjson(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class RunLedger:
    """The runner's record of a run in a SQLite file (see the module's docstring).

    Implements what :func:`veil.runner.prepare_run` and :func:`veil.runner.execute` ask
    of a store, plus :meth:`runs` and :meth:`run_items` for resuming and auditing. Only
    the parent process writes it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._prepare()
        except sqlite3.DatabaseError as exc:
            raise VeilError(f"cannot open the ledger {self.path}: {exc}") from exc

    def __enter__(self) -> RunLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunLedger({str(self.path)!r})"

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the database's write lock from its start."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _prepare(self) -> None:
        with self._write() as db:
            for statement in LEDGER_DDL:  # a ledger an older veil made has them all
                db.execute(statement.replace("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ", 1)
                           .replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1))
            db.execute("INSERT OR IGNORE INTO store_meta (name, value) VALUES (?, ?)",
                       ("schema_version", str(SCHEMA_VERSION)))
            version = db.execute(
                "SELECT value FROM store_meta WHERE name = 'schema_version'").fetchone()[0]
        if int(version) > SCHEMA_VERSION:
            raise VeilError(f"the ledger {self.path} has schema version {version}; this veil "
                            f"understands up to {SCHEMA_VERSION}: upgrade veil")

    # -- runs and shards ---------------------------------------------------------------------

    def start_run(self, kind: str, config: Mapping[str, Any],
                  shards: Sequence[Sequence[str]] = ()) -> int:
        """Record a new run (status 'running') and its shards (all 'pending')."""
        stored, digest = canonical_config(config)
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO runs (kind, config, config_hash, status, created_at, "
                "veil_version, host) VALUES (?, ?, ?, 'running', ?, ?, ?)",
                (kind, _json(stored), digest, _timestamp(datetime.now(UTC)), __version__,
                 socket.gethostname()))
            run_id = int(cursor.lastrowid or 0)
            db.executemany(
                "INSERT INTO shards (run_id, shard_index, keys, status, attempts, seconds, "
                "n_items, n_errors) VALUES (?, ?, ?, 'pending', 0, 0.0, 0, 0)",
                ((run_id, i, _json(list(keys))) for i, keys in enumerate(shards)))
        return run_id

    def find_resumable_run(self, kind: str, config: Mapping[str, Any]) -> int | None:
        """The newest run of ``kind`` with an equal config that did not finish."""
        _, digest = canonical_config(config)
        row = self._db.execute(
            "SELECT id FROM runs WHERE kind = ? AND config_hash = ? AND status IN "
            f"({', '.join('?' * len(RESUMABLE_RUN_STATUSES))}) ORDER BY id DESC LIMIT 1",
            (kind, digest, *RESUMABLE_RUN_STATUSES)).fetchone()
        return None if row is None else int(row[0])

    def resume_run(self, run_id: int) -> None:
        """Mark a resumable run as running again (its done shards stay done)."""
        self._set_run(run_id, "running", None)

    def pending_shards(self, run_id: int) -> list[tuple[int, list[str]]]:
        """Shards not done yet, in index order: the work a resumed run has left."""
        rows = self._db.execute(
            "SELECT shard_index, keys FROM shards WHERE run_id = ? AND status != 'done' "
            "ORDER BY shard_index", (run_id,))
        return [(int(index), list(json.loads(keys))) for index, keys in rows]

    def complete_shard(self, run_id: int, index: int, *, items: Sequence[RunItem] = (),
                       images: Sequence[ImageRecord] = (),
                       detections: Mapping[str, Any] | None = None,
                       seconds: float = 0.0) -> None:
        """Record a shard's items and mark it done, in one transaction; a shard already
        done (a duplicate completion after a retry) is left as it is."""
        if images or detections:
            raise ValueError("a run ledger records run items only; images and detections "
                             "belong in a face store")
        for item in items:
            if item.status not in ITEM_STATUSES:
                raise ValueError(f"run item status must be one of {ITEM_STATUSES}: "
                                 f"{item.status!r}")
        keys = [item.key for item in items]
        if len(set(keys)) != len(keys):
            raise ValueError(f"a key appears twice in the items of shard {index}")
        n_errors = sum(item.status == "error" for item in items)
        with self._write() as db:
            claimed = db.execute(
                "UPDATE shards SET status = 'done', attempts = attempts + 1, seconds = ?, "
                "n_items = ?, n_errors = ?, error = NULL "
                "WHERE run_id = ? AND shard_index = ? AND status != 'done'",
                (float(seconds), len(items), n_errors, run_id, index)).rowcount
            if claimed == 0:
                if db.execute("SELECT 1 FROM shards WHERE run_id = ? AND shard_index = ?",
                              (run_id, index)).fetchone() is None:
                    raise VeilError(f"run {run_id} has no shard {index}")
                return
            ids = self._image_ids(db, keys)
            db.executemany(
                "INSERT INTO run_items (run_id, image_id, status, error, info) "
                "VALUES (?, ?, ?, ?, ?)",
                ((run_id, ids[item.key], item.status, item.error, _json(item.info))
                 for item in items))

    @staticmethod
    def _image_ids(db: sqlite3.Connection, keys: Sequence[str]) -> dict[str, int]:
        """Catalogue ids of ``keys``, adding bare rows for keys never seen."""
        db.executemany("INSERT OR IGNORE INTO images (\"key\", status) VALUES (?, 'ok')",
                       ((key,) for key in keys))
        ids: dict[str, int] = {}
        for start in range(0, len(keys), _CHUNK):
            part = keys[start:start + _CHUNK]
            ids.update(db.execute(
                f"SELECT \"key\", id FROM images WHERE \"key\" IN ({', '.join('?' * len(part))})",
                part).fetchall())
        return ids

    def fail_shard(self, run_id: int, index: int, error: str) -> None:
        """Record a failed attempt; a shard already done stays done."""
        with self._write() as db:
            db.execute("UPDATE shards SET status = 'failed', attempts = attempts + 1, error = ? "
                       "WHERE run_id = ? AND shard_index = ? AND status != 'done'",
                       (error, run_id, index))

    def finish_run(self, run_id: int, status: str = "done",
                   timings: Mapping[str, Any] | None = None) -> None:
        self._set_run(run_id, status, _timestamp(datetime.now(UTC)),
                      None if timings is None else canonical_config(timings)[0])

    def _set_run(self, run_id: int, status: str, finished_at: str | None,
                 timings: dict[str, Any] | None = None) -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {RUN_STATUSES}: {status!r}")
        assignments = "status = ?, finished_at = ?" + (", timings = ?" if timings else "")
        values: list[Any] = [status, finished_at] + ([_json(timings)] if timings else [])
        with self._write() as db:
            changed = db.execute(f"UPDATE runs SET {assignments} WHERE id = ?",
                                 (*values, run_id)).rowcount
        if changed == 0:
            raise VeilError(f"no run {run_id} in {self.path}")

    # -- reading -----------------------------------------------------------------------------

    def runs(self, kind: str | None = None) -> list[RunRecord]:
        """Runs in creation order, optionally of one kind, with their shard counts."""
        where = "WHERE r.kind = ?" if kind is not None else ""
        rows = self._db.execute(
            "SELECT r.id, r.kind, r.config, r.status, r.created_at, r.finished_at, r.timings, "
            "r.veil_version, r.host, count(s.shard_index), "
            "coalesce(sum(s.status = 'done'), 0), coalesce(sum(s.status = 'failed'), 0) "
            f"FROM runs r LEFT JOIN shards s ON s.run_id = r.id {where} "
            "GROUP BY r.id ORDER BY r.id", () if kind is None else (kind,))
        return [
            RunRecord(int(run_id), kind_, _unjson(config), status, _parse_timestamp(created)
                      or datetime.min.replace(tzinfo=UTC), _parse_timestamp(finished),
                      _unjson(timings), version, host, shards_total=int(total),
                      shards_done=int(done), shards_failed=int(failed))
            for (run_id, kind_, config, status, created, finished, timings, version, host,
                 total, done, failed) in rows
        ]

    def run_items(self, run_id: int, status: str | None = None) -> list[RunItem]:
        """What the run did with each image, in key order."""
        where = " AND ri.status = ?" if status is not None else ""
        rows = self._db.execute(
            "SELECT im.\"key\", ri.status, ri.error, ri.info FROM run_items ri "
            f"JOIN images im ON im.id = ri.image_id WHERE ri.run_id = ?{where} "
            "ORDER BY im.\"key\"", (run_id,) if status is None else (run_id, status))
        return [RunItem(key, item_status, error, _unjson(info))
                for key, item_status, error, info in rows]
