"""The frame classifier, its checkpoint format and its preprocessing."""

from src.models.checkpoint import (
    CHECKPOINT_FORMAT,
    LoadedCheckpoint,
    ModelMetadata,
    read_checkpoint,
    save_checkpoint,
)
from src.models.classifier import FrameClassifier, build_model, load_classifier
from src.models.transforms import build_crop, build_preprocess, resize_center_crop

__all__ = [
    "CHECKPOINT_FORMAT",
    "FrameClassifier",
    "LoadedCheckpoint",
    "ModelMetadata",
    "build_crop",
    "build_model",
    "build_preprocess",
    "load_classifier",
    "read_checkpoint",
    "resize_center_crop",
    "save_checkpoint",
]
