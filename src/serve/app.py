"""The app factory: ``create_app(settings)`` wires middleware, routes, handlers and lifespan."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

import torch
from fastapi import FastAPI

from src import __version__
from src.config import Settings, load_settings
from src.inference import AsyncInferenceService, BatchingConfig, FaceCropper, new_model_thread
from src.logging_config import setup_logging
from src.metrics import Metrics
from src.middleware import RequestContextMiddleware
from src.models import FrameClassifier, ModelMetadata, load_classifier
from src.serve.deps import key_digests
from src.serve.errors import install_exception_handlers
from src.serve.routes import router
from src.validation import ImageLimits

logger = logging.getLogger(__name__)
DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def build_face_cropper(settings: Settings, metadata: ModelMetadata) -> FaceCropper | None:
    """The same face crop as training, when the setting (or the checkpoint) asks for it."""
    enabled = metadata.face_crop if settings.face_crop == "auto" else settings.face_crop == "on"
    if not enabled:
        return None
    from src.preprocess.faces import FaceDetector, largest_face_crop

    detector = FaceDetector()
    margin = metadata.face_margin

    def crop(rgb: Any) -> Any:
        return largest_face_crop(rgb, detector, margin=margin)

    return crop


def image_limits(settings: Settings) -> ImageLimits:
    return ImageLimits(
        allowed_formats=frozenset(settings.allowed_formats),
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_image_pixels,
        max_side=settings.max_image_side,
        min_side=settings.min_image_side,
    )


def batching_config(settings: Settings) -> BatchingConfig:
    return BatchingConfig(
        max_batch_size=settings.effective_max_batch_size,
        batch_timeout_s=settings.batch_timeout_ms / 1000,
        max_pending=settings.max_queue_size,
        request_timeout_s=settings.request_timeout_s,
        preprocess_workers=settings.effective_preprocess_workers,
        torch_threads=settings.effective_torch_threads,
    )


def chain_drain_on_signals(on_signal: Callable[[], None]) -> Callable[[], None]:
    """Call ``on_signal`` first when SIGTERM/SIGINT arrive, then the server's own handler.

    Readiness turns 503 the moment the signal lands, while uvicorn goes on to finish the
    requests in flight. Returns a function that restores the previous handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        on_signal()
        prior = previous.get(signum)
        if callable(prior):
            prior(signum, frame)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt

    for sig in DRAIN_SIGNALS:
        previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, prior in previous.items():
            signal.signal(sig, prior)

    return restore


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics
    device = torch.device(settings.torch_device)
    # Load on the thread that will run every forward pass (see AsyncInferenceService).
    model_thread = new_model_thread()
    classifier: FrameClassifier = await asyncio.get_running_loop().run_in_executor(
        model_thread, load_classifier, settings.checkpoint_path, device
    )
    service = AsyncInferenceService(
        classifier,
        batching_config(settings),
        image_limits(settings),
        metrics,
        threshold=settings.decision_threshold,
        face_cropper=build_face_cropper(settings, classifier.metadata),
        model_thread=model_thread,
    )
    await service.start()
    meta = classifier.metadata
    metrics.model_info.labels(
        version=meta.version, architecture=meta.architecture, device=str(device)
    ).set(1)
    app.state.service = service
    restore_signals = chain_drain_on_signals(service.begin_drain)
    try:
        yield
    finally:
        restore_signals()
        await service.stop(settings.drain_timeout_s)
        app.state.service = None
        if device.type == "cuda":
            torch.cuda.empty_cache()


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
    )
    metrics = Metrics()
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.api_key_digests = key_digests(settings.api_keys)
    app.state.service = None
    install_exception_handlers(app)
    app.include_router(router)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
