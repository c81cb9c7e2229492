"""Inference routes. Each is thin: admit, read the upload, hand it to the engine, answer."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response

from src.core.labels import decide
from src.core.settings import Settings
from src.engine.service import InferenceService, Prediction
from src.serve.deps import CallerDep, RoutedServiceDep
from src.serve.ratelimit import charge
from src.serve.routes.openapi import IMAGE_UPLOAD_BODY, error_responses
from src.serve.routes.predictions import look_up, remember, store_result
from src.serve.schemas import InferenceResponse, Timings
from src.serve.uploads import UploadGate, while_connected

router = APIRouter(tags=["inference"])


@router.post(
    "/infer",
    response_model=InferenceResponse,
    responses=error_responses(400, 401, 403, 408, 413, 415, 422, 429, 503, 504),
    openapi_extra=IMAGE_UPLOAD_BODY,
)
async def infer(
    request: Request, response: Response, caller: CallerDep, service: RoutedServiceDep
) -> InferenceResponse:
    """Score one frame: is it real or fake?

    Send the image as multipart field `file` (or as a raw `image/*` body) with `X-API-Key`.
    The same bytes sent again to the same model are answered from the result cache
    (`X-Cache: hit`); every answer is kept in the history (`GET /predictions/{request_id}`).
    """
    # The hot path: the settings and the upload gate are read here rather than as
    # dependencies (each costs FastAPI a dependency solve per request), and the version is
    # leased for the whole answer here rather than by a dependency with ``yield``.
    with service.lease():
        return await _infer(request, response, service)


async def _infer(
    request: Request, response: Response, service: InferenceService
) -> InferenceResponse:
    state = request.app.state
    settings: Settings = state.settings
    uploads: UploadGate = state.upload_gate
    await charge(request, 1)  # before the body is read: a refused request costs no upload
    arrived_at: float = request.state.arrived_at
    deadline = arrived_at + settings.request_timeout_s
    async with uploads.hold() as upload:
        data = await uploads.receive(
            upload, request, settings.max_upload_bytes, request_deadline=deadline
        )
    read_at = time.perf_counter()
    lookup = await look_up(request, data)
    response.headers["X-Cache"] = lookup.header
    if lookup.value is not None:
        answer = _cached_response(request, service, lookup.value, read_at)
    else:
        answer = await _score(request, service, data, arrived_at, deadline)
        remember(
            request,
            lookup,
            image_cache_value(answer.fake_prob, answer.model_version, answer.model_architecture),
        )
    state.metrics.prediction_made(answer.label, answer.fake_prob, answer.model_version)
    models = state.models
    if models is not None:  # a shadow version, when set, scores a sample aside
        models.shadow(answer.request_id, data, service, answer.fake_prob)
    store_result(
        request,
        lookup,
        data,
        kind="image",
        fake_prob=answer.fake_prob,
        label=answer.label,
        threshold=answer.threshold,
        model_name=answer.model_architecture,
        model_version=answer.model_version,
        timings=answer.timings.model_dump(),
    )
    return answer


async def _score(
    request: Request, service: InferenceService, data: bytes, arrived_at: float, deadline: float
) -> InferenceResponse:
    with service.admit(1, arrived_at=arrived_at):
        started = time.perf_counter()
        prediction = await while_connected(
            request,
            lambda gone: service.predict_bytes(data, deadline=deadline, disconnected=gone),
        )
    return _response(request, service, prediction, started)


def image_cache_value(fake_prob: float, model_version: str, architecture: str) -> dict[str, Any]:
    """What the cache keeps of an image's answer (``/infer``'s and a batch item's alike): the
    score, not the label (decided again with the threshold)."""
    return {
        "fake_prob": fake_prob,
        "model_version": model_version,
        "model_architecture": architecture,
    }


def _cached_response(
    request: Request, service: InferenceService, value: dict[str, Any], started: float
) -> InferenceResponse:
    fake_prob = float(value["fake_prob"])
    return InferenceResponse(
        request_id=request.state.request_id,
        fake_prob=fake_prob,
        real_prob=round(1.0 - fake_prob, 6),
        label=decide(fake_prob, service.threshold),
        threshold=service.threshold,
        model_version=value["model_version"],
        model_architecture=value["model_architecture"],
        timings=Timings(
            preprocess_ms=0.0,
            queue_ms=0.0,
            inference_ms=0.0,
            total_ms=round((time.perf_counter() - started) * 1000, 3),
            batch_size=0,
        ),
    )


def _response(
    request: Request, service: InferenceService, prediction: Prediction, started: float
) -> InferenceResponse:
    metadata = service.metadata
    fake_prob = round(prediction.fake_prob, 6)
    return InferenceResponse(
        request_id=request.state.request_id,
        fake_prob=fake_prob,
        real_prob=round(1.0 - fake_prob, 6),
        label=prediction.label,
        threshold=service.threshold,
        model_version=service.version,
        model_architecture=metadata.architecture,
        timings=Timings(
            preprocess_ms=round(prediction.preprocess_ms, 3),
            queue_ms=round(prediction.queue_ms, 3),
            inference_ms=round(prediction.inference_ms, 3),
            total_ms=round((time.perf_counter() - started) * 1000, 3),
            batch_size=prediction.batch_size,
        ),
    )
