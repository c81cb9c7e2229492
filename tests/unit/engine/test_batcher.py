"""The batcher is generic: whatever the batch function returns per item comes back to its caller,
and several batchers share one model thread without their batches overlapping."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import pytest

from src.core.errors import InferenceError, InferenceTimeoutError
from src.engine.batcher import Batcher, BatchPolicy
from src.engine.events import NullEvents
from src.engine.executors import ModelRunner

pytestmark = pytest.mark.anyio


@pytest.fixture
async def runner() -> AsyncIterator[ModelRunner]:
    runner = ModelRunner()
    yield runner
    runner.shutdown()


async def test_each_caller_gets_its_own_result_of_any_type(runner: ModelRunner) -> None:
    seen: list[list[int]] = []

    def describe(items: list[int]) -> list[dict[str, int]]:
        seen.append(items)
        return [{"item": i, "square": i * i} for i in items]

    batcher: Batcher[int, dict[str, int]] = Batcher(
        describe, runner, BatchPolicy(max_batch_size=4, batch_timeout_s=0.05), NullEvents()
    )
    batcher.start()
    results = await asyncio.gather(*(batcher.submit(i, timeout_s=5) for i in range(10)))
    await batcher.stop()
    assert [r.value for r in results] == [{"item": i, "square": i * i} for i in range(10)]
    assert max(len(batch) for batch in seen) == 4
    assert all(r.batch_size == len(next(b for b in seen if i in b)) for i, r in enumerate(results))


async def test_batchers_share_one_model_thread_one_batch_at_a_time(runner: ModelRunner) -> None:
    active = 0
    overlaps = 0
    threads: set[str] = set()
    lock = threading.Lock()

    def slow_batch(items: list[str]) -> list[str]:
        nonlocal active, overlaps
        with lock:
            active += 1
            overlaps += active > 1
        threads.add(threading.current_thread().name)
        time.sleep(0.02)
        with lock:
            active -= 1
        return [item.upper() for item in items]

    policy = BatchPolicy(max_batch_size=2, batch_timeout_s=0.0)
    first: Batcher[str, str] = Batcher(slow_batch, runner, policy, NullEvents(), name="v1")
    second: Batcher[str, str] = Batcher(slow_batch, runner, policy, NullEvents(), name="v2")
    first.start()
    second.start()
    results = await asyncio.gather(
        *(b.submit(f"{b.name}-{i}", timeout_s=5) for i in range(4) for b in (first, second))
    )
    await first.stop()
    await second.stop()
    assert sorted(r.value for r in results) == sorted(f"V{v}-{i}" for i in range(4) for v in (1, 2))
    assert len(threads) == 1 and overlaps == 0


async def test_a_failing_item_fails_alone_and_a_slow_batch_times_out(runner: ModelRunner) -> None:
    def picky(items: list[int]) -> list[int]:
        if any(i < 0 for i in items):
            raise ValueError("negative")
        time.sleep(0.3 if 99 in items else 0)
        return items

    batcher: Batcher[int, int] = Batcher(
        picky, runner, BatchPolicy(max_batch_size=8, batch_timeout_s=0.05), NullEvents()
    )
    batcher.start()
    outcomes = await asyncio.gather(
        *(batcher.submit(i, timeout_s=5) for i in (1, -1, 2)), return_exceptions=True
    )
    assert isinstance(outcomes[1], InferenceError)
    assert [o.value for o in (outcomes[0], outcomes[2])] == [1, 2]  # type: ignore[union-attr]
    with pytest.raises(InferenceTimeoutError):
        await batcher.submit(99, timeout_s=0.05)
    await batcher.stop()


async def test_a_batch_function_returning_the_wrong_count_is_an_inference_error(
    runner: ModelRunner,
) -> None:
    batcher: Batcher[int, int] = Batcher(
        lambda items: items[:-1], runner, BatchPolicy(1, 0.0), NullEvents()
    )
    batcher.start()
    with pytest.raises(InferenceError):
        await batcher.submit(1, timeout_s=5)
    await batcher.stop()
