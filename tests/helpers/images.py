"""Image bytes made in memory, and the multipart field the service reads."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def image_bytes(
    fmt: str = "JPEG",
    size: tuple[int, int] = (64, 48),
    mode: str = "RGB",
    seed: int = 0,
    **save_kwargs: object,
) -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        array = rng.integers(0, 65535, size=(size[1], size[0]), dtype=np.uint16)
        image = Image.fromarray(array)
    else:
        array = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
        image = Image.fromarray(array)
        if mode != "RGB":
            image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_kwargs)
    return buffer.getvalue()


def infer_files(data: bytes, name: str = "frame.jpg") -> dict[str, tuple[str, bytes, str]]:
    return {"file": (name, data, "application/octet-stream")}
