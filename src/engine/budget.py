"""A budget of pixels being decoded at once, across all requests.

An image's header declares its size before any pixel is decoded; a small file can declare tens
of megapixels and cost hundreds of megabytes to decode. Each decode holds its declared pixels
from this budget, so a burst of such files decodes one or two at a time, within a memory bound,
while ordinary images (a fraction of the budget) keep passing beside them. At most
``max_waiting`` pixels may wait for room; beyond that a large image is refused at once, so a burst
cannot hold every admission place of the service while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
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
        self._large_seen = False
        self._changed = asyncio.Condition()
        self._on_large_release = on_large_release
        self._large = large

    @property
    def used(self) -> int:
        return self._used

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        """Wait until ``pixels`` fit (an image larger than the budget waits for all of it)."""
        pixels = max(0, min(pixels, self.capacity))
        async with self._changed:
            if self._used + pixels > self.capacity:
                if self._waiting + pixels > self.max_waiting:
                    raise OverloadedError(
                        "too many large images are waiting to be decoded; retry later",
                        retry_after_s=self.retry_after_s,
                    )
                self._waiting += pixels
                try:
                    await self._changed.wait_for(lambda: self._used + pixels <= self.capacity)
                finally:
                    self._waiting -= pixels
            self._used += pixels
        try:
            yield
        finally:
            async with self._changed:
                self._used -= pixels
                self._large_seen |= pixels >= self._large
                release = self._used == 0 and self._large_seen
                if release:
                    self._large_seen = False
                self._changed.notify_all()
            if release and self._on_large_release is not None:
                self._on_large_release()
