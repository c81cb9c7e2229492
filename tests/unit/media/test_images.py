"""Every way an upload can be refused, through the API and at the decoder."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from PIL import Image

from src.core.errors import (
    EmptyUploadError,
    ImageDimensionsError,
    InvalidImageError,
    UnsupportedMediaTypeError,
)
from src.core.settings import Settings
from src.media.images import ImageLimits, decode_image
from src.serve.app import create_app
from tests.helpers.api import AUTH, TEST_KEY, assert_error, started_client
from tests.helpers.images import image_bytes, infer_files

LIMITS = ImageLimits(
    allowed_formats=frozenset({"JPEG", "PNG", "WEBP", "BMP"}),
    max_bytes=1_000_000,
    max_pixels=4_000_000,
    max_side=4000,
    min_side=16,
)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims huge dimensions (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class TestDecoder:
    @pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP"])
    def test_allowed_formats_decode_to_rgb(self, fmt: str) -> None:
        rgb = decode_image(image_bytes(fmt, size=(40, 30)), LIMITS)
        assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8

    @pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "I;16", "CMYK"])
    def test_modes_become_rgb(self, mode: str) -> None:
        fmt = "JPEG" if mode == "CMYK" else "PNG"
        rgb = decode_image(image_bytes(fmt, mode=mode), LIMITS)
        assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8

    def test_sixteen_bit_keeps_its_range(self) -> None:
        ramp = (np.arange(64 * 32, dtype=np.uint16).reshape(32, 64) * 31).astype(np.uint16)
        buffer = io.BytesIO()
        Image.fromarray(ramp).save(buffer, format="PNG")
        rgb = decode_image(buffer.getvalue(), LIMITS)
        assert rgb[..., 0].min() < 10 and rgb[..., 0].max() > 245  # not clipped to white

    def test_transparent_pixels_become_white(self) -> None:
        rgba = np.zeros((20, 20, 4), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(rgba).save(buffer, format="PNG")
        assert (decode_image(buffer.getvalue(), LIMITS) == 255).all()

    def test_exif_orientation_is_applied(self) -> None:
        image = Image.new("RGB", (60, 20), (200, 0, 0))
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise on display
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", exif=exif.tobytes())
        assert decode_image(buffer.getvalue(), LIMITS).shape == (60, 20, 3)

    def test_format_comes_from_bytes_not_name(self) -> None:
        gif = image_bytes("GIF")
        with pytest.raises(UnsupportedMediaTypeError, match="GIF"):
            decode_image(gif, LIMITS)

    def test_refusals(self) -> None:
        with pytest.raises(EmptyUploadError):
            decode_image(b"", LIMITS)
        with pytest.raises(UnsupportedMediaTypeError):
            decode_image(b"%PDF-1.4 not an image at all", LIMITS)
        with pytest.raises(InvalidImageError):
            decode_image(image_bytes("PNG", size=(200, 200))[:400], LIMITS)
        with pytest.raises(ImageDimensionsError):
            decode_image(png_header_only(50_000, 50_000), LIMITS)
        with pytest.raises(ImageDimensionsError):
            decode_image(image_bytes("PNG", size=(8, 8)), LIMITS)


pytestmark = pytest.mark.anyio


@pytest.fixture
async def small_client(settings_factory: Callable[..., Settings]):  # type: ignore[no-untyped-def]
    app = create_app(settings_factory(max_upload_bytes=20_000))
    async for c in started_client(app):
        yield c


@pytest.mark.parametrize(
    ("data", "name", "status", "code"),
    [
        (b"", "empty.jpg", 400, "empty_file"),
        (b"hello, I am text", "frame.jpg", 415, "unsupported_media_type"),
        (image_bytes("GIF"), "frame.jpg", 415, "unsupported_media_type"),
        (image_bytes("JPEG", size=(400, 400))[:2000], "cut.jpg", 422, "invalid_image"),
        (png_header_only(60_000, 60_000), "bomb.png", 422, "invalid_dimensions"),
        (png_header_only(20_000, 10), "wide.png", 422, "invalid_dimensions"),
        (image_bytes("PNG", size=(4, 4)), "tiny.png", 422, "invalid_dimensions"),
    ],
)
async def test_bad_uploads_are_refused_and_service_stays_healthy(
    small_client: httpx.AsyncClient, data: bytes, name: str, status: int, code: str
) -> None:
    response = await small_client.post("/infer", files=infer_files(data, name), headers=AUTH)
    assert_error(response, status, code)
    assert (await small_client.get("/ready")).status_code == 200
    ok = await small_client.post("/infer", files=infer_files(image_bytes()), headers=AUTH)
    assert ok.status_code == 200


async def test_oversized_upload_is_413(small_client: httpx.AsyncClient) -> None:
    big = image_bytes("PNG", size=(200, 200))
    assert len(big) > 20_000
    response = await small_client.post("/infer", files=infer_files(big), headers=AUTH)
    assert_error(response, 413, "payload_too_large")


async def test_oversized_raw_body_is_413(small_client: httpx.AsyncClient) -> None:
    response = await small_client.post(
        "/infer", content=b"\xff" * 30_000, headers={**AUTH, "Content-Type": "image/jpeg"}
    )
    assert_error(response, 413, "payload_too_large")


async def test_streamed_upload_without_length_is_cut_off(small_client: httpx.AsyncClient) -> None:
    sent = 0

    async def body():  # type: ignore[no-untyped-def]
        nonlocal sent
        for _ in range(100):
            sent += 4096
            yield b"\x00" * 4096

    response = await small_client.post(
        "/infer", content=body(), headers={**AUTH, "Content-Type": "image/jpeg"}
    )
    assert_error(response, 413, "payload_too_large")
    assert sent < 100 * 4096, "the whole stream was read before refusing it"


async def test_missing_file_field_and_wrong_content_type(small_client: httpx.AsyncClient) -> None:
    no_file = await small_client.post("/infer", data={"other": "x"}, headers=AUTH)
    assert_error(no_file, 400, "bad_request")
    as_json = await small_client.post("/infer", json={"file": "x"}, headers=AUTH)
    assert_error(as_json, 400, "bad_request")


async def test_auth_is_checked_before_the_body_is_read(small_client: httpx.AsyncClient) -> None:
    big = b"\x00" * 50_000
    response = await small_client.post("/infer", files=infer_files(big))
    assert_error(response, 401, "unauthorized")


async def test_client_that_disconnects_mid_upload_is_not_an_error(settings: Settings) -> None:
    app = create_app(settings)
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        if not sent:
            sent.append({})
            return {"type": "http.request", "body": b"\xff\xd8\xff" * 100, "more_body": True}
        return {"type": "http.disconnect"}

    messages: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/infer",
        "raw_path": b"/infer",
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "http_version": "1.1",
        "server": ("test", 80),
        "client": ("127.0.0.1", 1),
        "headers": [(b"x-api-key", TEST_KEY.encode()), (b"content-type", b"image/jpeg")],
    }
    async with app.router.lifespan_context(app):
        await app(scope, receive, send)  # type: ignore[arg-type]
        assert app.state.service.pending == 0
    start = next(m for m in messages if m["type"] == "http.response.start")
    assert start["status"] == 499
