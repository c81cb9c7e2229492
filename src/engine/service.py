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
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np

from src.core.aggregate import AggregateRule, aggregate
from src.core.errors import (
    ClientDisconnectedError,
    DeepfakeError,
    InferenceTimeoutError,
    InputError,
)
from src.core.labels import Label, decide
from src.engine.admission import Admission
from src.engine.batcher import Batcher, BatchPolicy
from src.engine.budget import PixelBudget
from src.engine.events import EngineEvents, NullEvents
from src.engine.executors import ModelRunner, run_in
from src.engine.preprocess import FaceCropper, FramePreparer, PreparedImage
from src.engine.video import PreparedVideo, Stop, decoded_pixels, prepare_video
from src.media.faces import Face
from src.media.images import ImageLimits, declared_pixels
from src.media.video import VideoInfo, VideoLimits, probe_video
from src.models.backends.base import Backend, BackendInfo, FrameScore
from src.models.checkpoint import ModelMetadata
from src.monitoring import tracing
from src.monitoring.drift import DriftWindow

logger = logging.getLogger(__name__)
T = TypeVar("T")
P = TypeVar("P")


@dataclass(frozen=True)
class EngineConfig:
    max_batch_size: int = 8
    batch_timeout_s: float = 0.005
    max_pending: int = 64
    request_timeout_s: float = 30.0
    preprocess_workers: int = 2
    retry_after_s: int = 1
    decode_budget_pixels: int = 50_000_000
    video_limits: VideoLimits = field(default_factory=VideoLimits)


@dataclass
class Prediction:
    fake_prob: float
    label: Label
    batch_size: int
    preprocess_ms: float
    queue_ms: float
    inference_ms: float


@dataclass(frozen=True)
class FrameVerdict:
    index: int
    time_s: float
    fake_prob: float | None  # None: not scored (the person followed is not in this frame)
    face: Face | None


@dataclass(frozen=True)
class VideoPrediction:
    fake_prob: float
    label: Label
    aggregate: AggregateRule
    info: VideoInfo
    frames: list[FrameVerdict]
    decode_ms: float
    detect_ms: float
    inference_ms: float

    @property
    def frames_scored(self) -> int:
        return sum(frame.fake_prob is not None for frame in self.frames)


class EngineCore:
    """What every loaded model version of a process shares: admission (counted in images and
    frames, whichever version serves them), the one model thread, the preprocessing threads,
    the decode budget and the video slots. A lone :class:`InferenceService` makes its own."""

    def __init__(
        self,
        config: EngineConfig,
        events: EngineEvents | None = None,
        *,
        runner: ModelRunner | None = None,
        release_memory: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.events: EngineEvents = events or NullEvents()
        self.admission = Admission(config.max_pending, self.events, config.retry_after_s)
        self.runner = runner or ModelRunner()
        self.pool: ThreadPoolExecutor | None = None
        self.preprocessing = 0  # images on (or queued for) a preprocessing thread
        self._release_memory = release_memory
        # Videos preprocess one job each on a preprocessing thread; at most this many at once,
        # so single images always find a thread free.
        self.video_slots = asyncio.Semaphore(max(1, config.preprocess_workers - 1))
        self.decode_budget = PixelBudget(
            config.decode_budget_pixels,
            retry_after_s=config.retry_after_s,
            on_large_release=self._schedule_memory_release,
        )

    def open_threads(self) -> None:
        if self.pool is None:
            self.pool = ThreadPoolExecutor(
                max_workers=self.config.preprocess_workers, thread_name_prefix="preprocess"
            )

    async def drain(self, timeout_s: float) -> None:
        """Refuse new work and wait (at most ``timeout_s``) for admitted work to finish."""
        self.admission.begin_drain()
        if not await self.admission.wait_idle(timeout_s):
            logger.warning("drain timeout: %d images still pending", self.admission.pending)

    def close(self) -> None:
        """End the threads (call once every batcher has stopped)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.runner.shutdown()
        self.admission.close()

    def release_memory(self) -> None:
        """Return freed heap to the system (after an unload or a large decode)."""
        if self._release_memory is not None:
            self._release_memory()

    def _schedule_memory_release(self) -> None:
        if self._release_memory is not None and self.pool is not None:
            self.pool.submit(self._release_memory)


class InferenceService:
    """One loaded model version: its backend, preparer and batcher, on a shared
    :class:`EngineCore` (or a core of its own when none is given)."""

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
        monitor: DriftWindow | None = None,
        core: EngineCore | None = None,
        version: str | None = None,
        batch_events: EngineEvents | None = None,
    ) -> None:
        """``runner``: the model thread the backend was loaded on, if any (else a new one).
        ``release_memory``: returns freed heap to the system; run after large decodes.
        ``monitor``: the drift window each scored image's features and score go to.
        ``core``: the engine shared with other versions (else this service owns one).
        ``version``: the name this version is served by (default: its metadata's version).
        ``batch_events``: where this version's batches are reported (default: ``events``)."""
        self._owns_core = core is None
        self.core = core or EngineCore(config, events, runner=runner, release_memory=release_memory)
        self.backend = backend
        self.config = config
        self.events: EngineEvents = self.core.events
        self.version = version or backend.metadata.version
        self.threshold = backend.metadata.threshold if threshold is None else threshold
        self.monitor = monitor
        self.fingerprint = ""  # what a cached result must match (set by whoever serves it)
        self.preparer = FramePreparer(
            backend.metadata, limits, face_cropper, measure=monitor is not None
        )
        # Items of one batch request decoding or queued at once, so a batch interleaves with
        # other requests instead of filling the queue ahead of them.
        self._batch_window = max(2, config.max_batch_size)
        self._leases = 0
        self._unleased = asyncio.Event()
        self._unleased.set()
        self.batcher: Batcher[np.ndarray, FrameScore] = Batcher(
            self._score_batch,
            self.core.runner,
            BatchPolicy(config.max_batch_size, config.batch_timeout_s),
            batch_events or self.events,
            more_coming=lambda: self.core.preprocessing > 0,
            name=f"batcher-{self.version}",
        )

    # The shared parts, by their old names.
    @property
    def admission(self) -> Admission:
        return self.core.admission

    @property
    def runner(self) -> ModelRunner:
        return self.core.runner

    @property
    def decode_budget(self) -> PixelBudget:
        return self.core.decode_budget

    @property
    def _preprocess_pool(self) -> ThreadPoolExecutor | None:
        return self.core.pool

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
        """Create the threads (when this service owns its core), warm the model up, start
        batching, then accept work."""
        if self._owns_core:
            self.core.open_threads()
        await self.warm_up()
        if self._owns_core:
            self.admission.open()
        logger.info("inference service ready", extra={"engine": asdict(self.config)})

    async def warm_up(self) -> None:
        """Warm the backend on the model thread and start this version's batcher."""
        await self.runner.run(self.backend.warm_up, (1, self.config.max_batch_size))
        self.batcher.start()

    def begin_drain(self) -> None:
        """Readiness turns 503; requests arriving from now on are refused, earlier ones served."""
        self.admission.begin_drain()

    async def stop(self, drain_timeout_s: float = 0.0) -> None:
        if self._owns_core:
            await self.core.drain(drain_timeout_s)
        await self.batcher.stop()
        if self._owns_core:
            self.core.close()
        logger.info("inference service stopped")

    # ----------------------------------------------------------------- leases
    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        """Mark a request as served by this version for the block: :meth:`retire` waits for
        every lease to end, so a request routed here finishes here."""
        self._leases += 1
        self._unleased.clear()
        try:
            yield
        finally:
            self._leases -= 1
            if self._leases == 0:
                self._unleased.set()

    @property
    def leases(self) -> int:
        return self._leases

    async def retire(self, timeout_s: float) -> bool:
        """Once no request holds this version (or ``timeout_s`` passed), stop its batcher.
        True when every request had finished."""
        finished = True
        try:
            await asyncio.wait_for(self._unleased.wait(), timeout=timeout_s)
        except TimeoutError:
            finished = False
            logger.warning(
                "version %s retired with %d requests still holding it", self.version, self._leases
            )
        await self.batcher.stop()
        return finished

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
        return await self._guarded(self._decode_and_score(data, deadline), deadline, disconnected)

    async def _decode_and_score(self, data: bytes, deadline: float) -> Prediction:
        taken = await self.decode_budget.acquire(declared_pixels(data))
        prepared, preprocess_s = await self._prepare(
            self.preparer.prepare_bytes, data, deadline, on_done=self._budget_release(taken)
        )
        return self._observed(prepared, await self._score(prepared.crop, preprocess_s))

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
            prepared, preprocess_s = await self._prepare(self.preparer.prepare_array, rgb, deadline)
            return self._observed(prepared, await self._score(prepared.crop, preprocess_s))

        return await self._guarded(score(), deadline, disconnected)

    async def predict_each(
        self,
        items: Sequence[bytes],
        *,
        deadline: float | None = None,
        disconnected: asyncio.Future[Any] | None = None,
    ) -> list[Prediction | InputError]:
        """Score several uploaded images (a batch request). Call inside ``admit(len(items))``.

        Each item's bad input is its own result (an ``InputError``), never the others'; what
        ends the whole request (its deadline, the client leaving, overload) raises. At most
        ``max(2, max_batch_size)`` items are in flight at once, so a batch takes turns with
        other requests at the preprocessing threads and the batcher.
        """
        deadline = self._deadline(deadline)
        window = asyncio.Semaphore(self._batch_window)

        async def one(data: bytes) -> Prediction | InputError:
            async with window:
                try:
                    return await self._decode_and_score(data, deadline)
                except InputError as exc:
                    return exc

        return await self._guarded(
            _all_or_none([one(data) for data in items]), deadline, disconnected
        )

    async def predict_video(
        self,
        data: bytes,
        *,
        frames: int,
        rule: AggregateRule,
        deadline: float | None = None,
        disconnected: asyncio.Future[Any] | None = None,
    ) -> VideoPrediction:
        """Decode ``frames`` frames sampled over the video, follow one face, score each crop
        through the model's batcher, and aggregate by ``rule``. Call inside ``admit(frames)``.

        The decoded frames hold room in the decode budget (frames x width x height, from the
        stream's header) until the crops are cut; the crops go to the batcher in slices of one
        batch, so single images queue between them rather than behind the whole video.
        """
        deadline = self._deadline(deadline)
        limits = self.config.video_limits

        async def decode_and_score() -> VideoPrediction:
            info = await run_in(
                self._preprocess_pool, _before(deadline, lambda d: probe_video(d, limits)), data
            )
            stop = Stop(deadline)
            async with self.core.video_slots:
                taken = await self.decode_budget.acquire(decoded_pixels(info, frames))
                started_ns = time.time_ns()
                try:
                    prepared: PreparedVideo = await run_in(
                        self._preprocess_pool,
                        prepare_video,
                        data,
                        frames,
                        limits,
                        self.preparer,
                        stop,
                        on_done=self._budget_release(taken),
                    )
                except asyncio.CancelledError:
                    stop.abandon()
                    raise
            tracing.record_span(
                "video.prepare",
                started_ns,
                time.time_ns(),
                {
                    "video.frames": frames,
                    "video.decode_ms": round(prepared.decode_s * 1000, 3),
                    "video.detect_ms": round(prepared.detect_s * 1000, 3),
                },
            )
            self.events.preprocessed(prepared.decode_s + prepared.detect_s)
            started = time.perf_counter()
            scores = await self._score_slices(prepared.crops)
            inference_s = time.perf_counter() - started
            return self._video_verdict(prepared, scores, rule, inference_s)

        return await self._guarded(decode_and_score(), deadline, disconnected)

    async def _score_slices(self, crops: list[np.ndarray]) -> list[float]:
        size = self.config.max_batch_size
        scores: list[float] = []
        for start in range(0, len(crops), size):
            results = await _all_or_none(
                [self.batcher.submit(crop) for crop in crops[start : start + size]]
            )
            scores.extend(result.value.fake_prob for result in results)
        return scores

    def _video_verdict(
        self,
        prepared: PreparedVideo,
        scores: list[float],
        rule: AggregateRule,
        inference_s: float,
    ) -> VideoPrediction:
        remaining = iter(scores)
        frames = [
            FrameVerdict(
                frame.index,
                frame.time_s,
                None if frame.crop is None else next(remaining),
                frame.face,
            )
            for frame in prepared.frames
        ]
        fake_prob = aggregate(scores, rule)
        return VideoPrediction(
            fake_prob=fake_prob,
            label=decide(fake_prob, self.threshold),
            aggregate=rule,
            info=prepared.info,
            frames=frames,
            decode_ms=prepared.decode_s * 1000,
            detect_ms=prepared.detect_s * 1000,
            inference_ms=inference_s * 1000,
        )

    def _deadline(self, deadline: float | None) -> float:
        return time.perf_counter() + self.config.request_timeout_s if deadline is None else deadline

    async def _guarded(
        self,
        work: Coroutine[Any, Any, T],
        deadline: float,
        disconnected: asyncio.Future[Any] | None,
    ) -> T:
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

    def _observed(self, prepared: PreparedImage, prediction: Prediction) -> Prediction:
        """Hand the image's features to the drift window and its stages to the trace (each a
        no-op when drift monitoring is off or the request is not traced)."""
        if self.monitor is not None and prepared.features is not None:
            self.monitor.record(prepared.features, prediction.fake_prob)
        for stage in prepared.stages:
            tracing.record_span(stage.name, stage.start_ns, stage.end_ns)
        return prediction

    async def _prepare(
        self,
        prepare: Callable[[Any], P],
        payload: Any,
        deadline: float,
        on_done: Callable[[], None] | None = None,
    ) -> tuple[P, float]:
        """Run ``prepare`` on a preprocessing thread; ``on_done`` runs (on the loop) once that
        thread is finished with it, or it was dropped before starting, even if the caller has
        given up meanwhile."""
        started = time.perf_counter()
        self.core.preprocessing += 1
        try:
            crop = await run_in(
                self._preprocess_pool, _before(deadline, prepare), payload, on_done=on_done
            )
        finally:
            self.core.preprocessing -= 1
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


def _before(deadline: float, fn: Callable[[Any], T]) -> Callable[[Any], T]:
    """``fn``, refusing to start once ``deadline`` has passed (a job queued for a thread)."""

    def guarded(payload: Any) -> T:
        if time.perf_counter() >= deadline:
            raise InferenceTimeoutError("the request's deadline passed before it was decoded")
        return fn(payload)

    return guarded


async def _all_or_none(works: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Every result in order; when one fails, the others are cancelled (not left running for
    nobody) and its error is raised."""
    tasks = [asyncio.ensure_future(work) for work in works]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
