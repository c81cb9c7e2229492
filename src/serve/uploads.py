"""Reading an upload with its size limit enforced while the bytes arrive."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import Message, Receive

from src.core.errors import BadRequestError, EmptyUploadError, PayloadTooLargeError

CHUNK = 64 * 1024
RAW_CONTENT_TYPES = ("image/", "application/octet-stream")
MULTIPART_ENVELOPE_BYTES = 64 * 1024  # room for the multipart headers and boundaries


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"the upload exceeds the {limit}-byte limit")


def _limited_receive(receive: Receive, max_body: int, file_limit: int) -> Receive:
    received = 0

    async def limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_body:
                raise _too_large(file_limit)
        return message

    return limited


async def read_upload(request: Request, max_upload_bytes: int) -> bytes:
    """The uploaded image's bytes: multipart field ``file``, or a raw ``image/*`` body.

    A declared Content-Length over the limit is refused before any byte is read; otherwise the
    body is counted as it streams in and refused as soon as it passes the limit.
    """
    content_type = request.headers.get("content-type", "")
    is_multipart = content_type.startswith("multipart/form-data")
    max_body = max_upload_bytes + (MULTIPART_ENVELOPE_BYTES if is_multipart else 0)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise _too_large(max_upload_bytes)
    limited = Request(request.scope, _limited_receive(request.receive, max_body, max_upload_bytes))
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
