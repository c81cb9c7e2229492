"""The service's life: load the backend on the model thread, start the engine, drain on SIGTERM.

Builders turn settings into the engine's parts (limits, engine config, face cropper), so the
engine itself reads no settings.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from types import FrameType
from typing import Any

from fastapi import FastAPI

from src.core.settings import Settings
from src.engine.executors import ModelRunner
from src.engine.preprocess import FaceCropper
from src.engine.service import EngineConfig, InferenceService
from src.media.images import ImageLimits
from src.models.backends import choose_backend, load_backend
from src.models.checkpoint import ModelMetadata
from src.serve.memory import release_free_memory
from src.serve.metrics import Metrics
from src.serve.uploads import UploadGate

logger = logging.getLogger(__name__)
DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
UPLOAD_DRAIN_MARGIN_S = 1.0


def build_face_cropper(settings: Settings, metadata: ModelMetadata) -> FaceCropper | None:
    """The same face crop as training, when the setting (or the checkpoint) asks for it."""
    enabled = metadata.face_crop if settings.face_crop == "auto" else settings.face_crop == "on"
    if not enabled:
        return None
    from src.media.faces import FaceDetector, largest_face_crop

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


def engine_config(settings: Settings) -> EngineConfig:
    return EngineConfig(
        max_batch_size=settings.effective_max_batch_size,
        batch_timeout_s=settings.batch_timeout_ms / 1000,
        max_pending=settings.max_queue_size,
        request_timeout_s=settings.request_timeout_s,
        preprocess_workers=settings.effective_preprocess_workers,
        retry_after_s=settings.retry_after_s,
        decode_budget_pixels=settings.effective_decode_budget_pixels,
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


async def start_service(settings: Settings, metrics: Metrics) -> InferenceService:
    """Load the backend on the thread that will run every forward pass, then start the engine."""
    runner = ModelRunner()
    choose = partial(
        choose_backend,
        settings.backend,
        settings.checkpoint_path,
        settings.torch_device,
        settings.onnx_precision,
    )
    choice = await runner.run(choose)  # hashes the checkpoint: off the event loop
    load = partial(
        load_backend,
        choice.name,
        settings.checkpoint_path,
        device=settings.torch_device,
        threads=settings.effective_torch_threads,
    )
    backend = await runner.run(load)
    service = InferenceService(
        backend,
        engine_config(settings),
        image_limits(settings),
        metrics,
        threshold=settings.decision_threshold,
        face_cropper=build_face_cropper(settings, backend.metadata),
        runner=runner,
        release_memory=release_free_memory,
    )
    await service.start()
    info = backend.describe()
    metrics.model_info.labels(
        version=info.metadata.version,
        architecture=info.metadata.architecture,
        device=info.device,
        backend=info.backend,
    ).set(1)
    return service


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    service = await start_service(settings, app.state.metrics)
    app.state.service = service
    uploads: UploadGate = app.state.upload_gate
    loop = asyncio.get_running_loop()
    # Uploads still trickling in near the end of the drain end as 503 before the server's
    # graceful-shutdown timeout would cut them off.
    upload_grace_s = max(0.0, settings.drain_timeout_s - UPLOAD_DRAIN_MARGIN_S)

    def on_drain() -> None:
        service.begin_drain()
        loop.call_soon_threadsafe(uploads.close_after, upload_grace_s)

    restore_signals = chain_drain_on_signals(on_drain)
    try:
        yield
    finally:
        restore_signals()
        await service.stop(settings.drain_timeout_s)
        app.state.service = None
        release_device_memory(service.describe().device)


def release_device_memory(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
