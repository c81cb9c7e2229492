"""The timm frame classifier: building it and loading it from a checkpoint."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from src.exceptions import CheckpointError
from src.models.checkpoint import ModelMetadata, read_checkpoint

logger = logging.getLogger(__name__)


def build_model(architecture: str, num_classes: int = 2) -> nn.Module:
    """A timm model with a fresh ``num_classes`` head and no hub download."""
    try:
        return timm.create_model(architecture, pretrained=False, num_classes=num_classes)
    except RuntimeError as exc:  # timm raises RuntimeError for unknown names
        raise CheckpointError(f"unknown architecture {architecture!r}: {exc}") from exc


@dataclass
class FrameClassifier:
    """A model in eval mode on its device, with the metadata it was saved with."""

    model: nn.Module
    metadata: ModelMetadata
    device: torch.device

    @torch.inference_mode()
    def predict_proba(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities, shape (N, num_labels), on the CPU."""
        logits = self.model(batch.to(self.device, non_blocking=True))
        return torch.softmax(logits.float(), dim=1).cpu()

    def fake_probabilities(self, batch: torch.Tensor) -> list[float]:
        return self.predict_proba(batch)[:, self.metadata.fake_index].tolist()


def load_classifier(path: str | Path, device: torch.device) -> FrameClassifier:
    """Load a checkpoint, refusing one whose weights do not match its metadata."""
    checkpoint = read_checkpoint(path)
    metadata = checkpoint.metadata
    model = build_model(metadata.architecture, num_classes=len(metadata.labels))
    try:
        model.load_state_dict(checkpoint.state_dict, strict=True)
    except RuntimeError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else "state_dict mismatch"
        raise CheckpointError(
            f"checkpoint {path} does not match its metadata "
            f"(architecture={metadata.architecture}, labels={metadata.labels}): {first_line}"
        ) from exc
    model.eval().to(device)
    logger.info(
        "model loaded",
        extra={
            "architecture": metadata.architecture,
            "version": metadata.version,
            "device": str(device),
        },
    )
    return FrameClassifier(model=model, metadata=metadata, device=device)
