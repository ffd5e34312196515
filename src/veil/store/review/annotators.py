"""Who may review: annotators, their tokens, and the naming rule that tells people from veil.

A person's name never contains ``:``. Rows that veil writes itself use ``veil:<what>``
(``veil:union``, ``veil:majority``, ``veil:restore``) and imports use ``import:<file>``,
so "a human review" is a ``review`` row whose annotator has no colon. Tokens are stored
hashed: a token is shown once, when it is made.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update

from veil.errors import VeilError
from veil.store.review_schema import annotators_t
from veil.store.store import FaceStore
from veil.store.values import utcnow

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
MACHINE_PREFIX = "veil:"
RESTORE_ANNOTATOR = "veil:restore"


def check_name(name: str) -> str:
    """A person's name as stored on their reviews: letters, digits, ``_ . @ -``."""
    if not NAME_PATTERN.fullmatch(name):
        raise VeilError(
            f"annotator name {name!r}: use 1-64 letters, digits, '_', '.', '@' or '-' "
            "(starting with a letter or digit)"
        )
    return name


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class AnnotatorInfo:
    name: str
    created_at: datetime
    active: bool


class Annotators:
    """The team: personal tokens (hashed) and whether each is still valid."""

    store: FaceStore

    def add_annotator(self, name: str, *, rotate: bool = False) -> str:
        """A new personal token for ``name`` (stored hashed); ``rotate`` replaces an old one."""
        check_name(name)
        token = secrets.token_urlsafe(32)
        c = annotators_t.c
        with self.store.transaction() as conn:
            known = conn.execute(select(c.id).where(c.name == name)).scalar()
            if known is not None and not rotate:
                raise VeilError(
                    f"annotator {name!r} already exists; pass --rotate to give them a new "
                    "link (the old one stops working)"
                )
            values = {"token_sha256": hash_token(token), "active": True}
            if known is None:
                conn.execute(annotators_t.insert(),
                             {"name": name, "created_at": utcnow(), **values})
            else:
                conn.execute(update(annotators_t).where(c.id == known).values(**values))
        return token

    def remove_annotator(self, name: str) -> bool:
        """Revoke ``name``'s token; their reviews stay."""
        c = annotators_t.c
        with self.store.transaction() as conn:
            return bool(
                conn.execute(
                    update(annotators_t).where(c.name == name)
                    .values(active=False, token_sha256=None)
                ).rowcount
            )

    def annotator_for_token(self, token: str) -> str | None:
        c = annotators_t.c
        with self.store.connect() as conn:
            return conn.execute(
                select(c.name).where(c.token_sha256 == hash_token(token), c.active.is_(True))
            ).scalar()

    def annotators(self) -> list[AnnotatorInfo]:
        c = annotators_t.c
        with self.store.connect() as conn:
            rows = conn.execute(select(c.name, c.created_at, c.active).order_by(c.name))
            return [AnnotatorInfo(*row) for row in rows]

    def has_active_annotators(self) -> bool:
        c = annotators_t.c
        with self.store.connect() as conn:
            return conn.execute(
                select(func.count()).where(c.active.is_(True), c.token_sha256.is_not(None))
            ).scalar_one() > 0
