"""Interactive API docs served from this process: no CDN, no inline script.

FastAPI's own ``/docs`` and ``/redoc`` load Swagger UI and ReDoc from a CDN, so they fail
offline, and their pages start Swagger UI with an inline ``<script>``, which a strict
Content-Security-Policy (``script-src 'self'``) blocks. This is FastAPI's "self-hosting
JavaScript and CSS for docs" recipe (``docs_url=None`` in the app, same-origin asset URLs) with
the start-up code served as a same-origin script too. The JS/CSS files are the ones the pinned
``fastapi-offline`` wheel ships; only its files are used, never its app factory.
"""

from __future__ import annotations

import html
import importlib.util
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

router = APIRouter(include_in_schema=False)

ASSETS_PREFIX = "/docs/assets"
ASSET_PACKAGE = "fastapi_offline"
# name served -> (file in the package's static/ folder, media type)
PACKAGED_ASSETS = {
    "swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    "swagger-ui.css": ("swagger-ui.css", "text/css; charset=utf-8"),
    "redoc.standalone.js": ("redoc.standalone.js", "text/javascript; charset=utf-8"),
    "favicon.png": ("favicon.png", "image/png"),
}
SWAGGER_INIT = "swagger-init.js"
ASSET_CACHE_CONTROL = "public, max-age=86400"
# What the Swagger UI page needs and no more: its scripts and styles from this origin (Swagger UI
# sets inline style attributes, hence 'unsafe-inline' for styles only), data: images (its icons),
# and requests to this origin (the OpenAPI document, "Try it out").
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)

# Starts Swagger UI with FastAPI's default parameters; the page's element carries the URL.
SWAGGER_INIT_JS = """\
window.addEventListener("DOMContentLoaded", function () {
  var node = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: node.getAttribute("data-openapi-url"),
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
});
"""

SWAGGER_PAGE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{title}</title>
<link rel="stylesheet" type="text/css" href="{assets}/swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}/favicon.png">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi_url}"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/{init}"></script>
</body>
</html>
"""

REDOC_PAGE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" type="image/png" href="{assets}/favicon.png">
</head>
<body>
<redoc spec-url="{openapi_url}"></redoc>
<script src="{assets}/redoc.standalone.js"></script>
</body>
</html>
"""


@lru_cache(maxsize=1)
def asset_dir() -> Path | None:
    """The ``static`` folder of the asset package, found without importing it."""
    spec = importlib.util.find_spec(ASSET_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    return folder if folder.is_dir() else None


def _page(template: str, request: Request, title: str) -> str:
    root = request.scope.get("root_path", "").rstrip("/")
    openapi_url = request.app.openapi_url or "/openapi.json"
    return template.format(
        title=html.escape(f"{request.app.title} - {title}"),
        assets=html.escape(root + ASSETS_PREFIX),
        openapi_url=html.escape(root + openapi_url),
        init=SWAGGER_INIT,
    )


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return HTMLResponse(
        _page(SWAGGER_PAGE, request, "Swagger UI"),
        headers={"Content-Security-Policy": DOCS_CSP},
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return HTMLResponse(_page(REDOC_PAGE, request, "ReDoc"))


@router.get(ASSETS_PREFIX + "/{name}")
async def docs_asset(name: str) -> Response:
    headers = {"Cache-Control": ASSET_CACHE_CONTROL, "X-Content-Type-Options": "nosniff"}
    if name == SWAGGER_INIT:
        return Response(SWAGGER_INIT_JS, media_type="text/javascript", headers=headers)
    if name not in PACKAGED_ASSETS:
        raise HTTPException(404, "no such docs asset")
    folder = asset_dir()
    if folder is None:
        raise HTTPException(404, f"the docs assets are not installed (pip install {ASSET_PACKAGE})")
    filename, media_type = PACKAGED_ASSETS[name]
    return FileResponse(folder / filename, media_type=media_type, headers=headers)
