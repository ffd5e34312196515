"""Refuse what the review should never read: oversized bodies and writes by strangers.

A pure ASGI middleware in front of the routes, so that nothing is read before it
decides. A request body is refused with 413 when its ``Content-Length`` says it is
larger than the limit, or, without one (chunked), as soon as the bytes received pass
it. A request that sends a body to the API must carry a valid token (or come from the
token-less local curator on loopback): anything else is refused with 401 before a
byte of the body is read or parsed.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
from starlette.exceptions import HTTPException

from veil.review.service import ReviewService

#: The largest request body the review accepts. An answer of 1,000 boxes (the API's
#: limit) is about 80 kB of JSON; 1 MiB leaves room and refuses anything bigger.
MAX_BODY_BYTES = 1024 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class TooLarge(HTTPException):
    """The body grew past the limit while it was being received (an HTTP error, so that
    the route's body parsing passes it on as a 413 instead of a parse error)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the limit of {limit:,} bytes")


class BodyGuard:
    """Size limit on every request body; a valid token before any API body is read."""

    def __init__(self, app: ASGIApp, *, service: ReviewService,
                 max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.service = service
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", ())}
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _refuse(send, 413, f"request body over the limit of {self.max_body:,} bytes")
            return
        if scope["path"].startswith("/api/"):
            problem = await anyio.to_thread.run_sync(self._unauthorised, headers)
            if problem is not None:
                await _refuse(send, 401, problem, {"www-authenticate": "Bearer"})
                return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise TooLarge(self.max_body)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except TooLarge as exc:
            if not started:
                await _refuse(send, 413, str(exc.detail))

    def _unauthorised(self, headers: dict[str, str]) -> str | None:
        """Why a request with these headers may not send a body (None: it may)."""
        scheme, _, value = headers.get("authorization", "").partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else ""
        token = token or headers.get("x-veil-token", "").strip()
        if token:
            if self.service.ledger.annotator_for_token(token) is None:
                return "unknown or revoked token: ask for a new link"
            return None
        if self.service.local_annotator is not None:
            return None
        return "this review needs your personal link (made by `veil review add-annotator NAME`)"


async def _refuse(send: Send, status: int, detail: str,
                  extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
