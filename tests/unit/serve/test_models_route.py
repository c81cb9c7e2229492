"""``GET /models`` (admin scope): the repository's models and versions, the serving one
``ready`` with all the traffic, and ``DFD_CHECKPOINT_PATH`` seen as a one-model repository."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from src.core.settings import Settings
from src.serve.app import create_app
from tests.helpers.api import AUTH, TEST_KEY, assert_error, started_client

pytestmark = pytest.mark.anyio
ADMIN_KEY = "admin-key-0123456789"
ADMIN = {"X-API-Key": ADMIN_KEY}


async def test_the_one_checkpoint_is_a_one_model_repository(
    settings_factory: Callable[..., Settings], checkpoint_path: Path
) -> None:
    app = create_app(settings_factory(admin_api_keys=[ADMIN_KEY], model_name="detector"))
    async for client in started_client(app):
        assert_error(await client.get("/models"), 401, "unauthorized")
        assert_error(await client.get("/models", headers=AUTH), 403, "forbidden")
        response = await client.get("/models", headers=ADMIN)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["repository"] is None
        (model,) = body["models"]
        assert model["name"] == "detector"
        assert model["versions"] == [
            {
                "version": "test-1",
                "state": "ready",
                "reason": None,
                "files": sorted(p.name for p in checkpoint_path.parent.iterdir()),
                "size_bytes": checkpoint_path.stat().st_size,
            }
        ]
        assert model["traffic"] == {"test-1": 100} and model["shadow"] is None


async def test_a_repository_lists_every_version_and_the_serving_one(
    settings_factory: Callable[..., Settings], checkpoint_path: Path, tmp_path: Path
) -> None:
    root = tmp_path / "repo"
    for model, version in (("detector", "1"), ("detector", "2"), ("other", "7")):
        (root / model / version).mkdir(parents=True)
        shutil.copyfile(checkpoint_path, root / model / version / "model.pt")
    (root / "detector" / "2" / "MODEL_CARD.md").write_text("card")
    settings = settings_factory(admin_api_keys=[ADMIN_KEY], model_name="detector")
    # as from the environment: a repository, and no DFD_CHECKPOINT_PATH
    values = settings.model_dump(exclude={"checkpoint_path", "api_keys"})
    values.update(model_repository=root, model_version="1", api_keys=[TEST_KEY])
    app = create_app(Settings(**values, _env_file=None))  # type: ignore[arg-type]
    async for client in started_client(app):
        body = (await client.get("/models", headers=ADMIN)).json()
        # the Open Inference Protocol knows the served version by its folder's name too
        v2 = (await client.get("/v2/models/detector", headers=AUTH)).json()
        assert v2["versions"] == ["1"]
        ready = await client.get("/v2/models/detector/versions/1/ready", headers=AUTH)
        assert ready.status_code == 200
        other = await client.get("/v2/models/detector/versions/2/ready", headers=AUTH)
        assert other.status_code == 400 and other.json() == {"name": "detector", "ready": False}
        unknown = await client.get("/v2/models/detector/versions/9/ready", headers=AUTH)
        assert unknown.status_code == 404
    assert body["repository"] == str(root)
    models = {model["name"]: model for model in body["models"]}
    assert list(models) == ["detector", "other"]
    detector = models["detector"]
    assert [(v["version"], v["state"]) for v in detector["versions"]] == [
        ("1", "ready"),
        ("2", "available"),
    ]
    assert detector["versions"][1]["files"] == ["MODEL_CARD.md", "model.pt"]
    assert detector["traffic"] == {"1": 100}
    assert models["other"]["traffic"] == {}
    assert [v["state"] for v in models["other"]["versions"]] == ["available"]
