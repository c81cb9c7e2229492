"""AsyncInferenceService: admission, off-loop preprocessing, dynamic batching, one model thread.

A request flows: ``admit()`` (bounded; 503 when full) -> decode + preprocess on a thread pool ->
the batch queue -> the batcher task groups up to ``max_batch_size`` images, waiting at most
``batch_timeout_ms`` and only while more work is known to be on its way -> one forward pass on the
single model thread -> each caller's future gets its own probability.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from src.exceptions import (
    DeepfakeServiceError,
    InferenceError,
    InferenceTimeoutError,
    NoFaceDetectedError,
    OverloadedError,
    ServiceUnavailableError,
)
from src.metrics import Metrics
from src.models import FrameClassifier, build_crop
from src.request_context import current_request_id
from src.validation import ImageLimits, decode_image

logger = logging.getLogger(__name__)
T = TypeVar("T")
FaceCropper = Callable[[np.ndarray], np.ndarray | None]


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 8
    batch_timeout_s: float = 0.005
    max_pending: int = 64
    request_timeout_s: float = 30.0
    preprocess_workers: int = 2
    torch_threads: int | None = None
    retry_after_s: int = 1


@dataclass
class Prediction:
    fake_prob: float
    label: str
    batch_size: int
    preprocess_ms: float
    queue_ms: float
    inference_ms: float


class ClientDisconnectedError(Exception):
    """The client went away before its answer was ready."""


@dataclass
class _WorkItem:
    crop: np.ndarray  # uint8 SxSx3; normalised with its batch on the model's device
    future: asyncio.Future[tuple[float, int, float]]
    enqueued_at: float
    request_id: str | None
    queue_s: float = field(default=0.0)


class AsyncInferenceService:
    def __init__(
        self,
        classifier: FrameClassifier,
        config: BatchingConfig,
        limits: ImageLimits,
        metrics: Metrics,
        *,
        threshold: float | None = None,
        face_cropper: FaceCropper | None = None,
        model_thread: ThreadPoolExecutor | None = None,
    ) -> None:
        """``model_thread``: the one-thread executor the model was loaded on, if any.

        Every torch call should happen on one thread: a second thread running torch brings a
        second OpenMP team, and on a small CPU the two fight (a batch-1 forward measured 39.5 ms
        instead of 24.6 ms; BENCHMARKS.md).
        """
        self.classifier = classifier
        self.metadata = classifier.metadata
        self.config = config
        self.limits = limits
        self.metrics = metrics
        self.threshold = self.metadata.threshold if threshold is None else threshold
        self._crop = build_crop(self.metadata)
        self._face_cropper = face_cropper
        self._queue: asyncio.Queue[_WorkItem] = asyncio.Queue()
        self._pending = 0
        self._preprocessing = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._drain_started_at: float | None = None
        self._started = False
        self._batcher: asyncio.Task[None] | None = None
        self._preprocess_pool: ThreadPoolExecutor | None = None
        self._model_thread = model_thread

    # ----------------------------------------------------------------- lifecycle
    @property
    def ready(self) -> bool:
        """Started and not draining: what the readiness probe reports."""
        return self._started and self._drain_started_at is None

    def accepts(self, arrived_at: float | None = None) -> bool:
        """Whether a request that arrived at ``arrived_at`` (perf_counter) may still be served.

        While draining, requests that arrived before the drain began are still served; later
        ones are refused.
        """
        if not self._started:
            return False
        drain = self._drain_started_at
        return drain is None or (arrived_at is not None and arrived_at < drain)

    @property
    def pending(self) -> int:
        return self._pending

    async def start(self) -> None:
        """Create the executors, warm the model up, start the batcher, then accept work."""
        self._preprocess_pool = ThreadPoolExecutor(
            max_workers=self.config.preprocess_workers, thread_name_prefix="preprocess"
        )
        if self._model_thread is None:
            self._model_thread = new_model_thread()
        await self._run_on(self._model_thread, self._warm_up)
        self._batcher = asyncio.create_task(self._batch_loop(), name="batcher")
        self._started = True
        self._drain_started_at = None
        self.metrics.ready.set(1)
        logger.info("inference service ready", extra={"batching": self.config.__dict__})

    def begin_drain(self) -> None:
        """Readiness turns 503 and requests arriving from now on are refused; requests that
        arrived earlier are still served."""
        if self._drain_started_at is None:
            self._drain_started_at = time.perf_counter()
            logger.info("draining: readiness is 503 and new inference requests are refused")
        self.metrics.ready.set(0)

    async def stop(self, drain_timeout_s: float = 0.0) -> None:
        self.begin_drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=drain_timeout_s)
        if self._pending:
            logger.warning("drain timeout: %d requests still pending", self._pending)
        if self._batcher is not None:
            self._batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._batcher
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(ServiceUnavailableError("the service is shutting down"))
        for pool in (self._preprocess_pool, self._model_thread):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._started = False
        logger.info("inference service stopped")

    def _warm_up(self) -> None:
        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        size = self.metadata.input_size
        blank = np.zeros((size, size, 3), dtype=np.uint8)
        for batch in sorted({1, self.config.max_batch_size}):
            self.classifier.predict_proba(self.classifier.prepare_batch([blank] * batch))

    # ----------------------------------------------------------------- admission
    @contextlib.contextmanager
    def admit(self, arrived_at: float | None = None) -> Iterator[None]:
        """Reserve a place for one request, or refuse at once (503) when the service is full."""
        if not self.accepts(arrived_at):
            raise ServiceUnavailableError("the service is not accepting requests")
        if self._pending >= self.config.max_pending:
            self.metrics.rejected.labels(reason="queue_full").inc()
            raise OverloadedError(
                f"{self._pending} requests are already pending; retry later",
                headers={"Retry-After": str(self.config.retry_after_s)},
            )
        self._pending += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()

    # ----------------------------------------------------------------- requests
    async def predict_bytes(
        self, data: bytes, disconnected: asyncio.Future[Any] | None = None
    ) -> Prediction:
        """Decode, validate and score one uploaded image. Call inside ``admit()``."""
        return await self._predict(self._prepare_bytes, data, disconnected)

    async def predict_array(
        self, rgb: np.ndarray, disconnected: asyncio.Future[Any] | None = None
    ) -> Prediction:
        """Score one already-decoded RGB uint8 frame. Call inside ``admit()``."""
        return await self._predict(self._prepare_array, rgb, disconnected)

    async def _predict(
        self,
        prepare: Callable[[Any], np.ndarray],
        payload: Any,
        disconnected: asyncio.Future[Any] | None,
    ) -> Prediction:
        started = time.perf_counter()
        self._preprocessing += 1
        try:
            crop = await self._run_on(self._preprocess_pool, prepare, payload)
        finally:
            self._preprocessing -= 1
        preprocess_s = time.perf_counter() - started
        self.metrics.preprocess_latency.observe(preprocess_s)
        return await self._score(crop, preprocess_s, disconnected)

    def _prepare_bytes(self, data: bytes) -> np.ndarray:
        rgb = decode_image(data, self.limits)
        logger.debug("decoded a %dx%d image", rgb.shape[1], rgb.shape[0])
        return self._prepare_array(rgb)

    def _prepare_array(self, rgb: np.ndarray) -> np.ndarray:
        if self._face_cropper is not None:
            face = self._face_cropper(rgb)
            if face is None:
                raise NoFaceDetectedError("no face was found in the image, so it was not scored")
            rgb = face
        return self._crop(rgb)

    async def _score(
        self,
        crop: np.ndarray,
        preprocess_s: float,
        disconnected: asyncio.Future[Any] | None,
    ) -> Prediction:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[float, int, float]] = loop.create_future()
        item = _WorkItem(crop, future, time.perf_counter(), current_request_id())
        self._queue.put_nowait(item)
        self.metrics.queue_depth.set(self._queue.qsize())
        waiters: set[asyncio.Future[Any]] = {future}
        if disconnected is not None:
            waiters.add(disconnected)
        done, _ = await asyncio.wait(
            waiters, timeout=self.config.request_timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if future not in done:
            future.cancel()  # the batcher skips cancelled items
            if disconnected is not None and disconnected in done:
                raise ClientDisconnectedError()
            self.metrics.rejected.labels(reason="timeout").inc()
            raise InferenceTimeoutError(
                f"no result within {self.config.request_timeout_s:g} s; retry later"
            )
        fake_prob, batch_size, inference_s = future.result()
        label = "fake" if fake_prob >= self.threshold else "real"
        return Prediction(
            fake_prob=fake_prob,
            label=label,
            batch_size=batch_size,
            preprocess_ms=preprocess_s * 1000,
            queue_ms=item.queue_s * 1000,
            inference_ms=inference_s * 1000,
        )

    # ----------------------------------------------------------------- batching
    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.config.batch_timeout_s
            while len(batch) < self.config.max_batch_size:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                # Wait only while more images are on their way through preprocessing.
                if remaining <= 0 or self._preprocessing == 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            self.metrics.queue_depth.set(self._queue.qsize())
            live = [item for item in batch if not item.future.done()]
            if live:
                await self._run_batch(live)

    async def _run_batch(self, items: list[_WorkItem]) -> None:
        now = time.perf_counter()
        for item in items:
            item.queue_s = now - item.enqueued_at
            self.metrics.queue_wait.observe(item.queue_s)
        try:
            probabilities, seconds = await self._run_on(
                self._model_thread, self._forward, [item.crop for item in items]
            )
        except Exception:
            if len(items) == 1:
                logger.exception("forward pass failed", extra={"request_id": items[0].request_id})
                _fail(items[0], InferenceError())
                return
            # Isolate the failing item: the others still get their answers.
            logger.warning("batch of %d failed; retrying one by one", len(items))
            for item in items:
                await self._run_batch([item])
            return
        self.metrics.batch_size.observe(len(items))
        self.metrics.inference_latency.observe(seconds)
        for item, probability in zip(items, probabilities, strict=True):
            if not item.future.done():
                item.future.set_result((probability, len(items), seconds))

    def _forward(self, crops: list[np.ndarray]) -> tuple[list[float], float]:
        """Normalise the batch on the model's device and run it: the model thread's whole job."""
        started = time.perf_counter()
        probabilities = self.classifier.fake_probabilities(self.classifier.prepare_batch(crops))
        if len(probabilities) != len(crops):
            raise RuntimeError(f"model returned {len(probabilities)} outputs for {len(crops)}")
        return probabilities, time.perf_counter() - started

    async def _run_on(self, pool: ThreadPoolExecutor | None, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on ``pool`` with the caller's context (so logs keep the request id)."""
        if pool is None:
            raise ServiceUnavailableError("the inference service is not started")
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        result: Awaitable[T] = loop.run_in_executor(pool, context.run, fn, *args)
        return await result


def new_model_thread() -> ThreadPoolExecutor:
    """The single thread every torch call of a service runs on."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")


def _fail(item: _WorkItem, error: DeepfakeServiceError) -> None:
    if not item.future.done():
        item.future.set_exception(error)
