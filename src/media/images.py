"""Bytes in, a checked RGB image out, or a typed error that says why not.

The format is decided from the bytes themselves (Pillow's signature sniffing), never from the
file name or the client's content type.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from src.core.errors import (
    EmptyUploadError,
    ImageDimensionsError,
    InvalidImageError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)

ImageFile.LOAD_TRUNCATED_IMAGES = False
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
# Formats Pillow names apart that are accepted as another: a camera's multi-picture JPEG (MPO:
# the photo plus a preview or second view) is a JPEG whose first picture is the photo.
_FORMAT_FAMILY = {"MPO": "JPEG"}


@dataclass(frozen=True)
class ImageLimits:
    allowed_formats: frozenset[str]
    max_bytes: int
    max_pixels: int
    max_side: int
    min_side: int


def decode_image(data: bytes, limits: ImageLimits) -> np.ndarray:
    """Decode ``data`` into an RGB uint8 array (H, W, 3) with EXIF orientation applied."""
    if not data:
        raise EmptyUploadError()
    if len(data) > limits.max_bytes:
        raise PayloadTooLargeError(f"the upload exceeds the {limits.max_bytes}-byte limit")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as exc:
            allowed = ", ".join(sorted(limits.allowed_formats))
            raise UnsupportedMediaTypeError(
                f"the upload is not a recognised image; allowed formats: {allowed}"
            ) from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageDimensionsError(f"the image is too large to decode safely: {exc}") from exc
        except Exception as exc:  # malformed headers surface as many exception types
            raise InvalidImageError(f"the image header cannot be read: {exc}") from exc
        with image:
            return _to_rgb_array(image, limits)


def _to_rgb_array(image: Image.Image, limits: ImageLimits) -> np.ndarray:
    fmt = _FORMAT_FAMILY.get(image.format or "", image.format)
    if fmt not in limits.allowed_formats:
        allowed = ", ".join(sorted(limits.allowed_formats))
        raise UnsupportedMediaTypeError(
            f"{image.format} images are not accepted; allowed: {allowed}"
        )
    # Multi-picture files (MPO, GIF, TIFF) open on their first picture: only it is checked,
    # decoded and scored.
    width, height = image.size
    if width * height > limits.max_pixels or max(width, height) > limits.max_side:
        raise ImageDimensionsError(
            f"image is {width}x{height}; the limits are {limits.max_side} px a side and "
            f"{limits.max_pixels} pixels"
        )
    if min(width, height) < limits.min_side:
        raise ImageDimensionsError(
            f"image is {width}x{height}; each side must be at least {limits.min_side} px"
        )
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # no copy of the pixels
    except Image.DecompressionBombError as exc:
        raise ImageDimensionsError(f"the image is too large to decode safely: {exc}") from exc
    except Exception as exc:  # truncated data, bad EXIF, decoder errors
        raise InvalidImageError(f"the image is corrupt or truncated: {exc}") from exc
    return _as_rgb(image)


def _as_rgb(image: Image.Image) -> np.ndarray:
    """Grayscale, palette, alpha and 16-bit images become 8-bit RGB."""
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode != "I" or values.max(initial=0) > 255 else 255.0
        gray = np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)  # read-only: every later step makes new arrays


def declared_pixels(data: bytes) -> int:
    """Width x height as the image's header declares it, read without decoding the pixels;
    0 when the header cannot be read (decoding will then say why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Exception:  # any unreadable header: decode_image reports it properly
        return 0
    return width * height
