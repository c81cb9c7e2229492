"""Reading uploads: media types in any case, oversized streams stopped early, a bound on
uploads in progress, and inference places taken only once an upload has arrived."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from starlette.requests import Request

from src.core.errors import ServiceUnavailableError, UploadTimeoutError
from src.core.settings import Settings
from src.serve.app import create_app
from src.serve.uploads import UploadGate
from tests.helpers.api import AUTH, assert_error, started_client
from tests.helpers.images import image_bytes

pytestmark = pytest.mark.anyio
LIMIT = 64 * 1024


async def trickle() -> AsyncIterator[bytes]:
    """A body arriving at 20 bytes per second."""
    for _ in range(50):
        yield b"\xff"
        await asyncio.sleep(0.05)


async def test_media_types_are_case_insensitive(client: httpx.AsyncClient) -> None:
    frame = image_bytes()
    boundary = "XyZ"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + frame
        + f"\r\n--{boundary}--\r\n".encode()
    )
    multipart = await client.post(
        "/infer",
        content=body,
        headers={**AUTH, "Content-Type": f"Multipart/Form-Data; boundary={boundary}"},
    )
    assert multipart.status_code == 200, multipart.text
    raw = await client.post("/infer", content=frame, headers={**AUTH, "Content-Type": "IMAGE/JPEG"})
    assert raw.status_code == 200, raw.text
    assert raw.json()["fake_prob"] == multipart.json()["fake_prob"]


async def test_an_oversized_stream_without_content_length_is_stopped_early(
    settings_factory: Callable[..., Settings],
) -> None:
    sent = 0
    chunk = b"\xff" * 4096

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(4 * LIMIT // len(chunk)):
            sent += len(chunk)
            yield chunk

    app = create_app(settings_factory(max_upload_bytes=LIMIT))
    async for client in started_client(app):
        response = await client.post(
            "/infer", content=endless(), headers={**AUTH, "Content-Type": "image/jpeg"}
        )
        assert_error(response, 413, "payload_too_large")
        assert "content-length" not in response.request.headers
        assert sent < 2 * LIMIT, f"read {sent} bytes of a body limited to {LIMIT}"


async def test_uploads_in_progress_are_bounded_and_hold_no_inference_place(
    settings_factory: Callable[..., Settings],
) -> None:
    release = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield image_bytes()[:100]
        await release.wait()

    app = create_app(settings_factory(max_concurrent_uploads=2, max_queue_size=2))
    async for client in started_client(app):
        slow = [
            asyncio.ensure_future(
                client.post(
                    "/infer", content=stalled(), headers={**AUTH, "Content-Type": "image/jpeg"}
                )
            )
            for _ in range(2)
        ]
        await asyncio.sleep(0.2)
        assert app.state.upload_gate.active == 2
        assert app.state.service.pending == 0, "a stalled upload holds an inference place"
        refused = await client.post(
            "/infer", content=image_bytes(), headers={**AUTH, "Content-Type": "image/jpeg"}
        )
        error = assert_error(refused, 503, "overloaded")
        assert refused.headers["retry-after"] == "1"
        assert "upload" in error["message"] and "2" not in error["message"]
        release.set()
        for response in await asyncio.gather(*slow):
            assert response.status_code in (400, 415, 422)  # a truncated image, refused cleanly
        ok = await client.post(
            "/infer", content=image_bytes(), headers={**AUTH, "Content-Type": "image/jpeg"}
        )
        assert ok.status_code == 200


async def test_a_body_that_does_not_arrive_in_time_is_408(
    settings_factory: Callable[..., Settings],
) -> None:
    app = create_app(settings_factory(body_timeout_s=0.3))
    async for client in started_client(app):
        response = await client.post(
            "/infer", content=trickle(), headers={**AUTH, "Content-Type": "image/jpeg"}
        )
        assert_error(response, 408, "request_timeout")
        ok = await client.post(
            "/infer", content=image_bytes(), headers={**AUTH, "Content-Type": "image/jpeg"}
        )
        assert ok.status_code == 200


async def test_the_request_deadline_covers_the_upload(
    settings_factory: Callable[..., Settings],
) -> None:
    app = create_app(settings_factory(body_timeout_s=10, request_timeout_s=0.3))
    async for client in started_client(app):
        response = await client.post(
            "/infer", content=trickle(), headers={**AUTH, "Content-Type": "image/jpeg"}
        )
        assert_error(response, 504, "timeout")


async def test_an_answer_sent_before_the_body_arrived_closes_the_connection(
    client: httpx.AsyncClient,
) -> None:
    unauthorised = await client.post("/infer", content=image_bytes(), headers={"X-API-Key": "no"})
    assert_error(unauthorised, 401, "unauthorized")
    assert unauthorised.headers["connection"] == "close"
    not_an_image = await client.post(
        "/infer", content=b"plain text", headers={**AUTH, "Content-Type": "image/jpeg"}
    )
    assert_error(not_an_image, 415, "unsupported_media_type")
    assert "connection" not in not_an_image.headers


class _Rejections:
    """Engine events that remember the rejections."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def rejected(self, reason: str) -> None:
        self.reasons.append(reason)


def _request() -> Request:
    return Request({"type": "http", "method": "POST", "path": "/infer", "headers": []})


async def _never(cancelled: asyncio.Event) -> bytes:
    try:
        await asyncio.Event().wait()
    finally:
        cancelled.set()
    raise AssertionError("unreachable")


async def test_a_slow_upload_is_evicted_for_a_newcomer_and_ends_as_408() -> None:
    events = _Rejections()
    gate = UploadGate(1, 30.0, 1000.0, events, 1)  # type: ignore[arg-type]
    cancelled = asyncio.Event()
    async with gate.hold() as slow:
        slow.started -= 2 * gate.EVICTION_GRACE_S  # long enough to be judged, 0 bytes/s
        reading = asyncio.ensure_future(
            gate.within(slow, _request(), _never(cancelled), request_deadline=1e12)
        )
        await asyncio.sleep(0.05)
        async with gate.hold():  # takes the slow one's slot
            with pytest.raises(UploadTimeoutError, match="slower than 1000 bytes/s"):
                await asyncio.wait_for(reading, 5)
    assert cancelled.is_set(), "the evicted read kept running"
    assert events.reasons == ["upload_too_slow"]


async def test_a_drain_ends_uploads_in_progress_as_503_and_refuses_new_ones() -> None:
    gate = UploadGate(4, 30.0, 1.0, _Rejections(), 1)  # type: ignore[arg-type]
    cancelled = asyncio.Event()
    async with gate.hold() as upload:
        reading = asyncio.ensure_future(
            gate.within(upload, _request(), _never(cancelled), request_deadline=1e12)
        )
        await asyncio.sleep(0.05)
        gate.close_after(0.05)
        with pytest.raises(ServiceUnavailableError, match="shutting down"):
            await asyncio.wait_for(reading, 5)
    assert cancelled.is_set(), "the read outlived the drain"
    with pytest.raises(ServiceUnavailableError, match="shutting down"):
        async with gate.hold():
            pass


async def test_a_read_that_finishes_in_time_returns_its_bytes() -> None:
    gate = UploadGate(1, 30.0, 1.0, _Rejections(), 1)  # type: ignore[arg-type]

    async def quick() -> bytes:
        await asyncio.sleep(0)
        return b"body"

    request = _request()
    async with gate.hold() as upload:
        assert await gate.within(upload, request, quick(), request_deadline=1e12) == b"body"
    assert request.state.body_complete is True
