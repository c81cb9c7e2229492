"""Threads the engine runs blocking work on, keeping the caller's context (request id in logs).

Every model call happens on one thread, the :class:`ModelRunner`'s: a second thread running
torch brings a second OpenMP team, and on a small CPU the two fight (a batch-1 forward measured
39.5 ms instead of 24.6 ms; BENCHMARKS.md). Loading, warm-up, batches of every model version
and explanations all go through :meth:`ModelRunner.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

from src.core.errors import ServiceUnavailableError

T = TypeVar("T")


async def run_in(
    executor: Executor | None,
    fn: Callable[..., T],
    *args: Any,
    on_done: Callable[[], None] | None = None,
) -> T:
    """Run ``fn(*args)`` on ``executor`` with the caller's context variables.

    ``on_done`` is called on the event loop when the job has really ended (finished, failed, or
    dropped before it started), which may be after this coroutine was cancelled: cancelling
    cannot stop a job a thread is already running.
    """
    if executor is None:
        raise ServiceUnavailableError("the inference service is not started")
    context = contextvars.copy_context()
    loop = asyncio.get_running_loop()
    job = executor.submit(context.run, fn, *args)
    if on_done is not None:

        def finished(_: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to tell
                loop.call_soon_threadsafe(on_done)

        job.add_done_callback(finished)
    return await asyncio.wrap_future(job, loop=loop)


class ModelRunner:
    """The single thread every model call of a process runs on, shared by all its batchers."""

    def __init__(self, name: str = "model") -> None:
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=name
        )

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the model thread and await its result."""
        return await run_in(self._executor, fn, *args)

    @property
    def closed(self) -> bool:
        return self._executor is None

    def shutdown(self) -> None:
        """Finish the job in progress, drop queued ones, and end the thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
