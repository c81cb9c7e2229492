"""The one preprocessing function, built from a checkpoint's metadata.

Training and serving both call :func:`build_preprocess`, so a model always sees images prepared
the way it was trained on.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import torch

from src.models.checkpoint import ModelMetadata

Preprocess = Callable[[np.ndarray], torch.Tensor]


def resize_center_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` (area filter when shrinking), then crop the centre."""
    height, width = rgb.shape[:2]
    scale = size / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (new_w, new_h), interpolation=interpolation)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return rgb[top : top + size, left : left + size]


def build_preprocess(metadata: ModelMetadata) -> Preprocess:
    """RGB uint8 HxWx3 array -> normalised float tensor 3xSxS."""
    size = metadata.input_size
    mean = np.asarray(metadata.mean, dtype=np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(metadata.std, dtype=np.float32) * 255.0)

    def preprocess(rgb: np.ndarray) -> torch.Tensor:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB array, got {rgb.shape} {rgb.dtype}")
        crop = resize_center_crop(rgb, size).astype(np.float32)
        normalised = (crop - mean) * inv_std
        return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))

    return preprocess
