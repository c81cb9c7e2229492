"""InferenceService: batching correctness, backpressure, timeouts, failure isolation, drain."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from src.core.errors import (
    ClientDisconnectedError,
    InferenceError,
    OverloadedError,
    ServiceUnavailableError,
)
from src.core.settings import Settings
from src.engine.service import InferenceService
from src.models.backends import Backend
from src.serve.app import create_app
from tests.helpers.api import AUTH, assert_error, started_client
from tests.helpers.backends import ScriptedBackend
from tests.helpers.images import image_bytes, infer_files

pytestmark = pytest.mark.anyio
WHITE_MEAN = 250.0  # only an all-white crop is this bright


def frames(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 255, size=(40 + i, 50, 3), dtype=np.uint8) for i in range(count)]


async def score_all(service: InferenceService, images: list[np.ndarray]) -> list[float]:
    async def one(rgb: np.ndarray) -> float:
        with service.admit():
            return (await service.predict_array(rgb)).fake_prob

    return await asyncio.gather(*(one(rgb) for rgb in images))


def test_the_test_double_implements_the_backend_protocol(checkpoint_path: Path) -> None:
    assert isinstance(ScriptedBackend(checkpoint_path), Backend)


async def test_batched_results_match_single_image_inference(
    make_service: Callable[..., InferenceService], checkpoint_path: Path
) -> None:
    images = frames(12)
    single = make_service(max_batch_size=1)
    backend = ScriptedBackend(checkpoint_path)
    batched = make_service(backend, max_batch_size=6, batch_timeout_s=0.05)
    await single.start()
    await batched.start()
    one_by_one = [(await score_all(single, [rgb]))[0] for rgb in images]
    backend.batches.clear()  # forget the warm-up
    together = await score_all(batched, images)
    assert together == pytest.approx(one_by_one, abs=1e-5)
    assert len(set(np.round(together, 6))) > 1, "every image got the same answer"
    assert max(backend.batches) > 1 and max(backend.batches) <= 6


async def test_one_failing_item_does_not_fail_its_batch(
    make_service: Callable[..., InferenceService], checkpoint_path: Path
) -> None:
    backend = ScriptedBackend(checkpoint_path)
    service = make_service(backend, max_batch_size=8, batch_timeout_s=0.05)
    await service.start()
    backend.poison_mean_above = WHITE_MEAN
    images = frames(5)
    white = np.full((40, 40, 3), 255, dtype=np.uint8)

    async def one(rgb: np.ndarray) -> float | Exception:
        with service.admit():
            try:
                return (await service.predict_array(rgb)).fake_prob
            except InferenceError as exc:
                return exc

    results = await asyncio.gather(*(one(rgb) for rgb in [*images[:3], white, *images[3:]]))
    assert isinstance(results[3], InferenceError)
    good = [r for i, r in enumerate(results) if i != 3]
    assert all(isinstance(r, float) for r in good)
    assert max(backend.batches) > 1, "the items never shared a batch"


async def test_admission_is_bounded(make_service: Callable[..., InferenceService]) -> None:
    service = make_service(max_pending=2)
    await service.start()
    with service.admit(), service.admit():
        with pytest.raises(OverloadedError) as refused, service.admit():
            pass
        assert refused.value.retry_after_s == 1
    with service.admit():  # places are given back
        assert service.pending == 1


async def test_stop_waits_for_work_in_flight(
    make_service: Callable[..., InferenceService], checkpoint_path: Path
) -> None:
    backend = ScriptedBackend(checkpoint_path)
    service = make_service(backend)
    await service.start()
    backend.delay_s = 0.3
    work = asyncio.ensure_future(score_all(service, frames(3)))
    await asyncio.sleep(0.05)
    await service.stop(drain_timeout_s=5)
    assert work.done() and len(work.result()) == 3
    with pytest.raises(ServiceUnavailableError), service.admit():
        pass


async def test_queue_full_is_503_with_retry_after(
    settings_factory: Callable[..., Settings], checkpoint_path: Path
) -> None:
    app = create_app(settings_factory(max_queue_size=2, max_batch_size=1))
    async for client in started_client(app):
        slow = ScriptedBackend(checkpoint_path)
        slow.delay_s = 0.4
        app.state.service.backend = slow
        responses = await asyncio.gather(
            *(
                client.post("/infer", files=infer_files(image_bytes(seed=i)), headers=AUTH)
                for i in range(6)
            )
        )
        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(200) == 2 and statuses.count(503) == 4
        refused = next(r for r in responses if r.status_code == 503)
        assert_error(refused, 503, "overloaded")
        assert refused.headers["retry-after"] == "1"
        assert (await client.get("/health")).status_code == 200
        assert (
            'dfd_inference_rejected_total{reason="queue_full"} 4.0'
            in (await client.get("/metrics")).text
        )


async def test_request_that_waits_too_long_is_504(
    settings_factory: Callable[..., Settings], checkpoint_path: Path
) -> None:
    app = create_app(settings_factory(request_timeout_s=0.2, max_batch_size=1))
    async for client in started_client(app):
        slow = ScriptedBackend(checkpoint_path)
        slow.delay_s = 0.6
        app.state.service.backend = slow
        first, second = await asyncio.gather(
            client.post("/infer", files=infer_files(image_bytes(seed=1)), headers=AUTH),
            client.post("/infer", files=infer_files(image_bytes(seed=2)), headers=AUTH),
        )
        assert_error(first, 504, "timeout")
        assert_error(second, 504, "timeout")
        await asyncio.sleep(0.8)
        slow.delay_s = 0
        ok = await client.post("/infer", files=infer_files(image_bytes()), headers=AUTH)
        assert ok.status_code == 200
        # The timed-out second request was dropped, never computed.
        assert slow.batches == [1, 1]


async def test_disconnected_client_leaves_no_work(
    make_service: Callable[..., InferenceService], checkpoint_path: Path
) -> None:
    backend = ScriptedBackend(checkpoint_path)
    service = make_service(backend, max_batch_size=1)
    await service.start()
    backend.batches.clear()
    backend.delay_s = 0.3
    gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    blocker = asyncio.ensure_future(score_all(service, frames(1)))
    await asyncio.sleep(0.05)

    async def abandoned() -> None:
        with service.admit():
            await service.predict_array(frames(2)[1], disconnected=gone)

    task = asyncio.ensure_future(abandoned())
    await asyncio.sleep(0.05)
    gone.set_result(None)
    with pytest.raises(ClientDisconnectedError):
        await task
    await blocker
    await asyncio.sleep(0.1)
    assert backend.batches == [1], "the abandoned image was still computed"
    assert service.pending == 0


async def test_inference_runs_off_the_event_loop_on_the_model_thread(
    make_service: Callable[..., InferenceService], checkpoint_path: Path
) -> None:
    backend = ScriptedBackend(checkpoint_path)
    service = make_service(backend)
    await service.start()
    backend.delay_s = 0.3
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick_task = asyncio.ensure_future(ticker())
    await score_all(service, frames(1))
    tick_task.cancel()
    assert backend.threads and all(name.startswith("model") for name in backend.threads)
    assert ticks >= 10, "the event loop was blocked during the forward pass"
    import threading

    assert (
        await service.run_on_model_thread(lambda: threading.current_thread().name)
        == (backend.threads[0])
    )


async def test_many_clients_through_http(settings: Settings) -> None:
    app = create_app(settings)
    async for client in started_client(app):
        responses = await asyncio.gather(
            *(
                client.post("/infer", files=infer_files(image_bytes(seed=i % 5)), headers=AUTH)
                for i in range(40)
            )
        )
    assert [r.status_code for r in responses] == [200] * 40
    by_seed: dict[int, set[float]] = {}
    for i, r in enumerate(responses):
        by_seed.setdefault(i % 5, set()).add(round(r.json()["fake_prob"], 4))
    assert all(len(v) == 1 for v in by_seed.values())
    assert len({next(iter(v)) for v in by_seed.values()}) > 1


async def test_draining_serves_requests_that_arrived_before_it(
    make_service: Callable[..., InferenceService],
) -> None:
    service = make_service()
    assert not service.accepts(time.perf_counter()), "accepting before start"
    await service.start()
    arrived_before = time.perf_counter()
    service.begin_drain()
    assert not service.ready
    with service.admit(arrived_at=arrived_before):
        assert (await service.predict_array(frames(1)[0])).label in {"real", "fake"}
    with pytest.raises(ServiceUnavailableError), service.admit(arrived_at=time.perf_counter()):
        pass
    with pytest.raises(ServiceUnavailableError), service.admit():
        pass
