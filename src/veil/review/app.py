"""The review web app: ``create_app(service)`` gives a FastAPI app, ``serve`` runs it.

Everything the page needs is served by the app (no CDN, no external request): the
tool works offline. Responses carry a strict Content-Security-Policy; on loopback
the Host header must name the loopback too, so a web page elsewhere cannot reach a
token-less local review through DNS rebinding.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from veil import __version__
from veil.review.guard import MAX_BODY_BYTES, BodyGuard
from veil.review.routers import items, pages, team
from veil.review.routers.pages import STATIC
from veil.review.service import ReviewService

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]", "::1"]


def create_app(service: ReviewService, *, trusted_hosts: list[str] | None = None,
               max_body: int = MAX_BODY_BYTES) -> FastAPI:
    """The app for ``service``; ``trusted_hosts`` limits the Host header (None: any);
    request bodies over ``max_body`` bytes are refused before they are read."""
    app = FastAPI(title="veil review", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json")
    app.state.service = service
    app.include_router(pages.router)
    app.include_router(items.router)
    app.include_router(team.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Where and why, never the input echoed back (it may not even be valid JSON: NaN).
        errors = [{"loc": [str(part) for part in e.get("loc", ())], "msg": str(e.get("msg", "")),
                   "type": str(e.get("type", ""))} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    # Inside the headers middleware (its refusals get the same headers), outside the routes.
    app.add_middleware(BodyGuard, service=service, max_body=max_body)

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        if request.url.path.startswith("/api/") and "cache-control" not in response.headers:
            response.headers["Cache-Control"] = "no-store"
        return response

    if trusted_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=trusted_hosts)
    return app
