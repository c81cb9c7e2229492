"""The request's deadline covers decode, queue and forward, and no work is done for a request
past its deadline or whose client has gone; decoding is bounded by a pixel budget."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from src.core.errors import ClientDisconnectedError, InferenceTimeoutError, OverloadedError
from src.engine.budget import PixelBudget
from src.engine.preprocess import FramePreparer, PreparedImage
from src.engine.service import EngineConfig, InferenceService
from src.media.images import ImageLimits, declared_pixels
from src.serve.metrics import Metrics
from tests.helpers.backends import ScriptedBackend
from tests.helpers.images import image_bytes

pytestmark = pytest.mark.anyio
LIMITS = ImageLimits(frozenset({"JPEG", "PNG", "WEBP"}), 5_000_000, 40_000_000, 12_000, 8)


class CountingPreparer(FramePreparer):
    """The real preparer, counting decodes and optionally slow."""

    decodes = 0
    delay_s = 0.0

    def prepare_bytes(self, data: bytes) -> PreparedImage:
        type(self).decodes += 1
        time.sleep(self.delay_s)
        return super().prepare_bytes(data)


@pytest.fixture
async def service(checkpoint_path: Path) -> AsyncIterator[InferenceService]:
    backend = ScriptedBackend(checkpoint_path)
    service = InferenceService(
        backend,
        EngineConfig(max_batch_size=1, preprocess_workers=1, request_timeout_s=5),
        LIMITS,
        Metrics(),
    )
    await service.start()
    backend.batches.clear()
    CountingPreparer.decodes = 0
    CountingPreparer.delay_s = 0.0
    service.preparer = CountingPreparer(backend.metadata, LIMITS)
    yield service
    await service.stop()


async def test_a_request_past_its_deadline_is_504_on_time_and_never_decoded(
    service: InferenceService,
) -> None:
    CountingPreparer.delay_s = 0.4  # the one decoding thread is busy with the first request
    first = asyncio.ensure_future(service.predict_bytes(image_bytes(seed=1)))
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    with pytest.raises(InferenceTimeoutError):
        await service.predict_bytes(image_bytes(seed=2), deadline=started + 0.15)
    assert time.perf_counter() - started < 0.3, "the 504 came late"
    await first
    await asyncio.sleep(0.1)
    assert CountingPreparer.decodes == 1, "the expired request was decoded anyway"
    assert service.backend.batches == [1]  # type: ignore[attr-defined]


async def test_a_request_whose_deadline_passes_in_the_queue_is_never_computed(
    service: InferenceService,
) -> None:
    backend: ScriptedBackend = service.backend  # type: ignore[assignment]
    backend.delay_s = 0.4
    first = asyncio.ensure_future(service.predict_bytes(image_bytes(seed=1)))
    await asyncio.sleep(0.05)
    with pytest.raises(InferenceTimeoutError):
        await service.predict_bytes(image_bytes(seed=2), deadline=time.perf_counter() + 0.15)
    await first
    await asyncio.sleep(0.5)
    assert backend.batches == [1], "the expired request was still run through the model"


async def test_a_client_that_goes_during_decoding_leaves_no_model_work(
    service: InferenceService,
) -> None:
    CountingPreparer.delay_s = 0.3
    gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(service.predict_bytes(image_bytes(), disconnected=gone))
    await asyncio.sleep(0.05)
    gone.set_result(None)
    with pytest.raises(ClientDisconnectedError):
        await task
    await asyncio.sleep(0.4)
    assert service.backend.batches == []  # type: ignore[attr-defined]


async def test_the_pixel_budget_bounds_concurrent_decodes_and_lets_small_ones_pass() -> None:
    released: list[int] = []
    budget = PixelBudget(100, on_large_release=lambda: released.append(1), large=50)
    order: list[str] = []

    async def decode(name: str, pixels: int, seconds: float) -> None:
        async with budget.hold(pixels):
            order.append(f"{name}+")
            assert budget.used <= budget.capacity
            await asyncio.sleep(seconds)
            order.append(f"{name}-")

    big1 = asyncio.ensure_future(decode("big1", 80, 0.1))
    await asyncio.sleep(0.01)
    big2 = asyncio.ensure_future(decode("big2", 500, 0.05))  # larger than the budget: waits for all
    small = asyncio.ensure_future(decode("small", 10, 0.01))
    await asyncio.gather(big1, big2, small)
    assert order.index("small-") < order.index("big1-"), "a small decode waited behind a big one"
    assert order.index("big2+") > order.index("big1-"), "two big decodes overlapped"
    assert budget.used == 0
    assert released, "memory was not released after the large decodes"


def test_declared_pixels_come_from_the_header_without_decoding() -> None:
    assert declared_pixels(image_bytes("PNG", size=(300, 200))) == 60_000
    assert declared_pixels(b"not an image") == 0


async def test_large_images_beyond_the_waiting_room_are_refused_at_once() -> None:
    budget = PixelBudget(100, max_waiting=150, retry_after_s=2)
    gate = asyncio.Event()

    async def decode(pixels: int) -> None:
        async with budget.hold(pixels):
            await gate.wait()

    running = asyncio.ensure_future(decode(100))
    waiting = [asyncio.ensure_future(decode(70)) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(OverloadedError) as refused:
        async with budget.hold(70):
            pass
    assert refused.value.retry_after_s == 2
    gate.set()
    await asyncio.gather(running, *waiting)
    assert budget.used == 0


async def test_an_abandoned_decode_keeps_its_pixels_until_the_thread_is_done(
    checkpoint_path: Path,
) -> None:
    frame = image_bytes(size=(64, 48))
    backend = ScriptedBackend(checkpoint_path)
    service = InferenceService(
        backend,
        EngineConfig(preprocess_workers=1, decode_budget_pixels=64 * 48),
        LIMITS,
        Metrics(),
    )
    await service.start()
    try:
        CountingPreparer.decodes = 0
        CountingPreparer.delay_s = 0.4
        service.preparer = CountingPreparer(backend.metadata, LIMITS)
        gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(service.predict_bytes(frame, disconnected=gone))
        await asyncio.sleep(0.1)
        gone.set_result(None)
        with pytest.raises(ClientDisconnectedError):
            await task
        assert service.decode_budget.used == 64 * 48, "released while the thread still decodes"
        await asyncio.sleep(0.5)
        assert service.decode_budget.used == 0
    finally:
        await service.stop()
