"""Who is asking: personal tokens in a header, and where the server may listen.

A token travels in ``Authorization: Bearer <token>`` (or ``X-Veil-Token``), never in
a cookie, so another site cannot make a browser send it. The personal link that
``veil review add-annotator`` prints carries it in the URL *fragment*
(``#token=...``), which browsers never send to the server, so it cannot end up in
request lines or access logs; the page moves it into sessionStorage.

On loopback, requests without a token act as the local annotator (one curator on a
laptop). Anywhere else every request needs a valid token, and the server refuses to
start while no annotator has one.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from veil.errors import VeilError
from veil.review.deps import Service

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost; False for 0.0.0.0, :: and every other name."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, annotators_with_tokens: bool) -> None:
    """Refuse to listen beyond loopback unless the review can demand tokens."""
    if is_loopback(host) or annotators_with_tokens:
        return
    raise VeilError(
        f"refusing to listen on {host}: beyond loopback (127.0.0.1) every reviewer needs a "
        "personal token, and this store has no annotators yet. Create them first with "
        "`veil review add-annotator NAME --store ...`, or keep the default --host 127.0.0.1"
    )


def token_from(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    token = request.headers.get("x-veil-token", "").strip()
    return token or None


def current_annotator(request: Request, service: Service) -> str:
    token = token_from(request)
    if token is not None:
        name = service.ledger.annotator_for_token(token)
        if name is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, "unknown or revoked token: ask for a new link",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return name
    if service.local_annotator is not None:
        return service.local_annotator
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "this review needs your personal link (made by `veil review add-annotator NAME`)",
        headers={"WWW-Authenticate": "Bearer"},
    )


Annotator = Annotated[str, Depends(current_annotator)]
