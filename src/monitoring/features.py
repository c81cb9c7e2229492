"""Input features that drift in practice, measured from what the pipeline already has.

Cameras, uploaders and re-encoders change the inputs long before anyone relabels data: darker
or blurrier pictures, heavier JPEG compression, smaller images, smaller or less certain faces.
Each feature here is one number per image, computed from the bytes' header, the decoded image's
size, the face the detector found and the crop the model scores; nothing is decoded twice.
The same function measures the validation set (``src.train.reference``) and live traffic
(``src.engine.preprocess``), so the two are comparable by construction.
"""

from __future__ import annotations

from typing import Final

import cv2
import numpy as np

from src.media.faces import Face

BRIGHTNESS: Final = "brightness"
CONTRAST: Final = "contrast"
SHARPNESS: Final = "sharpness"
JPEG_QUALITY: Final = "jpeg_quality"
IMAGE_SIZE: Final = "image_size"
FACE_SIZE: Final = "face_size"
FACE_SCORE: Final = "face_score"
FAKE_PROB: Final = "fake_prob"

INPUT_FEATURES: Final = (
    BRIGHTNESS,
    CONTRAST,
    SHARPNESS,
    JPEG_QUALITY,
    IMAGE_SIZE,
    FACE_SIZE,
    FACE_SCORE,
)
# Everything the drift monitor follows: the inputs, and what the model answers.
MONITORED: Final = (*INPUT_FEATURES, FAKE_PROB)

DESCRIPTIONS: Final = {
    BRIGHTNESS: "mean luma of the scored crop, 0-255",
    CONTRAST: "standard deviation of the crop's luma",
    SHARPNESS: "variance of the Laplacian of the crop's luma (low: blurred)",
    JPEG_QUALITY: "IJG quality estimated from the JPEG luminance table; 100 for lossless formats",
    IMAGE_SIZE: "sqrt(width x height) of the decoded image, px",
    FACE_SIZE: "sqrt(face box area / image area)",
    FACE_SCORE: "the face detector's confidence",
    FAKE_PROB: "the model's fake probability",
}

Features = dict[str, float]

# The IJG (libjpeg) luminance table at quality 50; a file's table is this one scaled.
_IJG_LUMA: Final = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_IJG_LUMA_SUM: Final = sum(sum(row) for row in _IJG_LUMA)
_LOSSLESS_SIGNATURES: Final = (b"\x89PNG\r\n\x1a\n", b"BM", b"GIF87a", b"GIF89a", b"II*\x00")
_LOSSLESS_SIGNATURES_BE: Final = b"MM\x00*"
_SOS, _EOI, _DQT = 0xDA, 0xD9, 0xDB
_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})


def measure(
    crop: np.ndarray,
    image_shape: tuple[int, ...],
    face: Face | None = None,
    data: bytes | None = None,
) -> Features:
    """The input features of one image: ``crop`` is what the model scores (uint8 RGB),
    ``image_shape`` the decoded image's, ``face`` the face cut out (None: no face crop),
    ``data`` the uploaded bytes (None for frames already decoded: no compression level)."""
    features = pixel_features(crop)
    height, width = image_shape[:2]
    features[IMAGE_SIZE] = float(np.sqrt(width * height))
    if face is not None:
        _, _, box_w, box_h = face.box
        features[FACE_SIZE] = float(np.sqrt(box_w * box_h / max(1, width * height)))
        features[FACE_SCORE] = float(face.score)
    if data is not None:
        quality = compression_quality(data)
        if quality is not None:
            features[JPEG_QUALITY] = quality
    return features


def pixel_features(crop: np.ndarray) -> Features:
    """Brightness, contrast and sharpness of an RGB uint8 crop (OpenCV: no float copies)."""
    gray = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)
    mean, std = cv2.meanStdDev(gray)
    laplacian = cv2.Laplacian(gray, cv2.CV_16S)
    # E[x^2] - E[x]^2: cv2.norm and sumElems are several times faster than meanStdDev on int16.
    count = laplacian.size
    sharpness = (
        cv2.norm(laplacian, cv2.NORM_L2SQR) / count - (cv2.sumElems(laplacian)[0] / count) ** 2
    )
    return {
        BRIGHTNESS: float(mean[0, 0]),
        CONTRAST: float(std[0, 0]),
        SHARPNESS: float(sharpness),
    }


def compression_quality(data: bytes) -> float | None:
    """The JPEG quality (1-100) the file was saved at, estimated from its luminance table;
    100 for lossless formats; None when unknown (WebP, a JPEG without a readable table)."""
    if data.startswith(_LOSSLESS_SIGNATURES) or data.startswith(_LOSSLESS_SIGNATURES_BE):
        return 100.0
    table = jpeg_luma_table(data)
    return None if table is None else ijg_quality(table)


def ijg_quality(table: list[int]) -> float:
    """Invert libjpeg's scaling (``scale = 5000/q`` below 50, ``200 - 2q`` above) from the
    table's sum, which does not depend on the order its 64 values are stored in."""
    scale = 100.0 * sum(table) / _IJG_LUMA_SUM
    quality = 5000.0 / scale if scale > 100.0 else (200.0 - scale) / 2.0
    return float(min(100.0, max(1.0, quality)))


def jpeg_luma_table(data: bytes) -> list[int] | None:
    """Table 0 (luminance) of a JPEG's DQT segments, read from the markers before the first
    scan; no pixel is decoded. None when ``data`` is no JPEG or has no such table."""
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (_SOS, _EOI):
            return None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == _DQT:
            table = _luma_in_dqt(data[pos + 4 : pos + 2 + length])
            if table is not None:
                return table
        pos += 2 + length
    return None


def _luma_in_dqt(segment: bytes) -> list[int] | None:
    pos = 0
    while pos < len(segment):
        precision, table_id = segment[pos] >> 4, segment[pos] & 0x0F
        size = 128 if precision else 64
        values = segment[pos + 1 : pos + 1 + size]
        if len(values) < size:
            return None
        if table_id == 0:
            if precision:
                return [int.from_bytes(values[i : i + 2], "big") for i in range(0, size, 2)]
            return list(values)
        pos += 1 + size
    return None
