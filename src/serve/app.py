"""The app factory: ``create_app(settings)`` wires middleware, routes, handlers and lifespan.

Nothing is built at import time: each app has its own settings, metrics registry and service.
"""

from __future__ import annotations

import re

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from src import __version__
from src.core.context import current_request_id
from src.core.settings import Settings, load_settings
from src.serve.deps import KeyRing
from src.serve.errors import install_exception_handlers
from src.serve.lifespan import lifespan
from src.serve.logging_setup import setup_logging
from src.serve.metrics import Metrics
from src.serve.middleware.request_context import RequestContextMiddleware
from src.serve.routes import api_router
from src.serve.schemas import error_body
from src.serve.uploads import UploadGate

# host (an IP literal keeps its brackets, as in Starlette) and an optional port
_HOST_HEADER = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\[\]:/@\s]+)(?::[0-9]{1,5})?")


class AllowedHostsMiddleware(TrustedHostMiddleware):
    """Starlette's ``TrustedHostMiddleware`` (its patterns and their checks; no www redirect),
    answering a Host that is not allowed with 400 in the one JSON error shape."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        super().__init__(app, allowed_hosts=allowed_hosts, www_redirect=False)

    def allows(self, host_header: str | None) -> bool:
        match = _HOST_HEADER.fullmatch(host_header or "")
        if match is None:
            return False
        host = match["host"].lower()
        return any(
            host == pattern or (pattern.startswith("*") and host.endswith(pattern[1:]))
            for pattern in self.allowed_hosts
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.allow_any
            or scope["type"] not in ("http", "websocket")
            or self.allows(Headers(scope=scope).get("host"))
        ):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            message = "the Host header names no host this service answers for"
            body = error_body("invalid_host", message, current_request_id())
            await JSONResponse(body, status_code=400)(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    setup_logging(settings.log_level, settings.log_format)
    app = FastAPI(
        title="Deepfake detection service",
        version=__version__,
        description=(
            "Is this video frame real or fake? `POST /infer` an image with `X-API-Key` and get "
            "`fake_prob` and `real_prob`. Probes: `/health` (liveness), `/ready` (readiness), "
            "`/metrics` (Prometheus)."
        ),
        lifespan=lifespan,
        # No redirect that would echo the Host header (`/health/` is a 404, not a redirect).
        redirect_slashes=False,
        # Served offline by routes/docs.py, from assets shipped in a package (no CDN).
        docs_url=None,
        redoc_url=None,
    )
    metrics = Metrics()
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.key_ring = KeyRing.from_keys(settings.api_keys)
    app.state.upload_gate = UploadGate(
        settings.max_concurrent_uploads,
        settings.body_timeout_s,
        settings.min_upload_bytes_per_s,
        metrics,
        settings.retry_after_s,
    )
    app.state.service = None
    install_exception_handlers(app)
    app.include_router(api_router)
    app.add_middleware(AllowedHostsMiddleware, allowed_hosts=settings.allowed_hosts)
    # Added last, so outermost: refusals from the middleware above carry the request id too.
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
