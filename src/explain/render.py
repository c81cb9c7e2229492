"""Heat maps for people and for JSON: the overlay PNG and the pooled grid.

Pure NumPy/OpenCV (no torch), so it runs on any thread.
"""

from __future__ import annotations

import cv2
import numpy as np

MAX_GRID_SIDE = 32
MIN_OVERLAY_SIDE = 256
HEAT_OPACITY = 0.45


def upsample(heat: np.ndarray, side: int) -> np.ndarray:
    """The heat map stretched over a ``side`` x ``side`` square (bilinear, as Grad-CAM shows)."""
    if heat.shape == (side, side):
        return heat.astype(np.float32)
    return cv2.resize(heat.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR)


def grid(heat: np.ndarray, max_side: int = MAX_GRID_SIDE) -> list[list[float]]:
    """The heat map as rows of values in [0, 1], top row first: a method's own grid when it is
    coarse (Grad-CAM), else area-averaged down to ``max_side`` cells a side."""
    if max(heat.shape) > max_side:
        heat = cv2.resize(
            heat.astype(np.float32), (max_side, max_side), interpolation=cv2.INTER_AREA
        )
    peak = float(heat.max()) if heat.size else 0.0
    scaled = heat / peak if peak > 0 else np.zeros_like(heat)
    return [[round(float(v), 4) for v in row] for row in scaled]


def overlay(crop: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """RGB uint8: the crop enlarged to at least ``MIN_OVERLAY_SIDE`` px with the heat map over it
    in the JET colour map (red = most evidence of a fake)."""
    side = max(MIN_OVERLAY_SIDE, crop.shape[0])
    image = cv2.resize(crop, (side, side), interpolation=cv2.INTER_CUBIC)
    levels = np.clip(upsample(heat, side) * 255.0, 0, 255).astype(np.uint8)
    colours = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    weight = (HEAT_OPACITY * (0.35 + 0.65 * levels.astype(np.float32) / 255.0))[..., None]
    blended = image.astype(np.float32) * (1.0 - weight) + colours.astype(np.float32) * weight
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def png(rgb: np.ndarray) -> bytes:
    """RGB uint8 -> PNG bytes."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return encoded.tobytes()


def overlay_png(crop: np.ndarray, heat: np.ndarray) -> bytes:
    return png(overlay(crop, heat))
