"""Probes for operators: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from src.serve.deps import ready_models
from src.serve.metrics import exposition
from src.serve.routes.openapi import error_responses
from src.serve.schemas import HealthResponse, ReadinessResponse

router = APIRouter(tags=["probes"])


@router.get("/health", response_model=HealthResponse)
async def health() -> HealthResponse:
    """Liveness: the process is up and its event loop answers."""
    return HealthResponse()


@router.get("/ready", response_model=ReadinessResponse, responses=error_responses(503))
async def ready(request: Request) -> ReadinessResponse:
    """Readiness: 200 once the model is loaded and warmed, 503 before that and while draining."""
    service = ready_models(request).primary()
    info = service.describe()
    return ReadinessResponse(
        model_version=service.version,
        model_architecture=info.metadata.architecture,
        device=info.device,
        backend=info.backend,
    )


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: the text exposition format, or OpenMetrics (with exemplars: the trace
    id of a request on the latency histograms) when the scraper's ``Accept`` asks for it."""
    body, content_type = exposition(
        request.app.state.metrics.registry, request.headers.get("accept")
    )
    return Response(body, media_type=content_type)
