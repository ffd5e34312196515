"""Watching a run from outside while it works (the kill-and-resume tests)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def done_shards(ledger: Path) -> int:
    """Shards the run's ledger records as done, read without taking a lock; 0 until the
    ledger exists (or while it is being created)."""
    try:
        with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=0.2) as db:
            return db.execute("select count(*) from shards where status = 'done'").fetchone()[0]
    except sqlite3.Error:
        return 0
