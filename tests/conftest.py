"""Shared fixtures: a small real checkpoint, settings, and the app built by the factory."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from PIL import Image

from src.config import Settings
from src.models import ModelMetadata, build_model, save_checkpoint
from src.serve.app import create_app

TEST_KEY = "test-key-0123456789"
ROTATED_KEY = "rotated-key-0123456789"
TINY_ARCH = "test_efficientnet"
TINY_SIZE = 32


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_checkpoint(path: Path, *, seed: int = 0, **metadata: object) -> Path:
    torch.manual_seed(seed)
    model = build_model(TINY_ARCH, num_classes=2)
    meta = ModelMetadata(architecture=TINY_ARCH, input_size=TINY_SIZE, version="test-1", **metadata)  # type: ignore[arg-type]
    return save_checkpoint(path, model.state_dict(), meta)


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


async def started_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for c in started_client(create_app(settings)):
        yield c


def image_bytes(
    fmt: str = "JPEG",
    size: tuple[int, int] = (64, 48),
    mode: str = "RGB",
    seed: int = 0,
    **save_kwargs: object,
) -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        array = rng.integers(0, 65535, size=(size[1], size[0]), dtype=np.uint16)
        image = Image.fromarray(array)
    else:
        array = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
        image = Image.fromarray(array)
        if mode != "RGB":
            image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_kwargs)
    return buffer.getvalue()


def infer_files(data: bytes, name: str = "frame.jpg") -> dict[str, tuple[str, bytes, str]]:
    return {"file": (name, data, "application/octet-stream")}
