"""Serving crops a face exactly as the training data was cropped: the same detector box, the
checkpoint's ``face_margin`` (not 1.0, not the default 1.3), the same pixels.

Training-side face crops come from ``python -m src.media.frames --faces --margin M``
(:func:`src.media.frames.extract_frames`), whose margin the trainer records in the checkpoint
as ``face_margin``; serving builds its cropper from that metadata
(:func:`src.serve.lifespan.build_face_cropper`). A real face photo is used, so MTCNN finds a
real box.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from src.core.settings import Settings
from src.engine.preprocess import FramePreparer
from src.media.faces import FaceDetector, available_backends, crop_face
from src.media.frames import extract_frames, iter_frames, open_video
from src.media.images import ImageLimits, decode_image
from src.models.checkpoint import ModelMetadata
from src.models.transforms import build_crop
from src.serve.lifespan import build_face_cropper
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.skipif(
    "mtcnn" not in available_backends(), reason="MTCNN weights (facenet-pytorch) not installed"
)

FACE = REPO_ROOT / "examples" / "real_0.jpg"
LIMITS = ImageLimits(
    allowed_formats=frozenset({"JPEG"}),
    max_bytes=10_000_000,
    max_pixels=40_000_000,
    max_side=12_000,
    min_side=16,
)
# Margins a checkpoint may record; none is 1.0 or the 1.3 default, so ignoring the recorded
# margin (either way) changes the crop.
MARGINS = [1.15, 1.6, 2.0]


def face_metadata(margin: float) -> ModelMetadata:
    return ModelMetadata(architecture="test_efficientnet", face_crop=True, face_margin=margin)


def largest_box(rgb: np.ndarray) -> tuple[int, int, int, int]:
    boxes = FaceDetector().detect(rgb)
    assert boxes, "no face found in the example photo"
    return max(boxes, key=lambda b: b[2] * b[3])


@pytest.fixture(scope="module")
def face_rgb() -> np.ndarray:
    return decode_image(FACE.read_bytes(), LIMITS)


@pytest.mark.parametrize("margin", MARGINS)
def test_serving_crop_is_the_training_crop_for_the_checkpoints_margin(
    settings_factory: Callable[..., Settings], face_rgb: np.ndarray, margin: float
) -> None:
    cropper = build_face_cropper(settings_factory(face_crop="auto"), face_metadata(margin))
    assert cropper is not None, "the checkpoint asks for face crops"
    served = cropper(face_rgb)
    assert served is not None

    box = largest_box(face_rgb)
    trained = crop_face(face_rgb, box, margin=margin)
    side = round(margin * max(box[2], box[3]))
    assert served.shape == trained.shape == (side, side, 3), "not the checkpoint's margin"
    assert np.array_equal(served, trained), "same box and margin, different pixels"
    for wrong in {1.0, 1.3} - {margin}:
        assert crop_face(face_rgb, box, margin=wrong).shape != served.shape


@pytest.mark.parametrize("margin", [1.6])
def test_serving_crop_equals_the_frame_extraction_tools_crop(
    settings_factory: Callable[..., Settings], tmp_path: Path, face_rgb: np.ndarray, margin: float
) -> None:
    """The tool that makes training crops from videos and the service agree on the same frame."""
    video = tmp_path / "clip.avi"
    height, width = face_rgb.shape[:2]
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (width, height))
    assert writer.isOpened(), "OpenCV cannot write MJPG here"
    for _ in range(3):
        writer.write(cv2.cvtColor(face_rgb, cv2.COLOR_RGB2BGR))
    writer.release()

    result = extract_frames(video, num_frames=1, faces=True, margin=margin, size=None)
    (record,) = result.frames
    assert record.face_found and record.image is not None
    cap, _, _ = open_video(video)
    try:
        ((_, frame),) = list(iter_frames(cap, [record.index]))
    finally:
        cap.release()
    assert frame is not None

    cropper = build_face_cropper(settings_factory(face_crop="on"), face_metadata(margin))
    assert cropper is not None
    served = cropper(frame)
    assert served is not None
    assert np.array_equal(served, record.image)


def test_the_whole_serving_preprocessing_matches_training(
    settings_factory: Callable[..., Settings], face_rgb: np.ndarray
) -> None:
    """Bytes in -> decode -> face crop -> resize-and-crop: the crop the model is trained on."""
    metadata = face_metadata(1.6)
    cropper = build_face_cropper(settings_factory(face_crop="auto"), metadata)
    served = FramePreparer(metadata, LIMITS, cropper).from_bytes(FACE.read_bytes())
    trained = build_crop(metadata)(crop_face(face_rgb, largest_box(face_rgb), margin=1.6))
    assert served.shape == (metadata.input_size, metadata.input_size, 3)
    assert np.array_equal(served, trained)
