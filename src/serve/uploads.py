"""Reading an upload: its size limit enforced while the bytes arrive, a deadline for the whole
body, and a bound on how many uploads are received at once.

Uploads are read before any inference place is taken, so slow clients hold only upload slots
(``UploadGate``), never the model's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import Message, Receive

from src.core.errors import (
    BadRequestError,
    EmptyUploadError,
    InferenceTimeoutError,
    OverloadedError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    UploadTimeoutError,
)
from src.engine.events import EngineEvents

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024
RAW_CONTENT_TYPES = ("image/", "application/octet-stream")
MULTIPART_ENVELOPE_BYTES = 64 * 1024  # room for the multipart headers and boundaries


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"the upload exceeds the {limit}-byte limit")


@dataclass(eq=False)
class Upload:
    """One upload in progress: when it began and how many body bytes have arrived."""

    started: float
    received: int = 0
    evicted: asyncio.Event = field(default_factory=asyncio.Event)

    def rate(self, now: float) -> float:
        return self.received / max(now - self.started, 1e-3)


def _limited_receive(
    receive: Receive, max_body: int, file_limit: int, upload: Upload | None
) -> Receive:
    received = 0

    async def limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if upload is not None:
                upload.received = received
            if received > max_body:
                raise _too_large(file_limit)
        return message

    return limited


class UploadGate:
    """At most ``capacity`` uploads received at once.

    When every slot is taken, a new upload evicts the slowest one that has had
    ``EVICTION_GRACE_S`` to start and still arrives slower than ``min_bytes_per_s`` (it ends as
    408), so clients that trickle bytes cannot keep others out; only when no upload is that slow
    is the newcomer refused (503). On drain, uploads still arriving after a grace period end as
    503, instead of being cut off by the server's shutdown.
    """

    EVICTION_GRACE_S = 1.0

    def __init__(
        self,
        capacity: int,
        body_timeout_s: float,
        min_bytes_per_s: float,
        events: EngineEvents,
        retry_after_s: float,
    ) -> None:
        self.capacity = capacity
        self.body_timeout_s = body_timeout_s
        self.min_bytes_per_s = min_bytes_per_s
        self.retry_after_s = retry_after_s
        self._events = events
        self._active: set[Upload] = set()
        self._closing = asyncio.Event()

    @property
    def active(self) -> int:
        return len(self._active)

    def close_after(self, grace_s: float) -> None:
        """End uploads still in progress ``grace_s`` from now (called when draining starts)."""
        asyncio.get_running_loop().call_later(max(0.0, grace_s), self._closing.set)

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[Upload]:
        if self._closing.is_set():
            raise ServiceUnavailableError(
                "the service is shutting down", retry_after_s=self.retry_after_s
            )
        if len(self._active) >= self.capacity and not self._evict_slowest():
            self._events.rejected("uploads_full")
            logger.info("upload slots full: %d uploads in progress", len(self._active))
            raise OverloadedError(
                "too many uploads in progress; retry later", retry_after_s=self.retry_after_s
            )
        upload = Upload(started=time.perf_counter())
        self._active.add(upload)
        try:
            yield upload
        finally:
            self._active.discard(upload)

    def _evict_slowest(self) -> bool:
        now = time.perf_counter()
        slow = [
            upload
            for upload in self._active
            if now - upload.started >= self.EVICTION_GRACE_S
            and upload.rate(now) < self.min_bytes_per_s
        ]
        if not slow:
            return False
        victim = min(slow, key=lambda upload: upload.rate(now))
        victim.evicted.set()
        self._active.discard(victim)
        self._events.rejected("upload_too_slow")
        return True

    async def receive(
        self,
        upload: Upload,
        request: Request,
        max_upload_bytes: int,
        *,
        request_deadline: float,
    ) -> bytes:
        """Read the upload within ``body_timeout_s`` of its start and before the request's
        deadline (a ``time.perf_counter()`` value).

        The body deadline passing first, or an eviction, is the client's fault (408); the
        request's end-to-end deadline passing first is a 504; a drain that ends the upload is a
        503.
        """
        body_deadline = upload.started + self.body_timeout_s
        deadline = min(body_deadline, request_deadline)
        reading = asyncio.ensure_future(read_upload(request, max_upload_bytes, upload))
        stops = {
            asyncio.ensure_future(self._closing.wait()),
            asyncio.ensure_future(upload.evicted.wait()),
        }
        try:
            done, _ = await asyncio.wait(
                {reading, *stops},
                timeout=max(0.0, deadline - time.perf_counter()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for stop in stops:
                stop.cancel()
        if reading in done:
            data = reading.result()
            request.state.body_complete = True
            return data
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reading
        if self._closing.is_set():
            raise ServiceUnavailableError(
                "the service is shutting down", retry_after_s=self.retry_after_s
            )
        if upload.evicted.is_set():
            raise UploadTimeoutError(
                f"the upload arrived slower than {self.min_bytes_per_s:g} bytes/s while other "
                "uploads waited"
            )
        if body_deadline <= request_deadline:
            raise UploadTimeoutError(f"the upload did not arrive within {self.body_timeout_s:g} s")
        self._events.rejected("timeout")
        raise InferenceTimeoutError("the request's deadline passed while its upload arrived")


def media_type(request: Request) -> str:
    """The request's media type, lower-cased (media types are case-insensitive)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_upload(
    request: Request, max_upload_bytes: int, upload: Upload | None = None
) -> bytes:
    """The uploaded image's bytes: multipart field ``file``, or a raw ``image/*`` body.

    A declared Content-Length over the limit is refused before any byte is read; otherwise the
    body is counted as it streams in and refused as soon as it passes the limit.
    """
    content_type = media_type(request)
    is_multipart = content_type == "multipart/form-data"
    max_body = max_upload_bytes + (MULTIPART_ENVELOPE_BYTES if is_multipart else 0)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise _too_large(max_upload_bytes)
    scope = _with_normalised_content_type(request) if is_multipart else request.scope
    limited = Request(scope, _limited_receive(request.receive, max_body, max_upload_bytes, upload))
    if is_multipart:
        return await _read_multipart_file(limited, max_upload_bytes)
    if content_type.startswith(RAW_CONTENT_TYPES):
        data = await limited.body()
        if len(data) > max_upload_bytes:
            raise _too_large(max_upload_bytes)
        if not data:
            raise EmptyUploadError()
        return data
    raise BadRequestError(
        "send the image as multipart/form-data in a field named 'file' "
        "(or as a raw body with an image/* content type)"
    )


def _with_normalised_content_type(request: Request) -> dict[str, Any]:
    """The scope with the media type lower-cased, parameters kept: the multipart parser compares
    ``multipart/form-data`` exactly, though media types are case-insensitive."""
    header = request.headers.get("content-type", "")
    media, sep, params = header.partition(";")
    normalised = (media.strip().lower() + sep + params).encode("latin-1")
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
    return {**request.scope, "headers": [*headers, (b"content-type", normalised)]}


async def _read_multipart_file(request: Request, limit: int) -> bytes:
    try:
        form = await request.form(max_files=1, max_fields=8, max_part_size=64 * 1024)
    except MultiPartException as exc:
        raise BadRequestError(f"malformed multipart body: {exc.message}") from exc
    try:
        upload: Any = form.get("file")
        if not isinstance(upload, UploadFile):
            raise BadRequestError("the multipart body has no file field named 'file'")
        chunks: list[bytes] = []
        size = 0
        while chunk := await upload.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        if size == 0:
            raise EmptyUploadError()
        return b"".join(chunks)
    finally:
        await form.close()


def watch_disconnect(request: Request) -> asyncio.Future[None]:
    """A task that completes when the client disconnects (call once the body is read)."""

    async def wait() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    return asyncio.ensure_future(wait())
