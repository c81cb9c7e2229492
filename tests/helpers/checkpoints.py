"""A tiny real checkpoint: a timm test model with random weights, for engine and API tests."""

from __future__ import annotations

from pathlib import Path

import torch

from src.models import ModelMetadata, build_model, save_checkpoint

TINY_ARCH = "test_efficientnet"
TINY_SIZE = 32


def make_checkpoint(path: Path, *, seed: int = 0, **metadata: object) -> Path:
    torch.manual_seed(seed)
    model = build_model(TINY_ARCH, num_classes=2)
    values: dict[str, object] = {"version": "test-1", **metadata}
    meta = ModelMetadata(architecture=TINY_ARCH, input_size=TINY_SIZE, **values)  # type: ignore[arg-type]
    return save_checkpoint(path, model.state_dict(), meta)
