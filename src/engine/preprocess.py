"""Bytes or pixels in, the uint8 crop a backend scores out: decode, face crop, resize-and-crop.

The same steps as training (``transforms.build_crop`` and the face crop recorded in the
checkpoint). Runs on the preprocessing threads, never on the event loop or the model thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from src.core.errors import NoFaceDetectedError
from src.media.images import ImageLimits, decode_image
from src.models.checkpoint import ModelMetadata
from src.models.transforms import build_crop

logger = logging.getLogger(__name__)
FaceCropper = Callable[[np.ndarray], np.ndarray | None]


class FramePreparer:
    def __init__(
        self,
        metadata: ModelMetadata,
        limits: ImageLimits,
        face_cropper: FaceCropper | None = None,
    ) -> None:
        self.limits = limits
        self._crop = build_crop(metadata)
        self._face_cropper = face_cropper

    def from_bytes(self, data: bytes) -> np.ndarray:
        rgb = decode_image(data, self.limits)
        logger.debug("decoded a %dx%d image", rgb.shape[1], rgb.shape[0])
        return self.from_array(rgb)

    def from_array(self, rgb: np.ndarray) -> np.ndarray:
        if self._face_cropper is not None:
            face = self._face_cropper(rgb)
            if face is None:
                raise NoFaceDetectedError("no face was found in the image, so it was not scored")
            rgb = face
        return self._crop(rgb)
