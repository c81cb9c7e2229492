"""The PyTorch backend: a timm model in eval mode on its device (CUDA when present, else CPU)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from src.core.errors import CheckpointError
from src.core.labels import fake_column
from src.models.backends.base import BackendInfo, BatchScorer
from src.models.checkpoint import ModelMetadata, read_checkpoint
from src.models.network import build_model
from src.models.transforms import normalization, normalize_batch

logger = logging.getLogger(__name__)
NAME = "torch"


@dataclass
class TorchBackend(BatchScorer):
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

    # ------------------------------------------------------------------ Backend
    def describe(self) -> BackendInfo:
        return BackendInfo(backend=NAME, device=str(self.device), metadata=self.metadata)

    # ------------------------------------------------------------------ tensors
    def prepare_batch(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """Stack uint8 SxSx3 crops, move them to the device as uint8 and normalise them there:
        the float batch :meth:`predict_proba` takes (a GPU receives a quarter of the bytes)."""
        pixels = torch.from_numpy(np.stack(crops)).to(self.device, non_blocking=True)
        return normalize_batch(pixels, self._mean, self._inv_std)

    @torch.inference_mode()
    def predict_proba(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities of the temperature-scaled logits, shape (N, num_labels), on the
        CPU."""
        batch = batch.to(self.device, non_blocking=True, memory_format=self.memory_format)
        logits = self.model(batch)
        return torch.softmax(logits.float() / self.temperature, dim=1).cpu()

    def fake_probabilities(self, batch: torch.Tensor) -> list[float]:
        probabilities: list[float] = fake_column(
            self.predict_proba(batch), self.metadata.labels
        ).tolist()
        return probabilities


def load(
    path: str | Path,
    device: torch.device | str = "cpu",
    *,
    threads: int | None = None,
    channels_last: bool = True,
) -> TorchBackend:
    """Load a checkpoint, refusing one whose weights do not match its metadata.

    ``threads`` sets torch's intra-op thread count (call this on the thread that will run the
    model). ``channels_last`` (NHWC) lets oneDNN and cuDNN pick their fast convolution kernels
    (BENCHMARKS.md, round 3); models without 4-D weights are unaffected.
    """
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
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
            "backend": NAME,
            "architecture": metadata.architecture,
            "version": metadata.version,
            "device": str(device),
            "channels_last": channels_last,
        },
    )
    return TorchBackend(model=model, metadata=metadata, device=device, memory_format=memory_format)
