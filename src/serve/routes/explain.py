"""``POST /explain``: ``/infer``'s verdict on an image, and where in the face its evidence is;
``GET /explain/methods``: which methods this service can run (the web page offers those)."""

from __future__ import annotations

import base64
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from src.core.errors import DeepfakeError
from src.core.settings import Settings
from src.engine.service import InferenceService
from src.explain.kinds import (
    GRADIENT_METHODS,
    METHODS,
    Method,
    MethodUnavailableError,
    method_support,
)
from src.explain.render import grid
from src.explain.runner import Explained, ExplainSettings, ExplanationRunner
from src.serve.deps import CallerDep, ServiceDep, SettingsDep, UploadGateDep
from src.serve.metrics import Metrics
from src.serve.ratelimit import charge
from src.serve.routes.openapi import IMAGE_UPLOAD_BODY, error_responses
from src.serve.schemas import (
    ExplainResponse,
    Explanation,
    ExplanationTimings,
    Timings,
)
from src.serve.uploads import watch_disconnect

router = APIRouter(tags=["explanations"])
PNG = "image/png"


def explain_settings(settings: Settings) -> ExplainSettings:
    return ExplainSettings(
        max_concurrent=settings.max_concurrent_explain,
        timeout_s=settings.explain_timeout_s,
        ig_steps=settings.explain_ig_steps,
        lime_samples=settings.explain_lime_samples,
        shap_samples=settings.explain_shap_samples,
        superpixels=settings.explain_superpixels,
        checkpoint_path=settings.checkpoint_path,
        device=settings.torch_device,
        torch_threads=settings.effective_torch_threads,
        retry_after_s=settings.retry_after_s,
    )


def explanation_runner(request: Request, service: InferenceService) -> ExplanationRunner:
    """The app's runner for the service now loaded (made on the first explanation, so a service
    that never explains never starts its thread nor imports torch for it)."""
    state = request.app.state
    runner: ExplanationRunner | None = getattr(state, "explanation_runner", None)
    if runner is None or runner.service is not service:
        if runner is not None:
            runner.shutdown()
        runner = ExplanationRunner(service, explain_settings(state.settings))
        state.explanation_runner = runner
    return runner


class MethodView(BaseModel):
    name: Method
    kind: Literal["gradient", "perturbation"] = Field(
        description="gradient: reads the torch network's gradients (torch and Captum); "
        "perturbation: only calls the serving backend's scores, on any backend."
    )
    available: bool
    reason: str | None = Field(description="Why it cannot run here (null when it can).")


class ExplainMethodsResponse(BaseModel):
    backend: str = Field(description="The serving backend, as /ready names it.")
    default: Method = Field(description="What /explain uses without ?method=.")
    methods: list[MethodView]


@router.get(
    "/explain/methods", response_model=ExplainMethodsResponse, responses=error_responses(503)
)
async def explain_methods(service: ServiceDep) -> ExplainMethodsResponse:
    """The explanation methods this service can run, and why not the others: LIME and SHAP on
    every backend; Grad-CAM and integrated gradients where torch and Captum are installed (the
    torch network is loaded from the same checkpoint on their first use when the backend is
    ONNX Runtime). No key needed, as for `/ready`: the web page reads it before one is typed."""
    support = method_support(service.describe().backend)
    return ExplainMethodsResponse(
        backend=support.backend,
        default=support.default,
        methods=[
            MethodView(
                name=method,
                kind="gradient" if method in GRADIENT_METHODS else "perturbation",
                available=method in support.available,
                reason=support.why_not(method),
            )
            for method in METHODS
        ],
    )


@router.post(
    "/explain",
    response_model=ExplainResponse,
    responses={
        **error_responses(400, 401, 403, 408, 413, 415, 422, 429, 503, 504),
        200: {
            "content": {PNG: {}},
            "description": "JSON, or the overlay PNG with Accept: image/png",
        },
    },
    openapi_extra=IMAGE_UPLOAD_BODY,
)
async def explain(
    request: Request,
    caller: CallerDep,
    service: ServiceDep,
    settings: SettingsDep,
    uploads: UploadGateDep,
    method: Annotated[
        Method | None,
        Query(
            description="gradcam (fastest), ig (Integrated Gradients), lime or shap (over "
            "regions of the crop; slowest). Default: gradcam where it runs, else lime. "
            "gradcam and ig need torch: without it they are 422 method_unavailable "
            "(`GET /explain/methods` lists what this service runs)."
        ),
    ] = None,
) -> ExplainResponse | Response:
    """Why did the model say fake? The `/infer` answer for the image plus a heat map over the
    face crop the model scored: `explanation.heatmap_png` (the crop with the heat overlaid,
    base64) and `explanation.heatmap` (the values).

    Send the image as for `/infer`. With `Accept: image/png` the answer is the overlay PNG itself
    (the verdict in the `X-Fake-Prob` and `X-Label` headers). Explanations run one at a time
    (`DFD_MAX_CONCURRENT_EXPLAIN`; 503 when busy) within `DFD_EXPLAIN_TIMEOUT_S` (504).
    LIME and SHAP run on every backend; Grad-CAM and integrated gradients need torch and Captum
    (422 `method_unavailable` without them; `GET /explain/methods` says what runs here).
    """
    metrics: Metrics = request.app.state.metrics
    support = method_support(service.describe().backend)
    method = method or support.default
    reason = support.why_not(method)
    if reason is not None:  # before the upload is read: nothing here could explain it
        metrics.explanations.labels(method=method, outcome=MethodUnavailableError.code).inc()
        raise MethodUnavailableError(reason)
    runner = explanation_runner(request, service)
    await charge(request, 1)
    arrived_at: float = request.state.arrived_at
    deadline = arrived_at + settings.explain_timeout_s
    async with uploads.hold() as upload:
        data = await uploads.receive(
            upload, request, settings.max_upload_bytes, request_deadline=deadline
        )
    with service.admit(1, arrived_at=arrived_at):
        started = time.perf_counter()
        disconnected = watch_disconnect(request)
        try:
            explained = await runner.explain_bytes(
                data, method, deadline=deadline, disconnected=disconnected
            )
        except DeepfakeError as exc:
            metrics.explanations.labels(method=method, outcome=exc.code).inc()
            raise
        finally:
            disconnected.cancel()
    metrics.explanations.labels(method=method, outcome="ok").inc()
    metrics.explanation_latency.labels(method=method).observe(
        explained.timings_ms.get("explain_ms", 0.0) / 1000
    )
    if PNG in request.headers.get("accept", "").lower():
        fake_prob = round(explained.prediction.fake_prob, 6)
        headers = {"X-Fake-Prob": str(fake_prob), "X-Label": explained.prediction.label}
        return Response(explained.png, media_type=PNG, headers=headers)
    return _response(request, service, explained, started)


def _response(
    request: Request, service: ServiceDep, explained: Explained, started: float
) -> ExplainResponse:
    prediction = explained.prediction
    fake_prob = round(prediction.fake_prob, 6)
    timings = explained.timings_ms
    return ExplainResponse(
        request_id=request.state.request_id,
        fake_prob=fake_prob,
        real_prob=round(1.0 - fake_prob, 6),
        label=prediction.label,
        threshold=service.threshold,
        model_version=service.version,
        model_architecture=service.metadata.architecture,
        timings=Timings(
            preprocess_ms=round(prediction.preprocess_ms, 3),
            queue_ms=round(prediction.queue_ms, 3),
            inference_ms=round(prediction.inference_ms, 3),
            total_ms=round((time.perf_counter() - started) * 1000, 3),
            batch_size=prediction.batch_size,
        ),
        explanation=Explanation(
            method=explained.method,
            face_box=None if explained.face_box is None else list(explained.face_box),
            heatmap_png=base64.b64encode(explained.png).decode("ascii"),
            heatmap=grid(explained.heat),
            timings=ExplanationTimings(
                preprocess_ms=timings.get("preprocess_ms", 0.0),
                explain_ms=timings.get("explain_ms", 0.0),
                render_ms=timings.get("render_ms", 0.0),
            ),
        ),
    )
