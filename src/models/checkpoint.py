"""The checkpoint format shared by training and serving.

A checkpoint is one ``torch.save``d dict of tensors and plain Python values, so that it loads
with ``torch.load(weights_only=True)``::

    {"format": "dfd-checkpoint/1", "metadata": {...}, "state_dict": {...}, "training": {...}?}

``metadata`` is everything the service needs to rebuild the model and its preprocessing; the
optional ``training`` entry holds the optimiser, scheduler and RNG state for resuming.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from src.core.errors import CheckpointError
from src.core.labels import FAKE, LABELS, fake_index

if TYPE_CHECKING:  # torch is imported where a checkpoint is read or written, not for metadata
    import torch

CHECKPOINT_FORMAT = "dfd-checkpoint/1"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Calibration(BaseModel):
    """How a checkpoint's ``temperature`` and ``threshold`` were fitted (``src.train.calibrate``).

    ``*_before`` figures are the uncalibrated model's (temperature 1) on the same images, so a
    reader sees what the fit bought without re-running it.
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["temperature_scaling"] = "temperature_scaling"
    split: str
    n: int = Field(ge=1)
    n_fake: int = Field(ge=0)
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    threshold_rule: str
    threshold_before: float = Field(ge=0.0, le=1.0)
    data: str | None = None
    fitted_at: str | None = None


class ModelMetadata(BaseModel):
    """What a checkpoint says about itself.

    ``temperature`` divides the logits before the softmax in every backend (1: as trained);
    checkpoints written before it existed load with 1.
    """

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    architecture: str
    labels: list[str] = Field(default_factory=lambda: list(LABELS))
    input_size: int = Field(default=224, ge=16, le=2048)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    version: str = "0.0.0"
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    temperature: float = Field(default=1.0, gt=0.0, le=1000.0, allow_inf_nan=False)
    calibration: Calibration | None = None
    face_crop: bool = False
    face_margin: float = Field(default=1.3, ge=1.0, le=3.0)
    metrics: dict[str, float] = Field(default_factory=dict)
    train_args: dict[str, Any] = Field(default_factory=dict)
    created_at: str | None = None

    @field_validator("labels")
    @classmethod
    def _labels_have_fake(cls, labels: list[str]) -> list[str]:
        if FAKE not in labels or len(set(labels)) != len(labels) or len(labels) < 2:
            raise ValueError("labels must be distinct, at least two, and include 'fake'")
        return labels

    @property
    def fake_index(self) -> int:
        return fake_index(self.labels)


@dataclass(frozen=True)
class LoadedCheckpoint:
    metadata: ModelMetadata
    state_dict: dict[str, torch.Tensor]
    training: dict[str, Any] | None


def save_checkpoint(
    path: str | Path,
    state_dict: dict[str, torch.Tensor],
    metadata: ModelMetadata,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically: a temp file in the same folder, then ``os.replace``."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "metadata": metadata.model_dump(mode="json"),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    }
    if training is not None:
        payload["training"] = training
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; a non-root server must read it
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Read and check a checkpoint file without building the model."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, unsafe globals
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    try:
        metadata = ModelMetadata.model_validate(payload.get("metadata"))
    except ValidationError as exc:
        raise CheckpointError(f"invalid metadata in {path}: {exc}") from exc
    state_dict = payload.get("state_dict")
    if not isinstance(state_dict, dict) or not state_dict:
        raise CheckpointError(f"{path} has no state_dict")
    training = payload.get("training")
    return LoadedCheckpoint(metadata=metadata, state_dict=state_dict, training=training)
