"""The result cache: a memory LRU bounded in bytes, and Redis (the machine's real server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis

from src.store.cache import MemoryCache, RedisCache, cache_key, content_sha256, fingerprint
from tests.helpers.databases import REDIS_URL, redis_prefix
from tests.helpers.tcp_proxy import TcpProxy

pytestmark = pytest.mark.anyio
VALUE = {"fake_prob": 0.25, "model_version": "1.0.0", "model_architecture": "x"}


async def test_memory_cache_hits_and_misses() -> None:
    cache = MemoryCache(max_bytes=10_000)
    assert await cache.get("k") is None
    await cache.put("k", VALUE)
    assert await cache.get("k") == VALUE


async def test_memory_cache_stays_within_its_bytes_evicting_the_least_recent() -> None:
    cache = MemoryCache(max_bytes=1_000)
    for i in range(50):
        await cache.put(f"key-{i}", VALUE)
        if i == 10:
            await cache.get("key-0")  # recently used: survives longer than key-1
    assert cache.size_bytes <= 1_000
    assert 0 < len(cache) < 50
    assert await cache.get("key-49") == VALUE
    assert await cache.get("key-1") is None


async def test_an_entry_larger_than_the_cache_is_not_kept() -> None:
    cache = MemoryCache(max_bytes=1_024)
    await cache.put("big", {"blob": "x" * 2_000})
    assert await cache.get("big") is None
    assert cache.size_bytes == 0


def test_keys_differ_by_model_and_preprocessing() -> None:
    base = {"version": "1", "input_size": 224, "face_crop": False, "backend": "torch"}
    keys = {
        cache_key("abc", fingerprint(**base)),
        cache_key("abc", fingerprint(**{**base, "version": "2"})),
        cache_key("abc", fingerprint(**{**base, "input_size": 256})),
        cache_key("abc", fingerprint(**{**base, "face_crop": True})),
        cache_key("abc", fingerprint(**{**base, "backend": "onnxruntime"})),
        cache_key("abd", fingerprint(**base)),
    }
    assert len(keys) == 6
    assert cache_key("abc", fingerprint(**base)) == cache_key("abc", fingerprint(**dict(base)))


async def test_content_hash_is_sha256_inline_and_on_a_thread() -> None:
    import hashlib

    small, large = b"a" * 100, b"b" * (2 << 20)
    assert await content_sha256(small) == hashlib.sha256(small).hexdigest()
    assert await content_sha256(large) == hashlib.sha256(large).hexdigest()


@pytest.fixture
async def redis_cache() -> AsyncIterator[RedisCache]:
    prefix = redis_prefix()
    cache = RedisCache(REDIS_URL, ttl_s=60, prefix=prefix)
    yield cache
    await cache.close()
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


async def test_redis_cache_is_shared_between_clients(redis_cache: RedisCache) -> None:
    other = RedisCache(REDIS_URL, ttl_s=60, prefix=redis_cache.prefix)
    try:
        await redis_cache.put("k", VALUE)
        assert await other.get("k") == VALUE
        assert await other.get("absent") is None
        ttl = redis.Redis.from_url(REDIS_URL).ttl(f"{redis_cache.prefix}k")
        assert 0 < ttl <= 60
    finally:
        await other.close()


async def test_redis_down_is_a_miss_not_an_error_and_is_skipped_for_a_while() -> None:
    prefix = redis_prefix()
    with TcpProxy("127.0.0.1", 6379) as proxy:
        cache = RedisCache(f"redis://127.0.0.1:{proxy.port}/0", ttl_s=60, prefix=prefix)
        try:
            await cache.put("k", VALUE)
            assert await cache.get("k") == VALUE
            proxy.cut()
            assert await cache.get("k") is None  # one failed try...
            started = asyncio.get_running_loop().time()
            assert await cache.get("k") is None  # ...then no waiting on a dead server
            await cache.put("k2", VALUE)
            assert asyncio.get_running_loop().time() - started < 0.05
        finally:
            await cache.close()
            redis.Redis.from_url(REDIS_URL).delete(f"{prefix}k")


async def test_a_write_put_off_is_finished_before_close(redis_cache: RedisCache) -> None:
    redis_cache.put_soon("later", VALUE)  # returns at once
    await redis_cache.close()
    client = redis.Redis.from_url(REDIS_URL)
    assert client.get(f"{redis_cache.prefix}later") is not None
    client.close()
