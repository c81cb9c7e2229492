"""The web page: ``GET /`` and ``GET /ui/`` answer ``index.html``; ``/ui/<name>`` its assets.

Plain files from ``src/serve/static`` (no build step, no CDN), named one by one so that nothing
else on disk can be asked for and no other route is shadowed. The page loads its script and
style from the same origin and uses no inline code, so it runs under ``default-src 'self'``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from src.core.errors import NotFoundError
from src.serve.middleware.security_headers import UI_CSP

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
ASSETS: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# Revalidated on each load (an upgrade shows at once); ETag/Last-Modified make that cheap.
CACHE = {"Cache-Control": "no-cache"}
# The page's policy (UI_CSP allows media from blob: URLs: the browser plays the chosen video from
# one to cut out its most suspicious frame).
PAGE_CSP = UI_CSP

router = APIRouter(tags=["web page"], include_in_schema=False)


def _index() -> FileResponse:
    return FileResponse(
        STATIC_DIR / "index.html",
        media_type="text/html; charset=utf-8",
        headers={**CACHE, "Content-Security-Policy": PAGE_CSP},
    )


@router.get("/")
async def home() -> FileResponse:
    return _index()


@router.get("/ui/")
async def ui() -> FileResponse:
    return _index()


@router.get("/ui/{name}")
async def asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFoundError(f"the web page has no file named {name!r}")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=CACHE)
