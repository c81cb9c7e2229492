"""Training-state checkpoints on top of :mod:`src.models.checkpoint`.

``last.pt`` carries a ``training`` entry (optimiser, scheduler, grad scaler, epoch, best score and
every RNG state) so a run can resume; ``best.pt`` carries only weights and metadata, which is all
the service needs. Everything stored is a tensor or a plain Python value, so both load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from src.core.errors import CheckpointError
from src.models.checkpoint import ModelMetadata, read_checkpoint, save_checkpoint

LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
TRAINING_STATE_VERSION = 1


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as tensors and plain lists."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [
            str(np_kind),
            np.asarray(np_keys).tolist(),
            int(np_pos),
            int(np_has_gauss),
            float(np_gauss),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state`; missing entries are left alone."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    if "numpy" in state:
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state(
            (kind, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(gauss))
        )
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def finite_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Drop NaN/inf values: checkpoint metadata is stored as JSON, which has no NaN."""
    return {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}


@dataclass
class TrainingState:
    """What ``last.pt`` needs beyond the weights to continue a run."""

    epoch: int  # epochs completed
    global_step: int
    best_score: float | None
    best_epoch: int | None
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    rng: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": TRAINING_STATE_VERSION,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "rng": self.rng,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> TrainingState:
        if payload.get("version") != TRAINING_STATE_VERSION:
            raise CheckpointError(f"unsupported training state version {payload.get('version')}")
        return cls(
            epoch=int(payload["epoch"]),
            global_step=int(payload["global_step"]),
            best_score=payload.get("best_score"),
            best_epoch=payload.get("best_epoch"),
            optimizer=payload["optimizer"],
            scheduler=payload.get("scheduler"),
            scaler=payload.get("scaler"),
            rng=payload.get("rng") or {},
        )


@dataclass(frozen=True)
class ResumePoint:
    metadata: ModelMetadata
    state_dict: dict[str, torch.Tensor]
    training: TrainingState


def save_last(
    path: str | Path, model: nn.Module, metadata: ModelMetadata, training: TrainingState
) -> Path:
    """Weights, metadata and full training state (atomic)."""
    return save_checkpoint(path, model.state_dict(), metadata, training=training.to_dict())


def save_best(path: str | Path, model: nn.Module, metadata: ModelMetadata) -> Path:
    """Weights and metadata only: the file to ship (atomic)."""
    return save_checkpoint(path, model.state_dict(), metadata, training=None)


def resolve_resume(resume: str | None, out_dir: Path) -> Path | None:
    """``None`` -> no resume; ``"auto"`` -> ``out_dir/last.pt`` if it exists; else the path."""
    if not resume:
        return None
    if resume == "auto":
        candidate = out_dir / LAST_NAME
        return candidate if candidate.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"resume checkpoint not found: {path}")
    return path


def load_resume_point(path: str | Path) -> ResumePoint:
    """Read a ``last.pt``; a checkpoint without training state cannot be resumed."""
    checkpoint = read_checkpoint(path)
    if checkpoint.training is None:
        raise CheckpointError(
            f"{path} has no training state (a best/shipping checkpoint?); resume from last.pt"
        )
    return ResumePoint(
        metadata=checkpoint.metadata,
        state_dict=checkpoint.state_dict,
        training=TrainingState.from_dict(checkpoint.training),
    )
