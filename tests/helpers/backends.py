"""Test doubles of the ``Backend`` protocol (they implement it; they subclass nothing)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from src.models.backends import torch as torch_backend
from src.models.backends.base import BackendInfo, FrameScore
from src.models.checkpoint import ModelMetadata


class ScriptedBackend:
    """The real torch backend of a checkpoint, made slow or failing on demand, recording what it
    was asked to score and on which thread."""

    def __init__(self, checkpoint_path: Path) -> None:
        self.inner = torch_backend.load(checkpoint_path, "cpu")
        self.delay_s = 0.0
        self.poison_mean_above: float | None = None
        self.batches: list[int] = []
        self.threads: list[str] = []

    @property
    def metadata(self) -> ModelMetadata:
        return self.inner.metadata

    def describe(self) -> BackendInfo:
        return BackendInfo(backend="scripted", device="cpu", metadata=self.metadata)

    def warm_up(self, batch_sizes: Iterable[int]) -> None:
        self.inner.warm_up(batch_sizes)

    def score(self, crops: Sequence[np.ndarray]) -> Sequence[FrameScore]:
        self.batches.append(len(crops))
        self.threads.append(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        limit = self.poison_mean_above
        if limit is not None and any(float(crop.mean()) > limit for crop in crops):
            raise RuntimeError("poisoned input")
        return self.inner.score(crops)
