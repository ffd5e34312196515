"""Run the review app with uvicorn, refusing unsafe setups before listening."""

from __future__ import annotations

import getpass
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from veil.datasets import Dataset
from veil.errors import VeilError
from veil.review.app import LOOPBACK_HOSTS, create_app
from veil.review.auth import check_bind, is_loopback
from veil.review.guard import MAX_BODY_BYTES
from veil.review.service import ReviewService
from veil.review.settings import Resolved, ReviewSettings
from veil.store import FaceStore
from veil.store.review import ReviewLedger, check_name

if TYPE_CHECKING:
    from fastapi import FastAPI

PLAIN_HTTP_WARNING = (
    "veil review: warning: serving {host} over plain HTTP: personal tokens and images cross "
    "the network unencrypted. Pass --ssl-certfile/--ssl-keyfile, or serve on 127.0.0.1 "
    "behind a reverse proxy that terminates TLS (see docs/review.md)."
)


def local_name(annotator: str | None) -> str:
    """The name a token-less local curator reviews under (default: the login name)."""
    if annotator is not None:
        return check_name(annotator)
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "curator"
    return name if _valid(name) else "curator"


def _valid(name: str) -> bool:
    try:
        check_name(name)
    except VeilError:
        return False
    return True


def build(
    dataset: Dataset, store: FaceStore, settings: ReviewSettings, *, host: str,
    annotator: str | None = None, require_tokens: bool = False, follow_links: bool = False,
    max_body: int = MAX_BODY_BYTES,
) -> tuple[ReviewService, FastAPI]:
    """The service and app for a server on ``host`` (raises if that would be unsafe)."""
    ledger = ReviewLedger(store)
    loopback = is_loopback(host)
    with_tokens = ledger.has_active_annotators()
    check_bind(host, annotators_with_tokens=with_tokens)
    if require_tokens and not with_tokens:
        raise VeilError("--require-tokens: this store has no annotators yet; create them with "
                        "`veil review add-annotator NAME --store ...`")
    local = local_name(annotator) if loopback and not require_tokens else None
    service = ReviewService(store, dataset, settings, local_annotator=local,
                            follow_links=follow_links)
    trusted = None
    if loopback and ":" not in host:
        trusted = sorted({host, *LOOPBACK_HOSTS} - {"[::1]", "::1"})
    return service, create_app(service, trusted_hosts=trusted, max_body=max_body)


def serve(
    dataset: Dataset, store: FaceStore, settings: ReviewSettings | Resolved, *,
    host: str = "127.0.0.1", port: int = 8000, annotator: str | None = None,
    require_tokens: bool = False, remember: Mapping[str, Any] | None = None,
    log_level: str = "info", follow_links: bool = False, max_body: int = MAX_BODY_BYTES,
    ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
) -> None:
    """Serve until interrupted; ``remember`` (policy flags given) is stored, with what
    they changed, once the server is allowed to start. With ``ssl_certfile`` and
    ``ssl_keyfile`` uvicorn serves HTTPS."""
    import uvicorn

    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise VeilError("TLS needs both --ssl-certfile and --ssl-keyfile")
    tls = ssl_certfile is not None
    resolved = settings if isinstance(settings, Resolved) else Resolved(settings)
    settings = resolved.settings
    service, app = build(dataset, store, settings, host=host, annotator=annotator,
                         require_tokens=require_tokens, follow_links=follow_links,
                         max_body=max_body)
    if not tls and not is_loopback(host):
        print(PLAIN_HTTP_WARNING.format(host=host), file=sys.stderr, flush=True)
    resolved = resolved.remember(service.ledger, remember or {})
    service.changed = dict(resolved.changed)
    for line in describe_settings(resolved):
        print(f"veil review: {line}")
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if tls else "http"
    p = service.queue.progress(service.local_annotator or "")
    print(f"veil review: {p.total:,} images, {p.complete:,} complete, "
          f"{len(service.gold_keys()):,} gold; {settings.reviews_per_image} review(s) per image, "
          f"{settings.aggregate}")
    if service.local_annotator:
        print(f"veil review: open {scheme}://{shown}:{port}/ (reviewing as "
              f"{service.local_annotator}; stats at /stats)", flush=True)
    else:
        print(f"veil review: listening on {shown}:{port}; every reviewer opens the personal link "
              "from `veil review add-annotator` (stats at /stats)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False,
                ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)


def describe_settings(resolved: Resolved) -> list[str]:
    """The settings in force, and which of them this start changed, as lines."""
    s = resolved.settings
    lines = [", ".join(f"{name.replace('_', ' ')} {value}" for name, value in
                       s.as_dict().items())]
    if resolved.changed:
        lines.append("changed by this start: " + ", ".join(
            f"{name.replace('_', ' ')} {was} -> {now}"
            for name, (was, now) in sorted(resolved.changed.items())))
    return lines


@contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", *, ssl_certfile: str | None = None,
            ssl_keyfile: str | None = None) -> Iterator[str]:
    """Serve ``app`` from a background thread on a free port; yields its base URL.

    For tests and notebooks: the real uvicorn server, on a socket bound before it starts
    (HTTPS with ``ssl_certfile`` and ``ssl_keyfile``).
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off",
                                           ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise VeilError("the review server did not start")
            time.sleep(0.01)
        yield f"{'https' if ssl_certfile else 'http'}://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
