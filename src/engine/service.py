"""The inference service: admission, preprocessing threads and a batcher, composed.

A request flows: ``admit(units)`` (bounded; refused at once when full) -> decode and crop on a
preprocessing thread (:class:`FramePreparer`) -> the model's :class:`Batcher` -> one forward pass
on the :class:`ModelRunner`'s thread -> each caller gets its own :class:`Prediction`.
The service knows nothing of HTTP; errors say what happened (``src.core.errors``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np

from src.core.labels import Label, decide
from src.engine.admission import Admission
from src.engine.batcher import Batcher, BatchPolicy
from src.engine.events import EngineEvents, NullEvents
from src.engine.executors import ModelRunner, run_in
from src.engine.preprocess import FaceCropper, FramePreparer
from src.media.images import ImageLimits
from src.models.backends.base import Backend, BackendInfo, FrameScore
from src.models.checkpoint import ModelMetadata

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class EngineConfig:
    max_batch_size: int = 8
    batch_timeout_s: float = 0.005
    max_pending: int = 64
    request_timeout_s: float = 30.0
    preprocess_workers: int = 2
    retry_after_s: int = 1


@dataclass
class Prediction:
    fake_prob: float
    label: Label
    batch_size: int
    preprocess_ms: float
    queue_ms: float
    inference_ms: float


class InferenceService:
    def __init__(
        self,
        backend: Backend,
        config: EngineConfig,
        limits: ImageLimits,
        events: EngineEvents | None = None,
        *,
        threshold: float | None = None,
        face_cropper: FaceCropper | None = None,
        runner: ModelRunner | None = None,
    ) -> None:
        """``runner``: the model thread the backend was loaded on, if any (else a new one)."""
        self.backend = backend
        self.config = config
        self.events: EngineEvents = events or NullEvents()
        self.threshold = backend.metadata.threshold if threshold is None else threshold
        self.preparer = FramePreparer(backend.metadata, limits, face_cropper)
        self.admission = Admission(config.max_pending, self.events, config.retry_after_s)
        self.runner = runner or ModelRunner()
        self._preprocess_pool: ThreadPoolExecutor | None = None
        self._preprocessing = 0
        self.batcher: Batcher[np.ndarray, FrameScore] = Batcher(
            self._score,
            self.runner,
            BatchPolicy(config.max_batch_size, config.batch_timeout_s),
            self.events,
            more_coming=lambda: self._preprocessing > 0,
            name=f"batcher-{backend.metadata.version}",
        )

    @property
    def metadata(self) -> ModelMetadata:
        return self.backend.metadata

    def describe(self) -> BackendInfo:
        return self.backend.describe()

    # ----------------------------------------------------------------- lifecycle
    @property
    def ready(self) -> bool:
        """Started and not draining: what the readiness probe reports."""
        return self.admission.ready

    def accepts(self, arrived_at: float | None = None) -> bool:
        """Whether a request that arrived at ``arrived_at`` may still be served (see Admission)."""
        return self.admission.accepts(arrived_at)

    @property
    def pending(self) -> int:
        return self.admission.pending

    async def start(self) -> None:
        """Create the threads, warm the model up, start batching, then accept work."""
        self._preprocess_pool = ThreadPoolExecutor(
            max_workers=self.config.preprocess_workers, thread_name_prefix="preprocess"
        )
        await self.runner.run(self.backend.warm_up, (1, self.config.max_batch_size))
        self.batcher.start()
        self.admission.open()
        logger.info("inference service ready", extra={"engine": asdict(self.config)})

    def begin_drain(self) -> None:
        """Readiness turns 503; requests arriving from now on are refused, earlier ones served."""
        self.admission.begin_drain()

    async def stop(self, drain_timeout_s: float = 0.0) -> None:
        self.admission.begin_drain()
        if not await self.admission.wait_idle(drain_timeout_s):
            logger.warning("drain timeout: %d images still pending", self.admission.pending)
        await self.batcher.stop()
        if self._preprocess_pool is not None:
            self._preprocess_pool.shutdown(wait=True, cancel_futures=True)
            self._preprocess_pool = None
        self.runner.shutdown()
        self.admission.close()
        logger.info("inference service stopped")

    def admit(
        self, units: int = 1, *, arrived_at: float | None = None
    ) -> AbstractContextManager[None]:
        """Hold ``units`` places (images or frames) for the request's block, or refuse at once."""
        return self.admission.admit(units, arrived_at=arrived_at)

    async def run_on_model_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the one model thread, between batches (e.g. an explanation)."""
        return await self.runner.run(fn, *args)

    # ----------------------------------------------------------------- requests
    async def predict_bytes(
        self, data: bytes, disconnected: asyncio.Future[Any] | None = None
    ) -> Prediction:
        """Decode, validate and score one uploaded image. Call inside ``admit()``."""
        return await self._predict(self.preparer.from_bytes, data, disconnected)

    async def predict_array(
        self, rgb: np.ndarray, disconnected: asyncio.Future[Any] | None = None
    ) -> Prediction:
        """Score one already-decoded RGB uint8 frame. Call inside ``admit()``."""
        return await self._predict(self.preparer.from_array, rgb, disconnected)

    async def _predict(
        self,
        prepare: Callable[[Any], np.ndarray],
        payload: Any,
        disconnected: asyncio.Future[Any] | None,
    ) -> Prediction:
        started = time.perf_counter()
        self._preprocessing += 1
        try:
            crop = await run_in(self._preprocess_pool, prepare, payload)
        finally:
            self._preprocessing -= 1
        preprocess_s = time.perf_counter() - started
        self.events.preprocessed(preprocess_s)
        result = await self.batcher.submit(
            crop, timeout_s=self.config.request_timeout_s, disconnected=disconnected
        )
        fake_prob = result.value.fake_prob
        return Prediction(
            fake_prob=fake_prob,
            label=decide(fake_prob, self.threshold),
            batch_size=result.batch_size,
            preprocess_ms=preprocess_s * 1000,
            queue_ms=result.queue_s * 1000,
            inference_ms=result.compute_s * 1000,
        )

    def _score(self, crops: list[np.ndarray]) -> Sequence[FrameScore]:
        return self.backend.score(crops)
