"""AsyncInferenceService: batching correctness, backpressure, timeouts and failure isolation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from src.config import Settings
from src.exceptions import InferenceError, OverloadedError, ServiceUnavailableError
from src.inference import AsyncInferenceService, BatchingConfig
from src.metrics import Metrics
from src.models import FrameClassifier, load_classifier
from src.serve.app import create_app
from src.validation import ImageLimits
from tests.conftest import TEST_KEY, image_bytes, infer_files, started_client
from tests.test_api import assert_error

pytestmark = pytest.mark.anyio
AUTH = {"X-API-Key": TEST_KEY}
LIMITS = ImageLimits(frozenset({"JPEG", "PNG"}), 1_000_000, 10_000_000, 5000, 8)


def frames(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 255, size=(40 + i, 50, 3), dtype=np.uint8) for i in range(count)]


class ScriptedClassifier(FrameClassifier):
    """The real classifier, made slow or failing on demand."""

    delay_s: float = 0.0
    poison_mean_above: float | None = None
    batches: list[int]

    def fake_probabilities(self, batch: torch.Tensor) -> list[float]:
        self.batches.append(len(batch))
        if self.delay_s:
            time.sleep(self.delay_s)
        limit = self.poison_mean_above
        if limit is not None and (batch.mean(dim=(1, 2, 3)) > limit).any():
            raise RuntimeError("poisoned input")
        return super().fake_probabilities(batch)


def scripted(checkpoint_path: Path) -> ScriptedClassifier:
    real = load_classifier(checkpoint_path, torch.device("cpu"))
    classifier = ScriptedClassifier(real.model, real.metadata, real.device)
    classifier.batches = []
    return classifier


@pytest.fixture
async def make_service(
    checkpoint_path: Path,
) -> AsyncIterator[Callable[..., AsyncInferenceService]]:
    services: list[AsyncInferenceService] = []

    def factory(
        classifier: FrameClassifier | None = None, **config: object
    ) -> AsyncInferenceService:
        service = AsyncInferenceService(
            classifier or scripted(checkpoint_path),
            BatchingConfig(**{"preprocess_workers": 2, "torch_threads": 1, **config}),  # type: ignore[arg-type]
            LIMITS,
            Metrics(),
        )
        services.append(service)
        return service

    yield factory
    for service in services:
        await service.stop()


async def score_all(service: AsyncInferenceService, images: list[np.ndarray]) -> list[float]:
    async def one(rgb: np.ndarray) -> float:
        with service.admit():
            return (await service.predict_array(rgb)).fake_prob

    return await asyncio.gather(*(one(rgb) for rgb in images))


async def test_batched_results_match_single_image_inference(
    make_service: Callable[..., AsyncInferenceService],
) -> None:
    images = frames(12)
    single = make_service(max_batch_size=1)
    batched = make_service(max_batch_size=6, batch_timeout_s=0.05)
    await single.start()
    await batched.start()
    one_by_one = [(await score_all(single, [rgb]))[0] for rgb in images]
    together = await score_all(batched, images)
    assert together == pytest.approx(one_by_one, abs=1e-5)
    assert len(set(np.round(together, 6))) > 1, "every image got the same answer"
    classifier = batched.classifier
    assert isinstance(classifier, ScriptedClassifier)
    assert max(classifier.batches) > 1 and max(classifier.batches) <= 6


async def test_one_failing_item_does_not_fail_its_batch(
    make_service: Callable[..., AsyncInferenceService], checkpoint_path: Path
) -> None:
    classifier = scripted(checkpoint_path)
    classifier.poison_mean_above = 1.5  # only an all-white frame normalises this high
    service = make_service(classifier, max_batch_size=8, batch_timeout_s=0.05)
    await service.start()
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
    assert max(classifier.batches) > 1, "the items never shared a batch"


async def test_admission_is_bounded(make_service: Callable[..., AsyncInferenceService]) -> None:
    service = make_service(max_pending=2)
    await service.start()
    with service.admit(), service.admit():
        with pytest.raises(OverloadedError) as refused, service.admit():
            pass
        assert refused.value.headers["Retry-After"] == "1"
    with service.admit():  # places are given back
        assert service.pending == 1


async def test_stop_waits_for_work_in_flight(
    make_service: Callable[..., AsyncInferenceService], checkpoint_path: Path
) -> None:
    classifier = scripted(checkpoint_path)
    classifier.delay_s = 0.3
    service = make_service(classifier)
    await service.start()
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
        service = app.state.service
        slow = scripted(checkpoint_path)
        slow.delay_s = 0.4
        service.classifier = slow
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
        slow = scripted(checkpoint_path)
        slow.delay_s = 0.6
        app.state.service.classifier = slow
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
    make_service: Callable[..., AsyncInferenceService], checkpoint_path: Path
) -> None:
    classifier = scripted(checkpoint_path)
    classifier.delay_s = 0.3
    service = make_service(classifier, max_batch_size=1)
    await service.start()
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()
    blocker = asyncio.ensure_future(score_all(service, frames(1)))
    await asyncio.sleep(0.05)

    async def abandoned() -> None:
        with service.admit():
            await service.predict_array(frames(2)[1], disconnected=gone)

    task = asyncio.ensure_future(abandoned())
    await asyncio.sleep(0.05)
    gone.set_result(None)
    from src.inference import ClientDisconnectedError

    with pytest.raises(ClientDisconnectedError):
        await task
    await blocker
    await asyncio.sleep(0.1)
    assert classifier.batches == [1], "the abandoned image was still computed"
    assert service.pending == 0


async def test_inference_runs_off_the_event_loop(
    make_service: Callable[..., AsyncInferenceService], checkpoint_path: Path
) -> None:
    classifier = scripted(checkpoint_path)
    classifier.delay_s = 0.3
    seen: list[str] = []
    original = classifier.fake_probabilities

    def record(batch: torch.Tensor) -> list[float]:
        seen.append(threading.current_thread().name)
        return original(batch)

    classifier.fake_probabilities = record  # type: ignore[method-assign]
    service = make_service(classifier)
    await service.start()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick_task = asyncio.ensure_future(ticker())
    await score_all(service, frames(1))
    tick_task.cancel()
    assert seen and all(name.startswith("model") for name in seen)
    assert ticks >= 10, "the event loop was blocked during the forward pass"


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
    make_service: Callable[..., AsyncInferenceService],
) -> None:
    service = make_service()
    assert not service.accepts(time.perf_counter()), "accepting before start"
    await service.start()
    arrived_before = time.perf_counter()
    service.begin_drain()
    assert not service.ready
    with service.admit(arrived_before):
        assert (await service.predict_array(frames(1)[0])).label in {"real", "fake"}
    with pytest.raises(ServiceUnavailableError), service.admit(time.perf_counter()):
        pass
    with pytest.raises(ServiceUnavailableError), service.admit():
        pass
