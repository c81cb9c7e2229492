"""The result cache: the same bytes scored by the same model with the same preprocessing are
answered without running the model again.

The key is the content's SHA-256 plus a fingerprint of everything that changes the score (model
version and architecture, the runtime and its precision, input size, normalisation, face
crop), so a cached result is never served for another model version or preprocessing setting.
The value is the score, not the label: the label is decided again with the current threshold.

Two stores behind one small interface (``get``/``put``, both ``async``): a memory LRU bounded
in bytes (one process), and Redis (``DFD_REDIS_URL``), shared by every replica. A Redis that
is down makes lookups misses (counted, logged once), never errors.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Protocol

logger = logging.getLogger(__name__)
KEY_PREFIX = "dfd:result:"
# Below this, hashing inline is cheaper than the hop to a thread.
HASH_INLINE_BYTES = 1 << 20
REDIS_TIMEOUT_S = 0.5
REDIS_RETRY_S = 5.0


def fingerprint(**parts: object) -> str:
    """A short, stable digest of what decides a score besides the bytes."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_key(sha256: str, model_fingerprint: str) -> str:
    return f"{model_fingerprint}:{sha256}"


class ResultCache(Protocol):
    name: str

    async def get(self, key: str) -> dict[str, Any] | None: ...

    async def put(self, key: str, value: dict[str, Any]) -> None: ...

    def put_soon(self, key: str, value: dict[str, Any]) -> None:
        """Store without making the caller wait; ``close`` waits for what is in flight."""
        ...

    async def close(self) -> None: ...


class MemoryCache:
    """An LRU bounded by the bytes of its entries (key + JSON value), for one process."""

    name = "memory"

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size_bytes = 0
        self._entries: OrderedDict[str, tuple[bytes, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
        value: dict[str, Any] = json.loads(entry[0])
        return value

    async def put(self, key: str, value: dict[str, Any]) -> None:
        self._put(key, value)

    def _put(self, key: str, value: dict[str, Any]) -> None:
        data = json.dumps(value, separators=(",", ":")).encode()
        size = len(key) + len(data)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.size_bytes -= old[1]
            self._entries[key] = (data, size)
            self.size_bytes += size
            while self.size_bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.size_bytes -= evicted

    def put_soon(self, key: str, value: dict[str, Any]) -> None:
        self._put(key, value)  # a dict insert: nothing to wait for

    async def close(self) -> None:
        with self._lock:
            self._entries.clear()
            self.size_bytes = 0


class RedisCache:
    """Redis as the cache shared by replicas; entries expire after ``ttl_s``."""

    name = "redis"

    def __init__(self, url: str, ttl_s: int, prefix: str = KEY_PREFIX) -> None:
        from redis.asyncio import Redis

        self.ttl_s = ttl_s
        self.prefix = prefix
        self._redis = Redis.from_url(
            url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S
        )
        self._healthy = True
        self._skip_until = 0.0
        self._writes: set[asyncio.Task[None]] = set()

    async def get(self, key: str) -> dict[str, Any] | None:
        if self._skipping():
            return None
        try:
            data = await self._redis.get(self.prefix + key)
        except _redis_errors() as exc:
            self._failed(exc)
            return None
        self._back()
        if data is None:
            return None
        value: dict[str, Any] = json.loads(data)
        return value

    async def put(self, key: str, value: dict[str, Any]) -> None:
        if self._skipping():
            return
        try:
            await self._redis.set(self.prefix + key, json.dumps(value), ex=self.ttl_s)
        except _redis_errors() as exc:
            self._failed(exc)
        else:
            self._back()

    def put_soon(self, key: str, value: dict[str, Any]) -> None:
        task = asyncio.create_task(self.put(key, value))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def close(self) -> None:
        if self._writes:
            await asyncio.wait(self._writes, timeout=REDIS_TIMEOUT_S * 2)
        await self._redis.aclose()

    def _skipping(self) -> bool:
        """After a failure, Redis is left alone for a while: an outage costs each request
        nothing, not a timeout."""
        return not self._healthy and time.monotonic() < self._skip_until

    def _failed(self, exc: Exception) -> None:
        if self._healthy:
            logger.warning("the Redis result cache is unreachable; answering without it: %s", exc)
        self._healthy = False
        self._skip_until = time.monotonic() + REDIS_RETRY_S

    def _back(self) -> None:
        if not self._healthy:
            logger.warning("the Redis result cache is reachable again")
        self._healthy = True


def build_cache(
    kind: str, max_bytes: int, redis_url: str | None, ttl_s: int, prefix: str = KEY_PREFIX
) -> ResultCache | None:
    """The cache ``DFD_CACHE`` names (already resolved from auto), or None when off."""
    if kind == "off":
        return None
    if kind == "redis":
        assert redis_url is not None
        return RedisCache(redis_url, ttl_s, prefix)
    return MemoryCache(max_bytes)


async def content_sha256(data: bytes) -> str:
    """The bytes' SHA-256; large uploads are hashed on a thread (hashlib releases the GIL)."""
    if len(data) < HASH_INLINE_BYTES:
        return hashlib.sha256(data).hexdigest()
    return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())


def _redis_errors() -> tuple[type[Exception], ...]:
    """What a lost Redis raises: its own errors, and, when a connection is cut under uvloop,
    ``RuntimeError``/``OSError`` from the transport (seen in the rate-limit outage test)."""
    from redis.exceptions import RedisError

    return (RedisError, OSError, asyncio.TimeoutError, RuntimeError)
