"""Preprocessing shared by training and serving: face detection/cropping and video frames."""

from src.preprocess.faces import (
    Face,
    FaceDetector,
    NoFaceDetectorError,
    available_backends,
    crop_box,
    crop_face,
    largest_face_crop,
)

__all__ = [
    "Face",
    "FaceDetector",
    "NoFaceDetectorError",
    "available_backends",
    "crop_box",
    "crop_face",
    "largest_face_crop",
]
