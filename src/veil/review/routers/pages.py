"""The annotator's page, the stats page and their assets, all served by the app itself."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

STATIC = Path(str(files("veil.review") / "static"))
# Kept here rather than as a file: package data ships html, js and css only.
FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" '
    'rx="3" fill="#16181d"/><rect x="3.5" y="3.5" width="9" height="9" fill="none" '
    'stroke="#ffd400" stroke-width="1.6"/></svg>'
)

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/stats")
def stats_page() -> FileResponse:
    return FileResponse(STATIC / "stats.html", headers={"Cache-Control": "no-cache"})


@router.get("/favicon.svg")
def favicon() -> Response:
    return Response(FAVICON, media_type="image/svg+xml",
                    headers={"Cache-Control": "public, max-age=86400"})
