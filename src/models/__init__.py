"""The frame classifier: its checkpoint format, preprocessing, network and backends."""

from src.models.checkpoint import (
    CHECKPOINT_FORMAT,
    LoadedCheckpoint,
    ModelMetadata,
    read_checkpoint,
    save_checkpoint,
)
from src.models.transforms import build_crop, build_preprocess, resize_center_crop


def __getattr__(name: str) -> object:
    """``build_model`` is imported on first use: it needs torch and timm, which a torch-free
    backend (ONNX Runtime) never loads."""
    if name == "build_model":
        from src.models.network import build_model

        return build_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
