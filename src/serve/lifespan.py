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
from sqlalchemy import Engine

from src.core.errors import CheckpointError
from src.core.settings import Settings
from src.engine.executors import ModelRunner
from src.engine.preprocess import FaceCropper, face_cropper_for
from src.engine.service import EngineConfig, EngineCore, InferenceService
from src.media.images import ImageLimits
from src.media.video import VideoLimits
from src.models.backends import choose_backend, load_backend
from src.models.checkpoint import ModelMetadata
from src.models.repository import VersionEntry, single_checkpoint
from src.monitoring.drift import DriftMonitor, DriftWindow
from src.monitoring.reference import reference_of
from src.serve.lifecycle import ModelManager, ShadowLog, repository_entries, routing_store_for
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


async def start_models(
    settings: Settings,
    metrics: Metrics,
    drift: DriftMonitor | None = None,
    store_engine: Engine | None = None,
) -> ModelManager:
    """The served model's versions on one shared engine: load (on the model thread) what the
    routing setting names, or the configured version, and open admission. With ``drift``,
    each scored image's features go to its version's drift window."""
    core = EngineCore(
        engine_config(settings), metrics, runner=ModelRunner(), release_memory=release_free_memory
    )

    async def build(entry: VersionEntry) -> InferenceService:
        return await build_version(settings, metrics, core, entry, drift)

    manager = ModelManager(
        name=settings.model_name,
        core=core,
        build=build,
        entries=repository_entries(settings),
        routing_store=routing_store_for(settings, store_engine),
        shadow_log=ShadowLog(store_engine),
        metrics=metrics,
        drift=drift,
        max_loaded=settings.max_loaded_versions,
        sync_s=settings.routing_sync_s if settings.model_repository is not None else 0.0,
        retire_timeout_s=settings.drain_timeout_s,
        sticky=settings.traffic_split == "key",
    )
    try:
        if settings.model_repository is None:
            single = single_checkpoint(settings.model_name, "", settings.checkpoint_path)
            await manager.start(None, single=single)
        else:
            await manager.start(settings.checkpoint_path.parent.name)
    except BaseException:
        await manager.stop(0.0)
        raise
    metrics.watch_admission(lambda: core.admission.pending, core.admission.capacity)
    return manager


async def build_version(
    settings: Settings,
    metrics: Metrics,
    core: EngineCore,
    entry: VersionEntry,
    drift: DriftMonitor | None,
) -> InferenceService:
    """One version, loaded and warmed on the shared model thread (between the serving
    versions' batches), its batcher started; not yet routed to. In a repository a version is
    known by its folder's name; a lone checkpoint by the version its metadata gives."""
    runner = core.runner
    choose = partial(
        choose_backend,
        settings.backend,
        entry.checkpoint,
        settings.torch_device,
        settings.onnx_precision,
    )
    choice = await runner.run(choose)  # hashes the checkpoint: off the event loop
    load = partial(
        load_backend,
        choice.name,
        entry.checkpoint,
        device=settings.torch_device,
        threads=settings.effective_torch_threads,
    )
    backend = await runner.run(load)
    version = entry.version or backend.metadata.version
    service = InferenceService(
        backend,
        core.config,
        image_limits(settings),
        threshold=settings.decision_threshold,
        face_cropper=build_face_cropper(settings, backend.metadata),
        core=core,
        version=version,
        monitor=drift_window(drift, backend.metadata, version),
        batch_events=metrics.for_version(version),
    )
    service.fingerprint = await asyncio.to_thread(
        result_fingerprint, settings, service, entry.checkpoint
    )
    await service.warm_up()
    return service


def drift_window(
    drift: DriftMonitor | None, metadata: ModelMetadata, version: str
) -> DriftWindow | None:
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
            version,
        )
    return drift.window(version, reference)


def result_fingerprint(settings: Settings, service: InferenceService, checkpoint: Path) -> str:
    """Everything besides the bytes that decides a score: a cached result is served only when
    all of it matches (the threshold is not in it: labels are decided again)."""
    info = service.describe()
    metadata = info.metadata
    return fingerprint(
        checkpoint=checkpoint_sha256(checkpoint),
        version=service.version,
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


async def open_results(app: FastAPI, settings: Settings) -> StoreParts:
    """The result store, cache and job runner (src/store), hung on ``app.state`` as ``store``,
    ``result_cache`` and ``jobs``. Each model version keys the cache by its own fingerprint."""
    metrics: Metrics = app.state.metrics

    def job_finished(status: str) -> None:
        metrics.jobs.labels(status=status).inc()

    parts = await open_parts(settings, metrics, "", job_finished)
    if parts.jobs is not None:
        register_job_kinds(app, parts.jobs)
    app.state.store, app.state.result_cache, app.state.jobs = parts.store, parts.cache, parts.jobs
    return parts


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    drift: DriftMonitor | None = app.state.drift
    results = await open_results(app, settings)
    try:
        store = results.store
        models = await start_models(
            settings, app.state.metrics, drift, None if store is None else store.engine
        )
    except BaseException:
        await results.close()
        raise
    app.state.models = models

    def follow_primary() -> None:  # the version with most traffic, for tests and tools
        app.state.service = models.primary()

    models.on_change = follow_primary
    follow_primary()
    if drift is not None:
        drift.start()
    uploads: UploadGate = app.state.upload_gate
    loop = asyncio.get_running_loop()
    # Uploads still trickling in near the end of the drain end as 503 before the server's
    # graceful-shutdown timeout would cut them off.
    upload_grace_s = max(0.0, settings.drain_timeout_s - UPLOAD_DRAIN_MARGIN_S)

    def on_drain() -> None:
        models.core.admission.begin_drain()
        loop.call_soon_threadsafe(uploads.close_after, upload_grace_s)

    restore_signals = chain_drain_on_signals(on_drain)
    try:
        yield
    finally:
        restore_signals()
        await results.stop_jobs()  # a job cut off here is resumed at the next start
        await models.stop(settings.drain_timeout_s)
        app.state.service = None
        app.state.models = None
        await results.close()  # after the service: the writer takes the last results
        release_device_memory(settings.torch_device)
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
