"""Threads the engine runs blocking work on, keeping the caller's context (request id in logs).

Every model call happens on one thread, the :class:`ModelRunner`'s: a second thread running
torch brings a second OpenMP team, and on a small CPU the two fight (a batch-1 forward measured
39.5 ms instead of 24.6 ms; BENCHMARKS.md). Loading, warm-up, batches of every model version
and explanations all go through :meth:`ModelRunner.run`.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

from src.core.errors import ServiceUnavailableError

T = TypeVar("T")


async def run_in(executor: Executor | None, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` on ``executor`` with the caller's context variables."""
    if executor is None:
        raise ServiceUnavailableError("the inference service is not started")
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(executor, context.run, fn, *args)


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
