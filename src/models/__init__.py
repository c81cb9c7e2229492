"""The frame classifier: its checkpoint format, preprocessing, network and backends."""

from src.models.checkpoint import (
    CHECKPOINT_FORMAT,
    LoadedCheckpoint,
    ModelMetadata,
    read_checkpoint,
    save_checkpoint,
)
from src.models.network import build_model
from src.models.transforms import build_crop, build_preprocess, resize_center_crop

__all__ = [
    "CHECKPOINT_FORMAT",
    "LoadedCheckpoint",
    "ModelMetadata",
    "build_crop",
    "build_model",
    "build_preprocess",
    "read_checkpoint",
    "resize_center_crop",
    "save_checkpoint",
]
