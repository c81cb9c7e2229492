"""The drift features: measured from the crop, the decoded size, the face and the bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from src.media.faces import Face
from src.monitoring.features import (
    BRIGHTNESS,
    CONTRAST,
    FACE_SCORE,
    FACE_SIZE,
    IMAGE_SIZE,
    JPEG_QUALITY,
    SHARPNESS,
    compression_quality,
    jpeg_luma_table,
    measure,
    pixel_features,
)
from tests.unit.monitoring.streams import photo_stream


def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _photo() -> Image.Image:
    return Image.open(io.BytesIO(photo_stream(1, seed=3)[0])).convert("RGB")


@pytest.mark.parametrize("quality", [30, 50, 75, 90, 95])
def test_jpeg_quality_is_read_back_from_the_quantisation_table(quality: int) -> None:
    data = _encoded(_photo(), "JPEG", quality=quality)
    assert compression_quality(data) == pytest.approx(quality, abs=1.5)


def test_the_table_parser_agrees_with_pillow() -> None:
    data = _encoded(_photo(), "JPEG", quality=60)
    table = jpeg_luma_table(data)
    with Image.open(io.BytesIO(data)) as image:
        assert table is not None and sorted(table) == sorted(image.quantization[0])


def test_lossless_formats_count_as_100_and_unknown_ones_as_missing() -> None:
    assert compression_quality(_encoded(_photo(), "PNG")) == 100.0
    assert compression_quality(_encoded(_photo(), "BMP")) == 100.0
    assert compression_quality(_encoded(_photo(), "WEBP", quality=40)) is None
    assert compression_quality(b"\xff\xd8\xff\xda broken") is None
    assert compression_quality(b"") is None


def test_darker_blurrier_and_flatter_crops_measure_so() -> None:
    crop = np.asarray(_photo())
    base = pixel_features(crop)
    darker = pixel_features((crop * 0.5).astype(np.uint8))
    blurred = pixel_features(np.asarray(_photo().filter(ImageFilter.GaussianBlur(3))))
    flat = pixel_features((crop * 0.3 + 90).astype(np.uint8))
    assert darker[BRIGHTNESS] < 0.6 * base[BRIGHTNESS]
    assert blurred[SHARPNESS] < 0.2 * base[SHARPNESS]
    assert abs(blurred[BRIGHTNESS] - base[BRIGHTNESS]) < 2
    assert flat[CONTRAST] < 0.4 * base[CONTRAST]


def test_sharpness_is_the_variance_of_the_laplacian() -> None:
    crop = np.asarray(_photo())
    gray = np.asarray(Image.fromarray(crop).convert("L"), dtype=np.float64)
    laplacian = (
        gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:] - 4 * gray[1:-1, 1:-1]
    )
    # OpenCV's border handling adds the edge pixels; the interior dominates.
    assert pixel_features(crop)[SHARPNESS] == pytest.approx(laplacian.var(), rel=0.1)


def test_measure_adds_size_face_and_compression() -> None:
    image = _photo()
    data = _encoded(image, "JPEG", quality=80)
    face = Face(box=(10, 20, 56, 56), score=0.97)
    features = measure(np.asarray(image)[:160, :160], (224, 224, 3), face, data)
    assert features[IMAGE_SIZE] == 224.0
    assert features[FACE_SIZE] == pytest.approx(0.25)
    assert features[FACE_SCORE] == pytest.approx(0.97)
    assert features[JPEG_QUALITY] == pytest.approx(80, abs=1.5)
    # A frame already decoded (video) and no face crop: those features are simply absent.
    assert set(measure(np.asarray(image), (300, 400, 3))) == {
        BRIGHTNESS,
        CONTRAST,
        SHARPNESS,
        IMAGE_SIZE,
    }
