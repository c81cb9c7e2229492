"""The service's life: load the backend on the model thread, start the engine, drain on SIGTERM.

Builders turn settings into the engine's parts (limits, engine config, face cropper), so the
engine itself reads no settings.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

from fastapi import FastAPI

from src.core.errors import CheckpointError
from src.core.settings import Settings
from src.engine.executors import ModelRunner
from src.engine.preprocess import FaceCropper, face_cropper_for
from src.engine.service import EngineConfig, InferenceService
from src.media.images import ImageLimits
from src.media.video import VideoLimits
from src.models.backends import choose_backend, load_backend
from src.models.checkpoint import ModelMetadata
from src.monitoring.drift import DriftMonitor, DriftWindow
from src.monitoring.reference import reference_of
from src.serve.memory import release_free_memory
from src.serve.metrics import Metrics
from src.serve.routes.jobs import register_job_kinds
from src.serve.uploads import UploadGate
from src.store.cache import fingerprint
from src.store.results import StoreParts, open_parts

logger = logging.getLogger(__name__)
DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
UPLOAD_DRAIN_MARGIN_S = 1.0


def build_face_cropper(settings: Settings, metadata: ModelMetadata) -> FaceCropper | None:
    """The same face crop as training, when the setting (or the checkpoint) asks for it."""
    return face_cropper_for(metadata, settings.face_crop)


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
        video_limits=video_limits(settings),
    )


def video_limits(settings: Settings) -> VideoLimits:
    return VideoLimits(
        max_bytes=settings.video_max_bytes,
        max_duration_s=settings.video_max_duration_s,
        max_frame_pixels=settings.video_max_frame_pixels,
        max_frames=settings.video_max_frames,
        decode_budget_s=settings.video_decode_budget_s,
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


async def start_service(
    settings: Settings, metrics: Metrics, drift: DriftMonitor | None = None
) -> InferenceService:
    """Load the backend on the thread that will run every forward pass, then start the engine.
    With ``drift``, each scored image's features go to the model version's drift window."""
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
        monitor=drift_window(drift, backend.metadata),
    )
    await service.start()
    metrics.watch_admission(lambda: service.pending, service.admission.capacity)
    info = backend.describe()
    metrics.model_info.labels(
        version=info.metadata.version,
        architecture=info.metadata.architecture,
        device=info.device,
        backend=info.backend,
    ).set(1)
    return service


def drift_window(drift: DriftMonitor | None, metadata: ModelMetadata) -> DriftWindow | None:
    """The model version's drift window; a checkpoint without (valid) reference statistics is
    still followed, its values reported without a PSI."""
    if drift is None:
        return None
    try:
        reference = reference_of(metadata)
    except CheckpointError as exc:
        logger.warning("drift is measured without a reference: %s", exc)
        reference = None
    if reference is None:
        logger.info(
            "model %s has no reference statistics (python -m src.train.reference): drift "
            "windows are kept, PSI is not computed",
            metadata.version,
        )
    return drift.window(metadata.version, reference)


def result_fingerprint(settings: Settings, service: InferenceService) -> str:
    """Everything besides the bytes that decides a score: a cached result is served only when
    all of it matches (the threshold is not in it: labels are decided again)."""
    info = service.describe()
    metadata = info.metadata
    return fingerprint(
        checkpoint=checkpoint_sha256(settings.checkpoint_path),
        version=metadata.version,
        architecture=metadata.architecture,
        input_size=metadata.input_size,
        mean=metadata.mean,
        std=metadata.std,
        face_crop=service.preparer.face_cropper is not None,
        face_margin=metadata.face_margin,
        backend=info.backend,
        precision=settings.onnx_precision if info.backend == "onnxruntime" else None,
    )


def checkpoint_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


async def open_results(app: FastAPI, settings: Settings, service: InferenceService) -> StoreParts:
    """The result store, cache and job runner (src/store), hung on ``app.state`` as ``store``,
    ``result_cache``, ``cache_fingerprint`` and ``jobs``."""
    metrics: Metrics = app.state.metrics
    key = await asyncio.to_thread(result_fingerprint, settings, service)

    def job_finished(status: str) -> None:
        metrics.jobs.labels(status=status).inc()

    parts = await open_parts(settings, metrics, key, job_finished)
    if parts.jobs is not None:
        register_job_kinds(app, parts.jobs)
    app.state.store, app.state.result_cache, app.state.jobs = parts.store, parts.cache, parts.jobs
    app.state.cache_fingerprint = key
    return parts


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    drift: DriftMonitor | None = app.state.drift
    service = await start_service(settings, app.state.metrics, drift)
    try:
        results = await open_results(app, settings, service)
    except BaseException:
        await service.stop()
        raise
    app.state.service = service
    if drift is not None:
        drift.start()
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
        await results.stop_jobs()  # a job cut off here is resumed at the next start
        await service.stop(settings.drain_timeout_s)
        app.state.service = None
        await results.close()  # after the service: the writer takes the last results
        release_device_memory(service.describe().device)
        if drift is not None:
            await drift.stop()
        if app.state.tracing is not None:
            app.state.tracing.shutdown()  # flush the spans still batched
        await app.state.rate_limits.aclose()  # the Redis connections, when limits use Redis
        runner = getattr(app.state, "explanation_runner", None)
        if runner is not None:
            runner.shutdown()  # the explanation thread (made on the first /explain)
            app.state.explanation_runner = None


def release_device_memory(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
