"""The Open Inference Protocol (v2) beside the service's own API, for KServe and Triton clients
(``tritonclient.http`` among them).

``/v2/health/live`` and ``/v2/health/ready`` are probes, open like ``/health`` and ``/ready``;
everything else needs an ``X-API-Key`` with the ``infer`` scope. Scoring goes through the same
engine as ``/infer/batch``: the body is read in an upload slot, the request is charged one unit
per image, takes one admission place per image, and the images are scored by ``predict_each``.
The protocol has no per-item errors, so one bad image fails the request (400). Errors under
``/v2`` are ``{"error": "..."}`` (``src/serve/errors.py`` shapes them by path). Answers are not
cached nor kept in the history: the protocol's clients have their own request ids.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from src import __version__
from src.core.errors import (
    BadRequestError,
    InputError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
)
from src.core.settings import Settings, version_order
from src.engine.service import InferenceService, Prediction
from src.serve import oip
from src.serve.deps import (
    InferCallerDep,
    SettingsDep,
    UploadGateDep,
    ready_models,
    ready_service,
)
from src.serve.ratelimit import charge
from src.serve.uploads import Upload, watch_disconnect

if TYPE_CHECKING:
    from src.serve.lifecycle import ModelManager

router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"])

SERVER_NAME = "deepfake-detection"
JSON_ENVELOPE_BYTES = 64 * 1024  # the JSON header around the tensors
INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "An inference request: all JSON, or (the binary tensor data extension) "
        f"a JSON header of `{oip.HEADER_LENGTH}` bytes followed by the binary tensors.",
        "content": {
            "application/json": {
                "schema": {"type": "object"},
                "example": {
                    "inputs": [
                        {
                            "name": oip.IMAGE_INPUT,
                            "datatype": "BYTES",
                            "shape": [1],
                            "parameters": {"content_type": "base64"},
                            "data": ["/9j/4AAQSkZJRg..."],
                        }
                    ]
                },
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _ready(request: Request) -> ModelManager | None:
    try:
        return ready_models(request)
    except ServiceUnavailableError:  # not loaded yet, or draining: "not ready", not an error
        return None


def _model(settings: Settings, model: str) -> None:
    """404 unless ``model`` is the one this process serves."""
    if model != settings.model_name:
        raise NotFoundError(f"unknown model '{model}'")


def _known_version(models: ModelManager, model: str, version: str | None) -> None:
    """404 unless ``version`` (when given) is in the repository or loaded."""
    if (
        version is not None
        and version not in models.registry.loaded
        and version not in models.versions_on_disk()
    ):
        raise NotFoundError(f"model '{model}' has no version '{version}'")


async def versioned_service(
    request: Request, version: str | None = None
) -> AsyncIterator[InferenceService]:
    """The version named in the path (404 unless it is loaded), else the traffic split's
    choice; held until the answer is sent, like ``ServiceDep``."""
    service = ready_service(request, getattr(request.state, "arrived_at", None), version)
    with service.lease():
        yield service


VersionedServiceDep = Annotated[InferenceService, Depends(versioned_service)]


@router.get("/health/live")
async def live() -> dict[str, bool]:
    """Liveness: the process answers."""
    return {"live": True}


@router.get("/health/ready")
async def ready(request: Request) -> JSONResponse:
    """Readiness: 200 once the model is loaded and warmed; 400 (the protocol's "false")
    before that and while draining."""
    is_ready = _ready(request) is not None
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 400)


@router.get("")
async def server_metadata(caller: InferCallerDep) -> dict[str, Any]:
    """The server's name, version and protocol extensions."""
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(oip.EXTENSIONS)}


@router.get("/models/{model}/ready")
@router.get("/models/{model}/versions/{version}/ready")
async def model_ready(
    request: Request,
    caller: InferCallerDep,
    settings: SettingsDep,
    model: str,
    version: str | None = None,
) -> JSONResponse:
    """Whether the model (version) takes requests: 200, or 400 while not; 404 if unknown."""
    _model(settings, model)
    models = _ready(request)
    if models is None:
        return JSONResponse({"name": model, "ready": False}, status_code=400)
    _known_version(models, model, version)
    is_ready = version is None or version in models.registry.loaded
    return JSONResponse({"name": model, "ready": is_ready}, status_code=200 if is_ready else 400)


@router.get("/models/{model}")
@router.get("/models/{model}/versions/{version}")
async def model_metadata(
    request: Request,
    caller: InferCallerDep,
    settings: SettingsDep,
    model: str,
    version: str | None = None,
) -> dict[str, Any]:
    """The model's loaded versions, platform, and its input and output tensors."""
    _model(settings, model)
    models = ready_models(request)
    _known_version(models, model, version)
    service = ready_service(request, None, version)
    return {
        "name": model,
        "versions": sorted(models.registry.loaded, key=version_order),
        "platform": service.describe().backend,
        **oip.tensor_metadata(),
    }


@router.post("/models/{model}/infer", openapi_extra=INFER_BODY)
@router.post("/models/{model}/versions/{version}/infer", openapi_extra=INFER_BODY)
async def infer(
    request: Request,
    caller: InferCallerDep,
    service: VersionedServiceDep,
    settings: SettingsDep,
    uploads: UploadGateDep,
    model: str,
    version: str | None = None,
) -> Response:
    """Score the images of input ``image``; answer ``fake_prob`` and ``label`` per image."""
    _model(settings, model)
    arrived_at: float = request.state.arrived_at
    deadline = arrived_at + settings.request_timeout_s
    limit = settings.max_batch_bytes * 4 // 3 + JSON_ENVELOPE_BYTES  # base64 JSON is 4/3
    async with uploads.hold() as upload:
        body = await uploads.within(
            upload, request, _read_body(request, limit, upload), request_deadline=deadline
        )
    parsed = oip.parse_infer_request(
        body,
        request.headers.get(oip.HEADER_LENGTH),
        max_items=settings.max_batch_items,
        max_item_bytes=settings.max_upload_bytes,
    )
    await charge(request, len(parsed.images))
    predictions = await _score(request, service, parsed.images, arrived_at, deadline)
    metrics = request.app.state.metrics
    for prediction in predictions:
        metrics.prediction_made(prediction.label, prediction.fake_prob, service.version)
    content, header_length = oip.encode_infer_response(
        model_name=model,
        model_version=service.version,
        request_id=parsed.id,
        fake_probs=[prediction.fake_prob for prediction in predictions],
        labels=[prediction.label for prediction in predictions],
        outputs=parsed.outputs,
    )
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={oip.HEADER_LENGTH: str(header_length)},
    )


async def _score(
    request: Request,
    service: InferenceService,
    images: list[bytes],
    arrived_at: float,
    deadline: float,
) -> list[Prediction]:
    """Every image's prediction, one admission place each; one bad image fails them all."""
    with service.admit(len(images), arrived_at=arrived_at):
        disconnected = watch_disconnect(request)
        try:
            outcomes = await _predict(service, images, deadline, disconnected)
        finally:
            disconnected.cancel()
    predictions: list[Prediction] = []
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, InputError):
            raise BadRequestError(
                f"input '{oip.IMAGE_INPUT}' element {index}: {outcome.message} ({outcome.code})"
            )
        predictions.append(outcome)
    return predictions


async def _predict(
    service: InferenceService,
    images: list[bytes],
    deadline: float,
    disconnected: asyncio.Future[None],
) -> list[Prediction | InputError]:
    """``predict_each``'s outcomes; one image takes ``/infer``'s path, without the batch's
    window and gathering (the common case, and what the 0.95x target compares)."""
    if len(images) > 1:
        return await service.predict_each(images, deadline=deadline, disconnected=disconnected)
    try:
        return [
            await service.predict_bytes(images[0], deadline=deadline, disconnected=disconnected)
        ]
    except InputError as exc:
        return [exc]


async def _read_body(request: Request, limit: int, upload: Upload) -> bytes:
    """The body, at most ``limit`` bytes (413 by the declared length at once, else as it
    streams in), inflated when it came compressed (``gzip`` or ``deflate``, as tritonclient
    sends with ``request_compression_algorithm``), the inflated size under the same limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    async for chunk in request.stream():
        upload.received += len(chunk)
        if upload.received > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadRequestError(f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    return _inflate(body, encoding, limit)


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` decompressed, refused (413) as soon as it would pass ``limit`` bytes."""
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequestError(f"the {encoding} body is corrupt: {exc}") from None
    if len(data) > limit:
        raise _too_large(limit)
    if not inflater.eof or inflater.unused_data:
        raise BadRequestError(f"the {encoding} body is truncated or has trailing bytes")
    return data


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"the request body exceeds the {limit}-byte limit")
