"""The one preprocessing recipe, built from a checkpoint's metadata.

Resize-and-crop (:func:`build_crop`) then normalise. Training calls :func:`build_preprocess`, which
does both per image with NumPy; the service crops per image on its preprocessing threads and
normalises a whole batch at once on the model's device (:func:`normalize_batch`), so a GPU receives
uint8 pixels, a quarter of the bytes. Both compute ``(pixel - mean * 255) * (1 / (std * 255))`` in
float32 in the same order, so a model sees the same numbers in training and in serving
(``tests/test_model.py`` checks that they are equal).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import cv2
import numpy as np

from src.models.checkpoint import ModelMetadata

if TYPE_CHECKING:  # torch only where tensors are made: crops and normalisation stay NumPy
    import torch

Preprocess = Callable[[np.ndarray], "torch.Tensor"]
Crop = Callable[[np.ndarray], np.ndarray]


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


def normalization(metadata: ModelMetadata) -> tuple[np.ndarray, np.ndarray]:
    """``(mean * 255, 1 / (std * 255))`` per channel, float32: what a uint8 pixel is mapped with."""
    mean = np.asarray(metadata.mean, dtype=np.float32) * np.float32(255.0)
    inv_std = np.float32(1.0) / (np.asarray(metadata.std, dtype=np.float32) * np.float32(255.0))
    return mean, inv_std


def build_crop(metadata: ModelMetadata) -> Crop:
    """RGB uint8 HxWx3 array -> RGB uint8 SxSx3 crop, still unnormalised."""
    size = metadata.input_size

    def crop(rgb: np.ndarray) -> np.ndarray:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB array, got {rgb.shape} {rgb.dtype}")
        return np.ascontiguousarray(resize_center_crop(rgb, size))

    return crop


def build_preprocess(metadata: ModelMetadata) -> Preprocess:
    """RGB uint8 HxWx3 array -> normalised float tensor 3xSxS."""
    crop = build_crop(metadata)
    mean, inv_std = normalization(metadata)

    import torch

    def preprocess(rgb: np.ndarray) -> torch.Tensor:
        normalised = (crop(rgb).astype(np.float32) - mean) * inv_std
        return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))

    return preprocess


def normalize_batch(
    pixels: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor
) -> torch.Tensor:
    """uint8 NxSxSx3 -> float32 Nx3xSxS (a channels-last view, no copy beyond the float cast).

    ``mean`` and ``inv_std`` come from :func:`normalization`, as tensors on ``pixels``' device.
    """
    import torch

    batch = pixels.permute(0, 3, 1, 2).to(torch.float32)
    return batch.sub_(mean.view(1, 3, 1, 1)).mul_(inv_std.view(1, 3, 1, 1))
