"""Bytes or pixels in, the uint8 crop a backend scores out: decode, face crop, resize-and-crop.

The same steps as training (``transforms.build_crop`` and the face crop recorded in the
checkpoint). Runs on the preprocessing threads, never on the event loop or the model thread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from src.core.errors import NoFaceDetectedError
from src.media.faces import Face, crop_face
from src.media.images import ImageLimits, decode_image
from src.models.checkpoint import ModelMetadata
from src.models.transforms import build_crop
from src.monitoring.features import Features, measure

logger = logging.getLogger(__name__)


class FaceFinding(Protocol):
    """What the face crop needs of a detector (``src.media.faces.FaceDetector``)."""

    def detect_faces(self, rgb: np.ndarray) -> list[Face]: ...

    def detect_largest(self, rgb: np.ndarray) -> Face | None: ...


class FaceCropper:
    """The training face crop: find the face, cut the square around it with the checkpoint's
    margin. Called on an image, it crops the largest face (None when there is none); a video
    finds every face per frame, follows one person, and crops that person's face."""

    def __init__(self, detector: FaceFinding, margin: float) -> None:
        self.detector = detector
        self.margin = margin

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        face = self.detector.detect_largest(rgb)
        return None if face is None else self.crop(rgb, face)

    def faces(self, rgb: np.ndarray) -> list[Face]:
        """Every face in ``rgb``, largest first."""
        return self.detector.detect_faces(rgb)

    def crop(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        return crop_face(rgb, face.box, margin=self.margin)


FACE_CROP_MODES = ("auto", "on", "off")


def face_cropper_for(metadata: ModelMetadata, mode: str = "auto") -> FaceCropper | None:
    """The training face crop when ``mode`` (``DFD_FACE_CROP``'s values: ``on``, ``off``, or
    ``auto``: as the checkpoint was trained) asks for it, with the checkpoint's margin. The one
    place serving, the offline tools and the reference statistics get it from."""
    if mode not in FACE_CROP_MODES:
        raise ValueError(f"face crop must be one of {', '.join(FACE_CROP_MODES)}, not {mode!r}")
    enabled = metadata.face_crop if mode == "auto" else mode == "on"
    if not enabled:
        return None
    from src.media.faces import FaceDetector

    return FaceCropper(FaceDetector(), margin=metadata.face_margin)


@dataclass(frozen=True)
class Stage:
    """One step of preparing an image, in wall-clock nanoseconds (a trace span, later)."""

    name: str
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class PreparedImage:
    """The crop, and what the drift monitor and the trace want to know of how it was made."""

    crop: np.ndarray
    features: Features | None  # None unless the preparer measures (drift monitoring on)
    stages: tuple[Stage, ...]


class FramePreparer:
    def __init__(
        self,
        metadata: ModelMetadata,
        limits: ImageLimits,
        face_cropper: FaceCropper | None = None,
        *,
        measure: bool = False,
    ) -> None:
        """``measure``: compute the drift features (``src.monitoring.features``) of each image
        prepared with :meth:`prepare_bytes` / :meth:`prepare_array`."""
        self.limits = limits
        self._crop = build_crop(metadata)
        self.face_cropper = face_cropper
        self.measure = measure

    def from_bytes(self, data: bytes) -> np.ndarray:
        """The crop alone (decode, face crop, resize-and-crop)."""
        return self.prepare_bytes(data).crop

    def from_array(self, rgb: np.ndarray) -> np.ndarray:
        """The crop alone, from an image already decoded (a video frame)."""
        return self.prepare_array(rgb).crop

    def resize_crop(self, rgb: np.ndarray) -> np.ndarray:
        """The model's resize-and-crop alone (for a face already cut out, or no face crop)."""
        return self._crop(rgb)

    def prepare_bytes(self, data: bytes) -> PreparedImage:
        """The crop, with the stages' times (for a trace) and, when measuring, the features."""
        started = time.time_ns()
        rgb = decode_image(data, self.limits)
        decoded = Stage("decode", started, time.time_ns())
        logger.debug("decoded a %dx%d image", rgb.shape[1], rgb.shape[0])
        return self._prepared(rgb, data, [decoded])

    def prepare_array(self, rgb: np.ndarray) -> PreparedImage:
        """As :meth:`prepare_bytes`, for an image already decoded (no compression level)."""
        return self._prepared(rgb, None, [])

    def _prepared(self, rgb: np.ndarray, data: bytes | None, stages: list[Stage]) -> PreparedImage:
        face: Face | None = None
        region = rgb
        if self.face_cropper is not None:
            started = time.time_ns()
            face = self.face_cropper.detector.detect_largest(rgb)
            stages.append(Stage("face_detection", started, time.time_ns()))
            if face is None:
                raise NoFaceDetectedError("no face was found in the image, so it was not scored")
            region = self.face_cropper.crop(rgb, face)
        crop = self._crop(region)
        features = measure(crop, rgb.shape, face, data) if self.measure else None
        return PreparedImage(crop, features, tuple(stages))
