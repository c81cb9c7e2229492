"""The app factory: ``create_app(settings)`` wires middleware, routes, handlers and lifespan.

Nothing is built at import time: each app has its own settings, metrics registry and service.
"""

from __future__ import annotations

from fastapi import FastAPI

from src import __version__
from src.core.settings import Settings, load_settings
from src.monitoring.drift import DriftMonitor
from src.monitoring.tracing import Tracing, tracing_from_env
from src.serve.auth import KeyRing
from src.serve.errors import install_exception_handlers
from src.serve.lifespan import lifespan
from src.serve.logging_setup import setup_logging
from src.serve.metrics import Metrics
from src.serve.middleware.allowed_hosts import AllowedHostsMiddleware
from src.serve.middleware.request_context import RequestContextMiddleware
from src.serve.middleware.security_headers import SecurityHeadersMiddleware, add_cors
from src.serve.ratelimit import RateLimitHeadersMiddleware, RateLimits
from src.serve.routes import ROUTERS
from src.serve.uploads import UploadGate


def create_app(settings: Settings | None = None, *, tracing: Tracing | None = None) -> FastAPI:
    """``tracing``: the app's OpenTelemetry tracing; by default as the ``OTEL_*`` variables
    say (off unless ``OTEL_TRACES_EXPORTER`` names an exporter)."""
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
    app.state.key_ring = KeyRing.from_settings(settings, on_reload=metrics.key_file_read)
    app.state.rate_limits = RateLimits.from_settings(settings, metrics)
    app.state.upload_gate = UploadGate(
        settings.max_concurrent_uploads,
        settings.body_timeout_s,
        settings.min_upload_bytes_per_s,
        metrics,
        settings.retry_after_s,
    )
    app.state.service = None
    # The result store, cache and jobs (src/store): set by the lifespan, None while off.
    app.state.store = app.state.result_cache = app.state.jobs = None
    app.state.models = None
    # Monitoring (src/monitoring): drift windows compared by a task the lifespan starts.
    app.state.tracing = tracing if tracing is not None else tracing_from_env()
    app.state.drift = (
        DriftMonitor(
            settings.drift_window,
            settings.drift_min_samples,
            settings.drift_interval_s,
            on_report=metrics.drift_computed,
        )
        if settings.drift_enabled
        else None
    )
    install_exception_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(RateLimitHeadersMiddleware, limiter=app.state.rate_limits.keys)
    app.add_middleware(AllowedHostsMiddleware, allowed_hosts=settings.allowed_hosts)
    add_cors(app, settings.cors_origins)
    # Added last, so outermost: refusals from the middleware above carry the request id too.
    app.add_middleware(RequestContextMiddleware, metrics=metrics, tracing=app.state.tracing)
    # Outermost of all, so that every answer, the generic 500 included, carries them.
    app.add_middleware(SecurityHeadersMiddleware)
    return app
