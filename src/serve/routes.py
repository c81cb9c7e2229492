"""HTTP routes. Each one is thin: validate, hand to the service, shape the answer."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from src.exceptions import ServiceUnavailableError
from src.schemas import (
    ErrorResponse,
    HealthResponse,
    InferenceResponse,
    ReadinessResponse,
    Timings,
)
from src.serve.deps import ApiKeyDep, ServiceDep, SettingsDep
from src.serve.uploads import read_upload, watch_disconnect

router = APIRouter()


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse} for status in statuses}


MULTIPART_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The frame: JPEG, PNG, WebP or BMP (see settings).",
                        }
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.get("/health", response_model=HealthResponse, tags=["probes"])
async def health() -> HealthResponse:
    """Liveness: the process is up and its event loop answers."""
    return HealthResponse()


@router.get(
    "/ready",
    response_model=ReadinessResponse,
    responses=_errors(503),
    tags=["probes"],
)
async def ready(request: Request) -> ReadinessResponse:
    """Readiness: 200 once the model is loaded and warmed, 503 before that and while draining."""
    service = getattr(request.app.state, "service", None)
    if service is None or not service.ready:
        raise ServiceUnavailableError("the model is not loaded yet, or the service is draining")
    return ReadinessResponse(
        model_version=service.metadata.version,
        model_architecture=service.metadata.architecture,
        device=str(service.classifier.device),
    )


@router.get("/metrics", tags=["probes"], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics in the text exposition format."""
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.post(
    "/infer",
    response_model=InferenceResponse,
    responses=_errors(400, 401, 413, 415, 422, 503, 504),
    openapi_extra=MULTIPART_BODY,
    tags=["inference"],
)
async def infer(
    request: Request, _auth: ApiKeyDep, service: ServiceDep, settings: SettingsDep
) -> InferenceResponse:
    """Score one frame: is it real or fake?

    Send the image as multipart field `file` (or as a raw `image/*` body) with `X-API-Key`.
    """
    with service.admit(request.state.arrived_at):
        data = await read_upload(request, settings.max_upload_bytes)
        started = time.perf_counter()
        disconnected = watch_disconnect(request)
        try:
            prediction = await service.predict_bytes(data, disconnected)
        finally:
            disconnected.cancel()
    metrics = request.app.state.metrics
    metrics.predictions.labels(label=prediction.label).inc()
    metrics.fake_probability.observe(prediction.fake_prob)
    fake_prob = round(prediction.fake_prob, 6)
    return InferenceResponse(
        request_id=request.state.request_id,
        fake_prob=fake_prob,
        real_prob=round(1.0 - fake_prob, 6),
        label=prediction.label,  # type: ignore[arg-type]
        threshold=service.threshold,
        model_version=service.metadata.version,
        model_architecture=service.metadata.architecture,
        timings=Timings(
            preprocess_ms=round(prediction.preprocess_ms, 3),
            queue_ms=round(prediction.queue_ms, 3),
            inference_ms=round(prediction.inference_ms, 3),
            total_ms=round((time.perf_counter() - started) * 1000, 3),
            batch_size=prediction.batch_size,
        ),
    )
