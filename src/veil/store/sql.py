"""Database plumbing the store needs: engines with sane per-backend settings, and upserts.

Kept apart from the API so that :mod:`veil.store.store` reads as what it does, not how
each backend wants to be asked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine, Insert, Table, create_engine, event, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from veil.errors import VeilError

if TYPE_CHECKING:
    from sqlalchemy.dialects.postgresql import Insert as PostgresInsert
    from sqlalchemy.dialects.sqlite import Insert as SQLiteInsert

T = TypeVar("T")

#: Keys per ``IN (...)`` list: far below SQLite's and PostgreSQL's parameter limits.
CHUNK = 1000
#: Rows per executemany batch, so that huge imports never build one giant list.
BATCH = 5000

WRITE_OPTION = "veil_write"


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def resolve_url(url: str | os.PathLike[str], *, create: bool) -> str:
    """A SQLAlchemy URL for ``url``; a plain path means a SQLite file."""
    text = os.fspath(url)
    if "://" in text:
        return text
    path = Path(text).expanduser().resolve()
    if not path.exists():
        if not create:
            raise VeilError(f"no face store at {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
    return "sqlite:///" + path.as_posix()


def redacted_url(url: str) -> str:
    """``url`` fit to print: a store URL's password hidden, a plain path as it is.

    Shown in messages and reports, which must never leak credentials; an unparsable
    URL becomes a placeholder rather than being echoed back.
    """
    if "://" not in url:
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<store URL>"


def make_engine(url: str, *, echo: bool = False) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise VeilError(f"not a database URL or path: {url!r}") from exc
    kwargs: dict[str, Any] = {"echo": echo}
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": 60}
    else:
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        safe = parsed.render_as_string(hide_password=True)
        raise VeilError(f"no database driver for {safe}: {exc}") from exc
    if engine.dialect.name == "sqlite":
        _tune_sqlite(engine, on_disk=bool(parsed.database) and parsed.database != ":memory:")
    return engine


def _tune_sqlite(engine: Engine, *, on_disk: bool) -> None:
    """WAL, foreign keys, and transactions that SQLAlchemy (not pysqlite) begins.

    pysqlite's own transaction handling starts transactions lazily and runs reads
    outside them; handing BEGIN to SQLAlchemy makes every transaction real, and
    write transactions take the write lock up front (BEGIN IMMEDIATE) so that two
    processes completing shards wait for each other instead of failing.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if on_disk:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def dialect_insert(conn: Connection, table: Table) -> SQLiteInsert | PostgresInsert | None:
    """An INSERT that knows ON CONFLICT, where the backend has one."""
    name = conn.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    return None


def insert_rows(conn: Connection, stmt: Insert, rows: Iterable[dict[str, Any]]) -> None:
    """Insert many rows as executemany batches (psycopg pipelines them: no per-row trips)."""
    for batch in chunked(rows, BATCH):
        conn.execute(stmt, batch)


def reserve_ids(conn: Connection, table: Table, n: int) -> list[int] | None:
    """``n`` fresh primary keys for ``table``, so that parent and child rows can be
    bulk-inserted together; None where the backend offers no safe way (use RETURNING).

    SQLite: the next ids after the largest, safe because write transactions hold the
    database's write lock from their start. PostgreSQL: drawn from the id sequence.
    """
    if n == 0:
        return []
    name = conn.dialect.name
    if name == "sqlite":
        top = conn.execute(select(func.max(table.c.id))).scalar() or 0
        return list(range(top + 1, top + 1 + n))
    if name == "postgresql":
        rows = conn.execute(
            text(
                "SELECT nextval(pg_get_serial_sequence(:table, 'id')) "
                "FROM generate_series(1, :n)"
            ),
            {"table": table.name, "n": n},
        )
        return [row[0] for row in rows]
    return None


def existing(conn: Connection, table: Table, column: str, values: Sequence[Any]) -> set[Any]:
    """Which of ``values`` are already in ``table.column``."""
    col = table.c[column]
    found: set[Any] = set()
    for part in chunked(values, CHUNK):
        found.update(conn.execute(select(col).where(col.in_(part))).scalars())
    return found
