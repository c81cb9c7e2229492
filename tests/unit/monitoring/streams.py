"""Streams of photo-like uploads for drift tests: varied crops of real photos (shipped with
scikit-image), saved as JPEGs at varied quality, optionally darkened, blurred or re-compressed."""

from __future__ import annotations

import io
from functools import cache

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

SIZE = 224


@cache
def _photos() -> tuple[Image.Image, ...]:
    import skimage.data

    return tuple(
        Image.fromarray(getattr(skimage.data, name)())
        for name in ("astronaut", "coffee", "chelsea", "rocket")
    )


def photo_stream(
    count: int,
    seed: int,
    *,
    darken: float = 1.0,
    blur: float = 0.0,
    quality: int | None = None,
) -> list[bytes]:
    """``count`` JPEG uploads. Unshifted: a random square crop of a photo, brightness jittered
    by +-15 %, saved at quality 70-95. ``darken`` scales the brightness, ``blur`` is a Gaussian
    radius in pixels, ``quality`` a fixed (re-)compression quality."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    uploads = []
    for _ in range(count):
        photo = photos[int(rng.integers(len(photos)))]
        side = int(rng.integers(200, min(photo.size) + 1))
        left = int(rng.integers(0, photo.width - side + 1))
        top = int(rng.integers(0, photo.height - side + 1))
        image = photo.crop((left, top, left + side, top + side)).resize((SIZE, SIZE))
        image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.85, 1.15)) * darken)
        if blur:
            image = image.filter(ImageFilter.GaussianBlur(blur))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality or int(rng.integers(70, 96)))
        uploads.append(buffer.getvalue())
    return uploads
