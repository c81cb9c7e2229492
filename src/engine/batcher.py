"""Dynamic batching for one loaded model, generic over what goes in and what comes back.

Callers ``submit`` one item and await its own result; a task groups queued items into batches of
at most ``max_batch_size``, waiting at most ``batch_timeout_s`` and only while more work is known
to be on its way, and runs each batch on the shared :class:`ModelRunner`. Several batchers (one
per model version) may share one runner. A failing batch is retried item by item, so one bad
input fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from src.core.context import current_request_id
from src.core.errors import (
    ClientDisconnectedError,
    DeepfakeError,
    InferenceError,
    InferenceTimeoutError,
    ServiceUnavailableError,
)
from src.engine.events import EngineEvents
from src.engine.executors import ModelRunner
from src.monitoring import tracing

logger = logging.getLogger(__name__)
In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = 8
    batch_timeout_s: float = 0.005


@dataclass(frozen=True)
class Batched(Generic[Out]):
    """One item's result, with how it was computed."""

    value: Out
    batch_size: int
    queue_s: float
    compute_s: float


@dataclass
class _Job(Generic[In, Out]):
    item: In
    future: asyncio.Future[Batched[Out]]
    enqueued_at: float
    request_id: str | None
    # The request's span when it is traced (None: tracing off), and when it queued (wall clock).
    trace: tracing.ActiveSpan | None = None
    enqueued_ns: int = 0


class Batcher(Generic[In, Out]):
    def __init__(
        self,
        run_batch: Callable[[list[In]], Sequence[Out]],
        runner: ModelRunner,
        policy: BatchPolicy,
        events: EngineEvents,
        *,
        more_coming: Callable[[], bool] = lambda: False,
        name: str = "batcher",
    ) -> None:
        """``run_batch`` runs on the model thread and returns one result per item, in order;
        ``more_coming`` says whether items are on their way (worth waiting for)."""
        self._run_batch = run_batch
        self._runner = runner
        self.policy = policy
        self._events = events
        self._more_coming = more_coming
        self.name = name
        self._queue: asyncio.Queue[_Job[In, Out]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        """Stop batching; items still queued fail with ``ServiceUnavailableError``."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            _fail(self._queue.get_nowait(), ServiceUnavailableError("the service is shutting down"))

    async def submit(
        self,
        item: In,
        *,
        timeout_s: float | None = None,
        disconnected: asyncio.Future[Any] | None = None,
    ) -> Batched[Out]:
        """Queue ``item`` and wait for its result.

        Raises ``InferenceTimeoutError`` after ``timeout_s`` and ``ClientDisconnectedError`` when
        ``disconnected`` completes first. However the wait ends early (those, or the caller being
        cancelled), the item is skipped if it has not run yet.
        """
        if self._task is None:
            raise ServiceUnavailableError("the batcher is not running")
        future: asyncio.Future[Batched[Out]] = asyncio.get_running_loop().create_future()
        job = _Job(item, future, time.perf_counter(), current_request_id(), tracing.current())
        if job.trace is not None:
            job.enqueued_ns = time.time_ns()
        self._queue.put_nowait(job)
        self._events.queue_depth(self._queue.qsize())
        if timeout_s is None and disconnected is None:
            # The common case (the caller guards the deadline and the client): the future
            # alone, without asyncio.wait's callbacks and sets.
            try:
                return await future
            finally:
                if not future.done():
                    future.cancel()  # the loop skips cancelled jobs
        waiters: set[asyncio.Future[Any]] = {future}
        if disconnected is not None:
            waiters.add(disconnected)
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not future.done():
                future.cancel()  # the loop skips cancelled jobs
        if future in done:
            return future.result()
        if disconnected is not None and disconnected in done:
            raise ClientDisconnectedError()
        self._events.rejected("timeout")
        raise InferenceTimeoutError(f"no result within {timeout_s:g} s; retry later")

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        policy = self.policy
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + policy.batch_timeout_s
            while len(batch) < policy.max_batch_size:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0 or not self._more_coming():
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            self._events.queue_depth(self._queue.qsize())
            live = [job for job in batch if not job.future.done()]
            if live:
                await self._run(live)

    async def _run(self, jobs: list[_Job[In, Out]]) -> None:
        now = time.perf_counter()
        waits = [now - job.enqueued_at for job in jobs]
        for wait in waits:
            self._events.queue_waited(wait)
        traced = [job for job in jobs if job.trace is not None]
        started_ns = time.time_ns() if traced else 0
        try:
            values, seconds = await self._runner.run(self._compute, [job.item for job in jobs])
        except Exception:
            self._trace(traced, len(jobs), started_ns, error=True)
            if len(jobs) == 1:
                logger.exception("forward pass failed", extra={"request_id": jobs[0].request_id})
                _fail(jobs[0], InferenceError())
                return
            logger.warning("batch of %d failed; retrying one by one", len(jobs))
            for job in jobs:
                await self._run([job])
            return
        self._events.batch_ran(len(jobs), seconds)
        self._trace(traced, len(jobs), started_ns)
        for job, wait, value in zip(jobs, waits, values, strict=True):
            if not job.future.done():
                job.future.set_result(Batched(value, len(jobs), wait, seconds))

    def _trace(
        self, traced: list[_Job[In, Out]], size: int, started_ns: int, *, error: bool = False
    ) -> None:
        """Each traced request's queue wait as its child span, and the forward pass as one span
        linked to every request it served."""
        if not traced:
            return
        ended_ns = time.time_ns()
        served = [job.trace for job in traced if job.trace is not None]
        for job in traced:
            tracing.record_span("queue_wait", job.enqueued_ns, started_ns, parent=job.trace)
        tracing.record_linked_span(
            "forward_pass",
            served,
            started_ns,
            ended_ns,
            {"batch.size": size, "batch.traced_items": len(served), "batcher": self.name},
            error=error,
        )

    def _compute(self, items: list[In]) -> tuple[Sequence[Out], float]:
        started = time.perf_counter()
        values = self._run_batch(items)
        if len(values) != len(items):
            raise RuntimeError(f"{self.name}: {len(values)} results for {len(items)} items")
        return values, time.perf_counter() - started


def _fail(job: _Job[Any, Any], error: DeepfakeError) -> None:
    if not job.future.done():
        job.future.set_exception(error)
