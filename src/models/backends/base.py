"""What the engine needs of a model runtime: the ``Backend`` protocol and its per-item result.

A backend takes a batch of uint8 SxSx3 crops (``transforms.build_crop``'s output) and returns one
result per crop; it owns normalisation, the device and the runtime. The engine calls it only from
the model thread. Torch is one implementation (``backends/torch.py``); an ONNX Runtime or an
explaining backend is one more class with the same four members.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from src.models.checkpoint import ModelMetadata


@dataclass(frozen=True, slots=True)
class FrameScore:
    """One crop's result: the probability that it is fake."""

    fake_prob: float


@dataclass(frozen=True)
class BackendInfo:
    """How a backend describes itself to readiness, metrics and logs."""

    backend: str
    device: str
    metadata: ModelMetadata


@runtime_checkable
class Backend(Protocol):
    """A loaded model that scores uint8 crops. Loading is its module's ``load`` function."""

    @property
    def metadata(self) -> ModelMetadata: ...

    def describe(self) -> BackendInfo: ...

    def warm_up(self, batch_sizes: Iterable[int]) -> None:
        """Run blank batches of these sizes once, so the first request pays no set-up cost."""
        ...

    def score(self, crops: Sequence[np.ndarray]) -> Sequence[FrameScore]:
        """One result per crop, in order."""
        ...


class BatchScorer(ABC):
    """What the backends share: warm-up on blank crops, and one :class:`FrameScore` per crop from
    a runtime's normalised batch (``prepare_batch``) and fake probabilities.

    Every runtime's ``predict_proba`` is ``softmax(logits / temperature)``: the checkpoint's
    calibrated temperature (``python -m src.train.calibrate``) is applied in the one place all
    callers go through, so serving, export parity, evaluation and ``src.predict`` agree.
    """

    metadata: ModelMetadata

    @property
    def temperature(self) -> float:
        """The divisor of the logits before the softmax (1.0 for an uncalibrated checkpoint)."""
        return self.metadata.temperature

    @abstractmethod
    def prepare_batch(self, crops: Sequence[np.ndarray]) -> Any:
        """uint8 SxSx3 crops -> the runtime's normalised batch."""

    @abstractmethod
    def fake_probabilities(self, batch: Any) -> list[float]:
        """The fake probability of each item of a prepared batch."""

    def warm_up(self, batch_sizes: Iterable[int]) -> None:
        size = self.metadata.input_size
        blank = np.zeros((size, size, 3), dtype=np.uint8)
        for batch in sorted(set(batch_sizes)):
            self.score([blank] * batch)

    def score(self, crops: Sequence[np.ndarray]) -> list[FrameScore]:
        probabilities = self.fake_probabilities(self.prepare_batch(crops))
        if len(probabilities) != len(crops):
            raise RuntimeError(f"model returned {len(probabilities)} outputs for {len(crops)}")
        return [FrameScore(fake_prob=p) for p in probabilities]
