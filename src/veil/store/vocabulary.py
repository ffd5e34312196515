"""The face store's fixed words: its schema version, statuses and kinds, and how a run's
config is normalised and hashed. Plain Python, so that the SQLAlchemy store
(:mod:`veil.store.store`) and the stdlib run ledger (:mod:`veil.store.ledger`) share them
without the ledger importing SQLAlchemy."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

SCHEMA_VERSION = 1

RUN_STATUSES = ("running", "done", "failed", "interrupted")
SHARD_STATUSES = ("pending", "done", "failed")
ITEM_STATUSES = ("ok", "error")
REVIEW_KINDS = ("review", "gold", "import")
RESUMABLE_RUN_STATUSES = ("running", "interrupted", "failed")
"""Runs that the same command resumes instead of starting over."""


def canonical_config(config: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The config as stored (JSON-normalised) and its hash, which finds equal configs."""
    try:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"run config must be plain JSON data: {exc}") from exc
    return json.loads(text), hashlib.sha256(text.encode()).hexdigest()
