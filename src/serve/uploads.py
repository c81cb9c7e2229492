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
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import Message, Receive

from src.core.errors import (
    BadRequestError,
    EmptyUploadError,
    InferenceTimeoutError,
    InputError,
    OverloadedError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    TooMuchWorkError,
    UploadTimeoutError,
)
from src.engine.events import EngineEvents

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024
MULTIPART_ENVELOPE_BYTES = 64 * 1024  # room for the multipart headers and boundaries
T = TypeVar("T")


@dataclass(frozen=True)
class UploadKind:
    """What a route accepts: its multipart field, the raw body media types, and the noun its
    messages use."""

    field: str
    raw_types: tuple[str, ...]
    noun: str


IMAGE_UPLOAD = UploadKind("file", ("image/", "application/octet-stream"), "image")
VIDEO_UPLOAD = UploadKind("file", ("video/", "application/octet-stream"), "video")
BATCH_FIELD = "files"


@dataclass(frozen=True)
class UploadedFile:
    """One file of a multi-file upload: its bytes, or why it could not be taken (an item
    error, which fails that item alone)."""

    filename: str | None
    data: bytes = b""
    error: InputError | None = None


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"the upload exceeds the {limit}-byte limit")


@dataclass(eq=False)
class Upload:
    """One upload in progress: when it began and how many body bytes have arrived.

    ``stopped`` completes when the upload must end early (evicted, or the service draining):
    a plain future the read waits on beside its own task, so a request costs no extra tasks.
    """

    started: float
    received: int = 0
    evicted: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: asyncio.Future[None] | None = None

    def rate(self, now: float) -> float:
        return self.received / max(now - self.started, 1e-3)

    def stop(self) -> None:
        if self.stopped is not None and not self.stopped.done():
            self.stopped.set_result(None)


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
        asyncio.get_running_loop().call_later(max(0.0, grace_s), self._close)

    def _close(self) -> None:
        self._closing.set()
        for upload in list(self._active):
            upload.stop()

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
        upload.stopped = asyncio.get_running_loop().create_future()
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
        victim.stop()
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
        kind: UploadKind = IMAGE_UPLOAD,
        body_timeout_s: float | None = None,
    ) -> bytes:
        """The one uploaded file of ``kind``, read under :meth:`within`'s deadlines."""
        return await self.within(
            upload,
            request,
            read_upload(request, max_upload_bytes, upload, kind),
            request_deadline=request_deadline,
            body_timeout_s=body_timeout_s,
        )

    async def receive_files(
        self,
        upload: Upload,
        request: Request,
        *,
        max_items: int,
        max_item_bytes: int,
        max_total_bytes: int,
        request_deadline: float,
    ) -> list[UploadedFile]:
        """The repeated multipart field ``files``, read under :meth:`within`'s deadlines."""
        return await self.within(
            upload,
            request,
            read_files(request, upload, max_items, max_item_bytes, max_total_bytes),
            request_deadline=request_deadline,
        )

    async def within(
        self,
        upload: Upload,
        request: Request,
        reading: Coroutine[Any, Any, T],
        *,
        request_deadline: float,
        body_timeout_s: float | None = None,
    ) -> T:
        """Run ``reading`` within ``body_timeout_s`` (default: the gate's) of the upload's start
        and before the request's deadline (a ``time.perf_counter()`` value).

        The body deadline passing first, or an eviction, is the client's fault (408); the
        request's end-to-end deadline passing first is a 504; a drain that ends the upload is a
        503.
        """
        body_timeout_s = self.body_timeout_s if body_timeout_s is None else body_timeout_s
        body_deadline = upload.started + body_timeout_s
        deadline = min(body_deadline, request_deadline)
        task = asyncio.ensure_future(reading)
        waiting: set[asyncio.Future[Any]] = {task}
        if upload.stopped is not None:
            waiting.add(upload.stopped)
        if self._closing.is_set() or upload.evicted.is_set():
            upload.stop()  # ended before this read began
        done, _ = await asyncio.wait(
            waiting,
            timeout=max(0.0, deadline - time.perf_counter()),
            return_when=asyncio.FIRST_COMPLETED,
        )
        if task in done:
            data = task.result()
            request.state.body_complete = True
            return data
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
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
            raise UploadTimeoutError(f"the upload did not arrive within {body_timeout_s:g} s")
        self._events.rejected("timeout")
        raise InferenceTimeoutError("the request's deadline passed while its upload arrived")


def media_type(request: Request) -> str:
    """The request's media type, lower-cased (media types are case-insensitive)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_upload(
    request: Request,
    max_upload_bytes: int,
    upload: Upload | None = None,
    kind: UploadKind = IMAGE_UPLOAD,
) -> bytes:
    """The uploaded file's bytes: multipart field ``kind.field``, or a raw body of one of
    ``kind.raw_types``.

    A declared Content-Length over the limit is refused before any byte is read; otherwise the
    body is counted as it streams in and refused as soon as it passes the limit.
    """
    content_type = media_type(request)
    is_multipart = content_type == "multipart/form-data"
    limited = _limited_request(request, max_upload_bytes, max_upload_bytes, upload, is_multipart)
    if is_multipart:
        return await _read_multipart_file(limited, max_upload_bytes, kind.field)
    if content_type.startswith(kind.raw_types):
        data = await limited.body()
        if len(data) > max_upload_bytes:
            raise _too_large(max_upload_bytes)
        if not data:
            raise EmptyUploadError()
        return data
    raw = " or ".join(f"{t}*" if t.endswith("/") else t for t in kind.raw_types)
    raise BadRequestError(
        f"send the {kind.noun} as multipart/form-data in a field named '{kind.field}' "
        f"(or as a raw body with a {raw} content type)"
    )


async def read_files(
    request: Request,
    upload: Upload | None,
    max_items: int,
    max_item_bytes: int,
    max_total_bytes: int,
) -> list[UploadedFile]:
    """The files of the repeated multipart field ``files``, in order.

    The request fails (413) when it has more than ``max_items`` files or more than
    ``max_total_bytes`` in all; a file over ``max_item_bytes`` or empty is an item error.
    """
    if media_type(request) != "multipart/form-data":
        raise BadRequestError(
            f"send the images as multipart/form-data, each in a field named '{BATCH_FIELD}'"
        )
    limited = _limited_request(request, max_total_bytes, max_total_bytes, upload, multipart=True)
    try:
        form = await limited.form(max_files=max_items, max_fields=8, max_part_size=64 * 1024)
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise TooMuchWorkError(
                f"a batch takes at most {max_items} files (DFD_MAX_BATCH_ITEMS)"
            ) from exc
        raise BadRequestError(f"malformed multipart body: {exc.message}") from exc
    try:
        parts = [part for part in form.getlist(BATCH_FIELD) if isinstance(part, UploadFile)]
        if not parts:
            raise BadRequestError(
                f"the multipart body has no files in fields named '{BATCH_FIELD}'"
            )
        files: list[UploadedFile] = []
        total = 0
        for part in parts:
            total += part.size or 0
            if total > max_total_bytes:  # the files alone, without the multipart envelope
                raise _too_large(max_total_bytes)
            try:
                files.append(UploadedFile(part.filename, await _read_part(part, max_item_bytes)))
            except (PayloadTooLargeError, EmptyUploadError) as exc:
                files.append(UploadedFile(part.filename, error=exc))
        return files
    finally:
        await form.close()


def _limited_request(
    request: Request, max_data: int, limit_named: int, upload: Upload | None, multipart: bool
) -> Request:
    """``request`` whose body is refused (413, naming ``limit_named``) past ``max_data`` bytes
    (plus the multipart envelope), by its declared length at once, else as it streams in."""
    max_body = max_data + (MULTIPART_ENVELOPE_BYTES if multipart else 0)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise _too_large(limit_named)
    scope = _with_normalised_content_type(request) if multipart else request.scope
    return Request(scope, _limited_receive(request.receive, max_body, limit_named, upload))


def _with_normalised_content_type(request: Request) -> dict[str, Any]:
    """The scope with the media type lower-cased, parameters kept: the multipart parser compares
    ``multipart/form-data`` exactly, though media types are case-insensitive. Without ``app``,
    so that Starlette raises the parser's own ``MultiPartException`` (which the callers turn
    into the right error) instead of a generic 400."""
    header = request.headers.get("content-type", "")
    media, sep, params = header.partition(";")
    normalised = (media.strip().lower() + sep + params).encode("latin-1")
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
    scope = {key: value for key, value in request.scope.items() if key != "app"}
    return {**scope, "headers": [*headers, (b"content-type", normalised)]}


async def _read_multipart_file(request: Request, limit: int, field_name: str) -> bytes:
    try:
        form = await request.form(max_files=1, max_fields=8, max_part_size=64 * 1024)
    except MultiPartException as exc:
        raise BadRequestError(f"malformed multipart body: {exc.message}") from exc
    try:
        upload: Any = form.get(field_name)
        if not isinstance(upload, UploadFile):
            raise BadRequestError(f"the multipart body has no file field named '{field_name}'")
        return await _read_part(upload, limit)
    finally:
        await form.close()


async def _read_part(upload: UploadFile, limit: int) -> bytes:
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


def watch_disconnect(request: Request) -> asyncio.Future[None]:
    """A task that completes when the client disconnects (call once the body is read)."""

    async def wait() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    return asyncio.ensure_future(wait())


async def while_connected(
    request: Request, work: Callable[[asyncio.Future[None]], Awaitable[T]]
) -> T:
    """``work(disconnected)``, with ``disconnected`` completing if the client goes meanwhile
    (for the engine's ``disconnected=``); the watch ends with the work."""
    disconnected = watch_disconnect(request)
    try:
        return await work(disconnected)
    finally:
        disconnected.cancel()
