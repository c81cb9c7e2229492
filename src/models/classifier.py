"""The timm frame classifier: building it and loading it from a checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn

from src.exceptions import CheckpointError
from src.models.checkpoint import ModelMetadata, read_checkpoint
from src.models.transforms import normalization, normalize_batch

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
    memory_format: torch.memory_format = torch.contiguous_format
    _mean: torch.Tensor = field(init=False, repr=False)
    _inv_std: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        mean, inv_std = normalization(self.metadata)
        self._mean = torch.from_numpy(mean).to(self.device)
        self._inv_std = torch.from_numpy(inv_std).to(self.device)

    def prepare_batch(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """Stack uint8 SxSx3 crops (``build_crop``'s output), move them to the device as uint8
        and normalise them there: the float batch :meth:`predict_proba` takes."""
        pixels = torch.from_numpy(np.stack(crops)).to(self.device, non_blocking=True)
        return normalize_batch(pixels, self._mean, self._inv_std)

    @torch.inference_mode()
    def predict_proba(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities, shape (N, num_labels), on the CPU."""
        batch = batch.to(self.device, non_blocking=True, memory_format=self.memory_format)
        logits = self.model(batch)
        return torch.softmax(logits.float(), dim=1).cpu()

    def fake_probabilities(self, batch: torch.Tensor) -> list[float]:
        return self.predict_proba(batch)[:, self.metadata.fake_index].tolist()


def load_classifier(
    path: str | Path, device: torch.device, *, channels_last: bool = True
) -> FrameClassifier:
    """Load a checkpoint, refusing one whose weights do not match its metadata.

    ``channels_last`` (NHWC) lets oneDNN and cuDNN pick their fast convolution kernels: on the
    benchmark CPU an efficientnet_lite0 batch of 8 ran in 60-64 ms instead of 76-89 ms
    (BENCHMARKS.md, round 3).
    Models without 4-D weights are unaffected.
    """
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
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.eval().to(device).to(memory_format=memory_format)
    logger.info(
        "model loaded",
        extra={
            "architecture": metadata.architecture,
            "version": metadata.version,
            "device": str(device),
            "channels_last": channels_last,
        },
    )
    return FrameClassifier(
        model=model, metadata=metadata, device=device, memory_format=memory_format
    )
