"""What the engine reports as it works: a small protocol, so the engine knows no metrics library.

The HTTP service implements it with Prometheus (``src/serve/metrics.py``); tests and tools may
pass :class:`NullEvents`. Later observers (tracing, drift) hang off the same hooks.
"""

from __future__ import annotations

from typing import Protocol


class EngineEvents(Protocol):
    def rejected(self, reason: str) -> None:
        """Work was refused: ``queue_full`` or ``timeout``."""

    def preprocessed(self, seconds: float) -> None:
        """One image was decoded, checked and cropped."""

    def queue_depth(self, depth: int) -> None:
        """Crops waiting for a forward pass, across batchers."""

    def queue_waited(self, seconds: float) -> None:
        """One crop waited this long before its batch ran."""

    def batch_ran(self, size: int, seconds: float) -> None:
        """One batch went through the model."""

    def readiness(self, ready: bool) -> None:
        """The service started taking work, or stopped (drain, shutdown)."""


class NullEvents:
    """Reports nothing."""

    def rejected(self, reason: str) -> None:
        pass

    def preprocessed(self, seconds: float) -> None:
        pass

    def queue_depth(self, depth: int) -> None:
        pass

    def queue_waited(self, seconds: float) -> None:
        pass

    def batch_ran(self, size: int, seconds: float) -> None:
        pass

    def readiness(self, ready: bool) -> None:
        pass
