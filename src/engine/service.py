"""The inference service: admission, preprocessing threads and a batcher, composed.

A request flows: ``admit(units)`` (bounded; refused at once when full) -> room in the decode
:class:`PixelBudget` -> decode and crop on a preprocessing thread (:class:`FramePreparer`) -> the
model's :class:`Batcher` -> one forward pass on the :class:`ModelRunner`'s thread -> each caller
gets its own :class:`Prediction`. All of it runs under the request's deadline and stops when the
client goes: work not yet started is dropped, never done for nobody.
The service knows nothing of HTTP; errors say what happened (``src.core.errors``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np

from src.core.errors import ClientDisconnectedError, DeepfakeError, InferenceTimeoutError
from src.core.labels import Label, decide
from src.engine.admission import Admission
from src.engine.batcher import Batcher, BatchPolicy
from src.engine.budget import PixelBudget
from src.engine.events import EngineEvents, NullEvents
from src.engine.executors import ModelRunner, run_in
from src.engine.preprocess import FaceCropper, FramePreparer
from src.media.images import ImageLimits, declared_pixels
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
    decode_budget_pixels: int = 50_000_000


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
        release_memory: Callable[[], None] | None = None,
    ) -> None:
        """``runner``: the model thread the backend was loaded on, if any (else a new one).
        ``release_memory``: returns freed heap to the system; run after large decodes."""
        self.backend = backend
        self.config = config
        self.events: EngineEvents = events or NullEvents()
        self.threshold = backend.metadata.threshold if threshold is None else threshold
        self.preparer = FramePreparer(backend.metadata, limits, face_cropper)
        self.admission = Admission(config.max_pending, self.events, config.retry_after_s)
        self.runner = runner or ModelRunner()
        self._preprocess_pool: ThreadPoolExecutor | None = None
        self._preprocessing = 0
        self._release_memory = release_memory
        self.decode_budget = PixelBudget(
            config.decode_budget_pixels,
            retry_after_s=config.retry_after_s,
            on_large_release=self._schedule_memory_release,
        )
        self.batcher: Batcher[np.ndarray, FrameScore] = Batcher(
            self._score_batch,
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
        self,
        data: bytes,
        *,
        deadline: float | None = None,
        disconnected: asyncio.Future[Any] | None = None,
    ) -> Prediction:
        """Decode, validate and score one uploaded image. Call inside ``admit()``.

        ``deadline`` (``time.perf_counter()``; default: ``request_timeout_s`` from now) bounds
        everything: waiting for decode room, decoding, the queue and the forward pass.
        """
        deadline = self._deadline(deadline)
        pixels = declared_pixels(data)

        async def decode_and_score() -> Prediction:
            taken = await self.decode_budget.acquire(pixels)
            crop, preprocess_s = await self._prepare(
                self.preparer.from_bytes, data, deadline, on_done=self._budget_release(taken)
            )
            return await self._score(crop, preprocess_s)

        return await self._guarded(decode_and_score(), deadline, disconnected)

    async def predict_array(
        self,
        rgb: np.ndarray,
        *,
        deadline: float | None = None,
        disconnected: asyncio.Future[Any] | None = None,
    ) -> Prediction:
        """Score one already-decoded RGB uint8 frame. Call inside ``admit()``."""
        deadline = self._deadline(deadline)

        async def score() -> Prediction:
            crop, preprocess_s = await self._prepare(self.preparer.from_array, rgb, deadline)
            return await self._score(crop, preprocess_s)

        return await self._guarded(score(), deadline, disconnected)

    def _deadline(self, deadline: float | None) -> float:
        return time.perf_counter() + self.config.request_timeout_s if deadline is None else deadline

    async def _guarded(
        self,
        work: Coroutine[Any, Any, Prediction],
        deadline: float,
        disconnected: asyncio.Future[Any] | None,
    ) -> Prediction:
        """Run ``work`` until it finishes, the deadline passes (504) or the client goes (499);
        cancelling it drops every step not yet started (queued decode jobs, queued crops)."""
        task = asyncio.ensure_future(work)
        waiters: set[asyncio.Future[Any]] = {task}
        if disconnected is not None:
            waiters.add(disconnected)
        done, _ = await asyncio.wait(
            waiters,
            timeout=max(0.0, deadline - time.perf_counter()),
            return_when=asyncio.FIRST_COMPLETED,
        )
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, DeepfakeError):
            await task
        if disconnected is not None and disconnected in done:
            raise ClientDisconnectedError()
        self.events.rejected("timeout")
        raise InferenceTimeoutError("the request's deadline passed before its answer was ready")

    async def _prepare(
        self,
        prepare: Callable[[Any], np.ndarray],
        payload: Any,
        deadline: float,
        on_done: Callable[[], None] | None = None,
    ) -> tuple[np.ndarray, float]:
        """Run ``prepare`` on a preprocessing thread; ``on_done`` runs (on the loop) once that
        thread is finished with it, or it was dropped before starting, even if the caller has
        given up meanwhile."""
        started = time.perf_counter()
        self._preprocessing += 1
        try:
            crop = await run_in(
                self._preprocess_pool, _before(deadline, prepare), payload, on_done=on_done
            )
        finally:
            self._preprocessing -= 1
        preprocess_s = time.perf_counter() - started
        self.events.preprocessed(preprocess_s)
        return crop, preprocess_s

    async def _score(self, crop: np.ndarray, preprocess_s: float) -> Prediction:
        result = await self.batcher.submit(crop)
        fake_prob = result.value.fake_prob
        return Prediction(
            fake_prob=fake_prob,
            label=decide(fake_prob, self.threshold),
            batch_size=result.batch_size,
            preprocess_ms=preprocess_s * 1000,
            queue_ms=result.queue_s * 1000,
            inference_ms=result.compute_s * 1000,
        )

    def _score_batch(self, crops: list[np.ndarray]) -> Sequence[FrameScore]:
        return self.backend.score(crops)

    def _budget_release(self, taken: int) -> Callable[[], None]:
        return lambda: self.decode_budget.release(taken)

    def _schedule_memory_release(self) -> None:
        if self._release_memory is not None and self._preprocess_pool is not None:
            self._preprocess_pool.submit(self._release_memory)


def _before(deadline: float, fn: Callable[[Any], T]) -> Callable[[Any], T]:
    """``fn``, refusing to start once ``deadline`` has passed (a job queued for a thread)."""

    def guarded(payload: Any) -> T:
        if time.perf_counter() >= deadline:
            raise InferenceTimeoutError("the request's deadline passed before it was decoded")
        return fn(payload)

    return guarded
