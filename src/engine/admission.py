"""Admission: how much work the service holds at once, counted in images (a video of 32 sampled
frames or a batch of 32 files takes 32 units), and whether it takes work at all (started,
draining, stopped)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

from src.core.errors import OverloadedError, ServiceUnavailableError, TooMuchWorkError
from src.engine.events import EngineEvents

logger = logging.getLogger(__name__)


class Admission:
    def __init__(self, capacity: int, events: EngineEvents, retry_after_s: float = 1.0) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self._events = events
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = False
        self._drain_started_at: float | None = None

    @property
    def pending(self) -> int:
        """Units of admitted work not finished yet."""
        return self._pending

    @property
    def ready(self) -> bool:
        """Open and not draining: what the readiness probe reports."""
        return self._open and self._drain_started_at is None

    def open(self) -> None:
        self._open = True
        self._drain_started_at = None
        self._events.readiness(True)

    def close(self) -> None:
        self._open = False
        self._events.readiness(False)

    def begin_drain(self) -> None:
        """Readiness turns false; work arriving from now on is refused, earlier work is served."""
        if self._drain_started_at is None:
            self._drain_started_at = time.perf_counter()
            logger.info("draining: readiness is 503 and new inference requests are refused")
        self._events.readiness(False)

    def accepts(self, arrived_at: float | None = None) -> bool:
        """Whether work that arrived at ``arrived_at`` (perf_counter) may still be served."""
        if not self._open:
            return False
        drain = self._drain_started_at
        return drain is None or (arrived_at is not None and arrived_at < drain)

    @contextlib.contextmanager
    def admit(self, units: int = 1, *, arrived_at: float | None = None) -> Iterator[None]:
        """Hold ``units`` places for the block, or refuse at once when they are not free."""
        if not self.accepts(arrived_at):
            raise ServiceUnavailableError(
                "the service is not accepting requests", retry_after_s=self.retry_after_s
            )
        if units > self.capacity:
            raise TooMuchWorkError(
                f"the request holds {units} images; the service admits at most "
                f"{self.capacity} at once"
            )
        if self._pending + units > self.capacity:
            self._events.rejected("queue_full")
            logger.info("admission full: %d of %d images pending", self._pending, self.capacity)
            raise OverloadedError(
                "the service is at capacity; retry later", retry_after_s=self.retry_after_s
            )
        self._pending += units
        self._idle.clear()
        try:
            yield
        finally:
            self._pending -= units
            if self._pending == 0:
                self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no admitted work is left (or the timeout); True when idle."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=timeout_s)
        return self._pending == 0
