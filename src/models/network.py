"""The timm network behind every backend, built by name with no hub download."""

from __future__ import annotations

import timm
from torch import nn

from src.core.errors import CheckpointError
from src.core.labels import LABELS


def build_model(architecture: str, num_classes: int = len(LABELS)) -> nn.Module:
    """A timm model with a fresh ``num_classes`` head and no hub download."""
    try:
        return timm.create_model(architecture, pretrained=False, num_classes=num_classes)
    except RuntimeError as exc:  # timm raises RuntimeError for unknown names
        raise CheckpointError(f"unknown architecture {architecture!r}: {exc}") from exc
