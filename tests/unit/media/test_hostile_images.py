"""Images real clients and hostile ones send: camera multi-picture JPEGs (MPO), and images just
past the service's own size limits, which are far below Pillow's decompression-bomb limit."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import replace

import httpx
import numpy as np
import pytest
from PIL import Image

from src.core.errors import ImageDimensionsError, UnsupportedMediaTypeError
from src.media.images import ImageLimits, decode_image
from tests.helpers.api import AUTH
from tests.helpers.images import infer_files

LIMITS = ImageLimits(
    allowed_formats=frozenset({"JPEG", "PNG", "WEBP", "BMP"}),
    max_bytes=2_000_000,
    max_pixels=4_000_000,
    max_side=4000,
    min_side=16,
)
FIRST = (200, 30, 30)  # the photo
SECOND = (30, 200, 30)  # the preview / second view the camera appends


def mpo_bytes(
    first_size: tuple[int, int] = (64, 48), second_size: tuple[int, int] = (32, 24)
) -> bytes:
    """A multi-picture JPEG as cameras write it: two JPEG pictures in one file."""
    first = Image.new("RGB", first_size, FIRST)
    second = Image.new("RGB", second_size, SECOND)
    buffer = io.BytesIO()
    first.save(buffer, "MPO", save_all=True, append_images=[second])
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` but carries almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def real_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buffer, "PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------ MPO ---
def test_pillow_reads_the_test_file_as_mpo() -> None:
    with Image.open(io.BytesIO(mpo_bytes())) as image:
        assert image.format == "MPO"
        assert getattr(image, "n_frames", 1) == 2


def test_mpo_is_a_jpeg_and_its_first_picture_is_decoded() -> None:
    rgb = decode_image(mpo_bytes(first_size=(64, 48), second_size=(32, 24)), LIMITS)
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    mean = rgb.reshape(-1, 3).mean(axis=0)
    assert np.allclose(mean, FIRST, atol=6), f"not the first picture: mean colour {mean}"


def test_mpo_limits_apply_to_the_first_picture() -> None:
    tight = replace(LIMITS, max_side=50)
    with pytest.raises(ImageDimensionsError):
        decode_image(mpo_bytes(first_size=(64, 48), second_size=(32, 24)), tight)


def test_mpo_is_refused_where_jpeg_is_not_allowed() -> None:
    png_only = replace(LIMITS, allowed_formats=frozenset({"PNG"}))
    with pytest.raises(UnsupportedMediaTypeError, match="MPO"):
        decode_image(mpo_bytes(), png_only)


@pytest.mark.anyio
async def test_camera_mpo_upload_is_scored(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/infer", files=infer_files(mpo_bytes(), "IMG_0001.JPG"), headers=AUTH
    )
    assert response.status_code == 200, response.text
    assert 0.0 <= response.json()["fake_prob"] <= 1.0


# ----------------------------------------------------------------- the service's own limits ---
SMALL = ImageLimits(
    allowed_formats=frozenset({"PNG"}),
    max_bytes=2_000_000,
    max_pixels=10_000,
    max_side=10_000,
    min_side=16,
)


def test_pixel_limit_is_enforced_just_above_it() -> None:
    assert decode_image(real_png(100, 100), SMALL).shape == (100, 100, 3)
    assert Image.MAX_IMAGE_PIXELS > 101 * 100  # Pillow alone would decode it
    with pytest.raises(ImageDimensionsError, match="10000 pixels"):
        decode_image(real_png(101, 100), SMALL)


def test_pixel_limit_is_checked_from_the_header_before_decoding() -> None:
    """3000x3000 is 9 M pixels: past DFD_MAX_IMAGE_PIXELS here (8 M), a ninth of Pillow's
    bomb limit. Only the service's own check can refuse it before the pixels are decoded (the
    file is truncated, so decoding would fail with a different error)."""
    limits = replace(SMALL, max_pixels=8_000_000)
    assert Image.MAX_IMAGE_PIXELS > 9 * 3000 * 3000
    with pytest.raises(ImageDimensionsError, match="8000000 pixels"):
        decode_image(png_header_only(3000, 3000), limits)


def test_side_limit_is_enforced_just_above_it() -> None:
    limits = replace(SMALL, max_pixels=1_000_000, max_side=100)
    assert decode_image(real_png(100, 20), limits).shape == (20, 100, 3)
    with pytest.raises(ImageDimensionsError, match="100 px a side"):
        decode_image(real_png(101, 20), limits)
