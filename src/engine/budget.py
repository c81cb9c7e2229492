"""A budget of pixels being decoded at once, across all requests.

An image's header declares its size before any pixel is decoded; a file of a few bytes can
declare tens of megapixels and cost hundreds of megabytes to decode. Each decode holds its
declared pixels from this budget until the decoding thread is really done with it (not merely
until its request gave up), so a burst of such files decodes one or two at a time, within a
memory bound, while ordinary images (a fraction of the budget) keep passing beside them. At most
``max_waiting`` pixels may wait for room; beyond that a large image is refused at once, so a
burst cannot hold every admission place of the service while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable

from src.core.errors import OverloadedError


class PixelBudget:
    def __init__(
        self,
        capacity: int,
        *,
        max_waiting: int | None = None,
        retry_after_s: float = 1.0,
        on_large_release: Callable[[], None] | None = None,
        large: int = 4_000_000,
    ) -> None:
        """``max_waiting``: pixels that may wait for room (default four budgets).
        ``on_large_release`` is called when the budget empties after a decode of at least
        ``large`` pixels: the moment to hand the freed memory back to the system."""
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.max_waiting = 4 * capacity if max_waiting is None else max_waiting
        self.retry_after_s = retry_after_s
        self._used = 0
        self._waiting = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._large_seen = False
        self._on_large_release = on_large_release
        self._large = large

    @property
    def used(self) -> int:
        return self._used

    def clamp(self, pixels: int) -> int:
        """What ``pixels`` will hold: an image larger than the budget holds all of it."""
        return max(0, min(pixels, self.capacity))

    async def acquire(self, pixels: int) -> int:
        """Wait until ``pixels`` fit and take them; returns what to :meth:`release` later."""
        pixels = self.clamp(pixels)
        if self._used + pixels <= self.capacity:
            self._used += pixels
            return pixels
        if self._waiting + pixels > self.max_waiting:
            raise OverloadedError(
                "too many large images are waiting to be decoded; retry later",
                retry_after_s=self.retry_after_s,
            )
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (pixels, granted)
        self._waiters.append(entry)
        self._waiting += pixels
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release(pixels)  # granted just as the caller gave up
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
            raise
        finally:
            self._waiting -= pixels
        return pixels

    def release(self, pixels: int) -> None:
        """Give ``pixels`` back and wake the waiters that now fit, oldest first."""
        self._used -= pixels
        self._large_seen |= pixels >= self._large
        for entry in list(self._waiters):
            wanted, granted = entry
            if self._used + wanted <= self.capacity:
                self._waiters.remove(entry)
                if not granted.done():
                    self._used += wanted
                    granted.set_result(None)
        if self._used == 0 and self._large_seen:
            self._large_seen = False
            if self._on_large_release is not None:
                self._on_large_release()

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        """Hold ``pixels`` for the block (for work that ends when the block does)."""
        taken = await self.acquire(pixels)
        try:
            yield
        finally:
            self.release(taken)
