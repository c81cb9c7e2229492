"""``POST /infer/video``: a verdict on a whole video, with per-frame scores; at once, from the
result cache, or as an asynchronous job (``mode=async``: 202 and ``/jobs/{id}``)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse

from src.core.aggregate import AggregateRule
from src.core.errors import ServiceUnavailableError, VideoLimitError
from src.core.labels import decide
from src.engine.service import InferenceService, VideoPrediction
from src.serve.deps import CallerDep, ServiceDep, SettingsDep, UploadGateDep
from src.serve.ratelimit import charge
from src.serve.routes.jobs import accept_job, job_kind
from src.serve.routes.openapi import VIDEO_UPLOAD_BODY, error_responses
from src.serve.routes.predictions import look_up, remember, store_result
from src.serve.schemas import (
    FaceBox,
    JobResponse,
    VideoDescription,
    VideoFrameResult,
    VideoResponse,
    VideoTimings,
)
from src.serve.uploads import VIDEO_UPLOAD, while_connected
from src.store.jobs import JobFunction
from src.store.recording import media_type_for
from src.store.repository import PredictionRecord

if TYPE_CHECKING:
    from src.serve.lifecycle import ModelManager

router = APIRouter(tags=["inference"])
JOB_KIND = "video"


@router.post(
    "/infer/video",
    response_model=VideoResponse,
    responses={
        **error_responses(400, 401, 403, 408, 413, 415, 422, 429, 503, 504),
        202: {"model": JobResponse, "description": "mode=async: the job, at its Location"},
    },
    openapi_extra=VIDEO_UPLOAD_BODY,
)
async def infer_video(
    request: Request,
    response: Response,
    caller: CallerDep,
    service: ServiceDep,
    settings: SettingsDep,
    uploads: UploadGateDep,
    frames: Annotated[
        int | None,
        Query(ge=1, description="Frames sampled uniformly over the duration (default 32)."),
    ] = None,
    aggregate: Annotated[
        AggregateRule | None,
        Query(description="How frame scores make the video's (default: DFD_VIDEO_AGGREGATE)."),
    ] = None,
    mode: Annotated[
        Literal["sync", "async"],
        Query(description="async: answer 202 at once and score in the background (/jobs/{id})."),
    ] = "sync",
) -> VideoResponse | JSONResponse:
    """Is this video fake, and where? Frames are sampled over the duration, one person's face is
    followed and cropped, each crop is scored, and the scores are aggregated.

    Send the video as multipart field `file` (or as a raw `video/*` body) with `X-API-Key`.
    The same bytes with the same `frames` and `aggregate` are answered from the result cache
    (`X-Cache: hit`). With `mode=async` the answer is `202` with `Location: /jobs/{id}`.
    """
    n_frames = frames or settings.effective_video_default_frames
    if n_frames > settings.video_max_frames:
        raise VideoLimitError(
            f"frames={n_frames} is more than the {settings.video_max_frames} frames a request "
            "may sample (DFD_VIDEO_MAX_FRAMES)"
        )
    rule: AggregateRule = aggregate or settings.video_aggregate
    await charge(request, n_frames)  # a video costs its frames; charged before the upload
    arrived_at: float = request.state.arrived_at
    deadline = arrived_at + settings.video_timeout_s
    async with uploads.hold() as upload:
        data = await uploads.receive(
            upload,
            request,
            settings.video_max_bytes,
            request_deadline=deadline,
            kind=VIDEO_UPLOAD,
            body_timeout_s=settings.video_body_timeout_s,
        )
    if mode == "async":
        return await accept_job(
            request, caller, JOB_KIND, data, {"frames": n_frames, "aggregate": rule}
        )
    started = time.perf_counter()
    lookup = await look_up(request, data, variant=_variant(n_frames, rule))
    response.headers["X-Cache"] = lookup.header
    if lookup.value is not None:
        answer = _from_cache(request.state.request_id, service, lookup.value, started)
    else:
        with service.admit(n_frames, arrived_at=arrived_at):
            prediction = await while_connected(
                request,
                lambda gone: service.predict_video(
                    data, frames=n_frames, rule=rule, deadline=deadline, disconnected=gone
                ),
            )
        answer = video_response(request.state.request_id, service, prediction, started)
        remember(request, lookup, _cache_value(answer))
    request.app.state.metrics.prediction_made(answer.label, answer.fake_prob, answer.model_version)
    store_result(
        request,
        lookup,
        data,
        kind="video",
        fake_prob=answer.fake_prob,
        label=answer.label,
        threshold=answer.threshold,
        model_name=service.metadata.architecture,
        model_version=answer.model_version,
        timings=answer.timings.model_dump(),
        frame_scores=[frame.model_dump() for frame in answer.frames],
    )
    return answer


@job_kind(JOB_KIND)
def video_job(app: FastAPI) -> JobFunction:
    """A ``mode=async`` video: scored like a synchronous one when a runner takes it, its
    answer kept as the job's result and in the history under the job's id."""

    async def run(path: Path, params: dict[str, Any]) -> dict[str, Any]:
        models: ModelManager | None = getattr(app.state, "models", None)
        if models is None or not models.core.admission.ready:
            raise ServiceUnavailableError("the model is not loaded yet")  # postponed, not failed
        service = models.route(params.get("key_id"))
        settings = app.state.settings
        data = await asyncio.to_thread(path.read_bytes)
        frames, rule = int(params["frames"]), params["aggregate"]
        started = time.perf_counter()
        with service.lease(), service.admit(frames):
            prediction = await service.predict_video(
                data,
                frames=frames,
                rule=rule,
                deadline=started + settings.video_timeout_s,
            )
        answer = video_response(path.stem, service, prediction, started)
        store = app.state.store
        if store is not None:
            store.record(
                PredictionRecord(
                    request_id=path.stem,
                    sha256=hashlib.sha256(data).hexdigest(),
                    input_bytes=len(data),
                    media_type=media_type_for(data),
                    model_name=service.metadata.architecture,
                    model_version=answer.model_version,
                    fake_prob=answer.fake_prob,
                    label=answer.label,
                    threshold=answer.threshold,
                    kind="video",
                    key_id=params.get("key_id"),
                    timings=answer.timings.model_dump(),
                    frame_scores=[frame.model_dump() for frame in answer.frames],
                ),
                data,
            )
        return answer.model_dump(mode="json")

    return run


def _variant(frames: int, rule: str) -> str:
    """What besides the bytes and the model changes a video's answer."""
    return f":video:{frames}:{rule}"


def _cache_value(answer: VideoResponse) -> dict[str, Any]:
    """The answer without what belongs to one request (its id, label, threshold, timings)."""
    return answer.model_dump(mode="json", exclude={"request_id", "label", "threshold", "timings"})


def _from_cache(
    request_id: str, service: InferenceService, value: dict[str, Any], started: float
) -> VideoResponse:
    fake_prob = float(value["fake_prob"])
    return VideoResponse.model_validate(
        {
            **value,
            "request_id": request_id,
            "label": decide(fake_prob, service.threshold),
            "threshold": service.threshold,
            "timings": VideoTimings(
                decode_ms=0.0,
                detect_ms=0.0,
                inference_ms=0.0,
                total_ms=round((time.perf_counter() - started) * 1000, 3),
            ),
        }
    )


def video_response(
    request_id: str, service: InferenceService, prediction: VideoPrediction, started: float
) -> VideoResponse:
    fake_prob = round(prediction.fake_prob, 6)
    info = prediction.info
    return VideoResponse(
        request_id=request_id,
        fake_prob=fake_prob,
        real_prob=round(1.0 - fake_prob, 6),
        label=prediction.label,
        threshold=service.threshold,
        model_version=service.version,
        aggregate=prediction.aggregate,
        video=VideoDescription(
            duration_s=round(info.duration_s, 3),
            fps=round(info.fps, 3),
            width=info.width,
            height=info.height,
            codec=info.codec,
            frames_sampled=len(prediction.frames),
            frames_scored=prediction.frames_scored,
        ),
        frames=[
            VideoFrameResult(
                index=frame.index,
                time_s=round(frame.time_s, 3),
                fake_prob=None if frame.fake_prob is None else round(frame.fake_prob, 6),
                face=None
                if frame.face is None
                else FaceBox(box=list(frame.face.box), score=round(frame.face.score, 4)),
            )
            for frame in prediction.frames
        ],
        timings=VideoTimings(
            decode_ms=round(prediction.decode_ms, 3),
            detect_ms=round(prediction.detect_ms, 3),
            inference_ms=round(prediction.inference_ms, 3),
            total_ms=round((time.perf_counter() - started) * 1000, 3),
        ),
    )
