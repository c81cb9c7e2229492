"""Fixtures: a small real checkpoint, settings, and the app built by the factory.

Helpers the tests import live in ``tests/helpers/``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from src.core.settings import Settings
from src.serve.app import create_app
from tests.helpers.api import ROTATED_KEY, TEST_KEY, started_client
from tests.helpers.checkpoints import make_checkpoint


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def checkpoint_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture
def settings_factory(checkpoint_path: Path) -> Callable[..., Settings]:
    def factory(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "checkpoint_path": checkpoint_path,
            "api_keys": [TEST_KEY, ROTATED_KEY],
            "device": "cpu",
            "torch_threads": 1,
            "preprocess_workers": 2,
            "max_upload_bytes": 2 * 1024 * 1024,
            "log_format": "json",
            "_env_file": None,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return factory


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for c in started_client(create_app(settings)):
        yield c
