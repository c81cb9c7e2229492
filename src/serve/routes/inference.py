"""Inference routes. Each is thin: admit, read the upload, hand it to the engine, answer."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from src.engine.service import Prediction
from src.serve.deps import CallerDep, ServiceDep, SettingsDep, UploadGateDep
from src.serve.routes.openapi import IMAGE_UPLOAD_BODY, error_responses
from src.serve.schemas import InferenceResponse, Timings
from src.serve.uploads import watch_disconnect

router = APIRouter(tags=["inference"])


@router.post(
    "/infer",
    response_model=InferenceResponse,
    responses=error_responses(400, 401, 408, 413, 415, 422, 503, 504),
    openapi_extra=IMAGE_UPLOAD_BODY,
)
async def infer(
    request: Request,
    caller: CallerDep,
    service: ServiceDep,
    settings: SettingsDep,
    uploads: UploadGateDep,
) -> InferenceResponse:
    """Score one frame: is it real or fake?

    Send the image as multipart field `file` (or as a raw `image/*` body) with `X-API-Key`.
    """
    arrived_at: float = request.state.arrived_at
    deadline = arrived_at + settings.request_timeout_s
    async with uploads.hold() as upload:
        data = await uploads.receive(
            upload, request, settings.max_upload_bytes, request_deadline=deadline
        )
    with service.admit(1, arrived_at=arrived_at):
        started = time.perf_counter()
        disconnected = watch_disconnect(request)
        try:
            prediction = await service.predict_bytes(
                data, deadline=deadline, disconnected=disconnected
            )
        finally:
            disconnected.cancel()
    request.app.state.metrics.prediction_made(prediction.label, prediction.fake_prob)
    return _response(request, service, prediction, started)


def _response(
    request: Request, service: ServiceDep, prediction: Prediction, started: float
) -> InferenceResponse:
    metadata = service.metadata
    fake_prob = round(prediction.fake_prob, 6)
    return InferenceResponse(
        request_id=request.state.request_id,
        fake_prob=fake_prob,
        real_prob=round(1.0 - fake_prob, 6),
        label=prediction.label,
        threshold=service.threshold,
        model_version=metadata.version,
        model_architecture=metadata.architecture,
        timings=Timings(
            preprocess_ms=round(prediction.preprocess_ms, 3),
            queue_ms=round(prediction.queue_ms, 3),
            inference_ms=round(prediction.inference_ms, 3),
            total_ms=round((time.perf_counter() - started) * 1000, 3),
            batch_size=prediction.batch_size,
        ),
    )
