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
def settings_factory(checkpoint_path: Path, tmp_path: Path) -> Callable[..., Settings]:
    def factory(**overrides: object) -> Settings:
        data = tmp_path / "data"  # the store's files, each test its own (never the repo's data/)
        values: dict[str, object] = {
            "checkpoint_path": checkpoint_path,
            "database_url": f"sqlite:///{data / 'store.db'}",
            "spool_path": data / "spool" / "results.jsonl",
            "jobs_dir": data / "jobs",
            "record_dir": data / "recordings",
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
def make_client(
    settings_factory: Callable[..., Settings],
) -> Callable[..., AsyncIterator[httpx.AsyncClient]]:
    """``async for client in make_client(**setting overrides)``: a started app's client."""

    def make(**overrides: object) -> AsyncIterator[httpx.AsyncClient]:
        return started_client(create_app(settings_factory(**overrides)))

    return make


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for c in started_client(create_app(settings)):
        yield c
