"""Fixtures of the engine's tests: services on the tiny checkpoint, stopped after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from src.engine.service import EngineConfig, InferenceService
from src.media.images import ImageLimits
from src.models.backends import Backend
from src.serve.metrics import Metrics
from tests.helpers.backends import ScriptedBackend

LIMITS = ImageLimits(frozenset({"JPEG", "PNG"}), 1_000_000, 10_000_000, 5000, 8)


@pytest.fixture
async def make_service(checkpoint_path: Path) -> AsyncIterator[Callable[..., InferenceService]]:
    """``make_service(backend=None, **EngineConfig fields)``: a service (not started) on
    ``backend`` (default: a ScriptedBackend of the tiny checkpoint), two preprocessing threads."""
    services: list[InferenceService] = []

    def factory(backend: Backend | None = None, **config: object) -> InferenceService:
        service = InferenceService(
            backend or ScriptedBackend(checkpoint_path),
            EngineConfig(**{"preprocess_workers": 2, **config}),  # type: ignore[arg-type]
            LIMITS,
            Metrics(),
        )
        services.append(service)
        return service

    yield factory
    for service in services:
        await service.stop()
