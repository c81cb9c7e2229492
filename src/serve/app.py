"""The app factory: ``create_app(settings)`` wires middleware, routes, handlers and lifespan.

Nothing is built at import time: each app has its own settings, metrics registry and service.
"""

from __future__ import annotations

from fastapi import FastAPI

from src import __version__
from src.core.settings import Settings, load_settings
from src.serve.deps import KeyRing
from src.serve.errors import install_exception_handlers
from src.serve.lifespan import lifespan
from src.serve.logging_setup import setup_logging
from src.serve.metrics import Metrics
from src.serve.middleware.allowed_hosts import AllowedHostsMiddleware
from src.serve.middleware.request_context import RequestContextMiddleware
from src.serve.routes import ROUTERS
from src.serve.uploads import UploadGate


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
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(AllowedHostsMiddleware, allowed_hosts=settings.allowed_hosts)
    # Added last, so outermost: refusals from the middleware above carry the request id too.
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
