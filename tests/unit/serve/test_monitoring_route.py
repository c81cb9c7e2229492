"""GET /monitoring/drift and dfd_drift_psi, through the app: images scored by /infer land in
the model version's drift window and are compared with the checkpoint's reference."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from src.core.settings import Settings
from src.serve.app import create_app
from src.train import reference as reference_cli
from tests.helpers.api import AUTH, assert_error, started_client
from tests.helpers.checkpoints import make_checkpoint
from tests.unit.monitoring.streams import photo_stream

pytestmark = pytest.mark.anyio
ADMIN_KEY = "admin-key-0123456789"
ADMIN = {"X-API-Key": ADMIN_KEY}


@pytest.fixture(scope="module")
def referenced_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint whose reference is measured on unshifted photos."""
    root = tmp_path_factory.mktemp("drift")
    for label, seed in (("real", 11), ("fake", 12)):
        folder = root / "data" / "val" / label
        folder.mkdir(parents=True)
        for index, upload in enumerate(photo_stream(150, seed=seed)):
            (folder / f"{index:03d}.jpg").write_bytes(upload)
    path = make_checkpoint(root / "model.pt")
    assert (
        reference_cli.main(
            ["--checkpoint", str(path), "--data", str(root / "data")], out=lambda _: None
        )
        == 0
    )
    return path


@pytest.fixture
async def client(
    settings_factory: Callable[..., Settings], referenced_checkpoint: Path
) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_factory(
        checkpoint_path=referenced_checkpoint,
        admin_api_keys=[ADMIN_KEY],
        drift_window=200,
        drift_min_samples=100,
        drift_interval_s=3600,  # the test refreshes through the route
    )
    async for c in started_client(create_app(settings)):
        yield c


async def _send(client: httpx.AsyncClient, uploads: list[bytes]) -> None:
    for data in uploads:
        response = await client.post(
            "/infer", content=data, headers={**AUTH, "Content-Type": "image/jpeg"}
        )
        assert response.status_code == 200, response.text


async def test_darkened_traffic_shows_as_brightness_drift(client: httpx.AsyncClient) -> None:
    await _send(client, photo_stream(100, seed=21, darken=0.45))
    response = await client.get("/monitoring/drift", headers=ADMIN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["psi_threshold"] == 0.2 and body["min_samples"] == 100
    (model,) = body["models"]
    assert model["model_version"] == "test-1"
    assert model["samples"] == 100 and model["window_size"] == 200
    assert model["reference"]["split"] == "val" and model["reference"]["n"] == 300
    assert "brightness" in model["drifted"]
    brightness = model["features"]["brightness"]
    assert brightness["psi"] > 0.2 and brightness["ks"] > 0.5
    assert (
        len(brightness["reference"]) == len(brightness["current"]) == (len(brightness["edges"]) + 1)
    )
    assert sum(brightness["current"]) == pytest.approx(1.0)
    assert model["features"]["image_size"]["psi"] < 0.1  # the same size as the reference
    metrics = (await client.get("/metrics")).text
    assert 'dfd_drift_psi{feature="brightness",model_version="test-1"}' in metrics
    assert 'dfd_drift_window_images{model_version="test-1"} 100.0' in metrics


async def test_unshifted_traffic_stays_low(client: httpx.AsyncClient) -> None:
    await _send(client, photo_stream(200, seed=22))
    model = (await client.get("/monitoring/drift", headers=ADMIN)).json()["models"][0]
    assert model["drifted"] == []
    inputs = {"brightness", "contrast", "sharpness", "jpeg_quality", "image_size"}
    assert all(model["features"][name]["psi"] < 0.2 for name in inputs), model["features"]


async def test_before_enough_images_psi_is_null_and_no_series_is_exported(
    client: httpx.AsyncClient,
) -> None:
    await _send(client, photo_stream(3, seed=23))
    model = (await client.get("/monitoring/drift", headers=ADMIN)).json()["models"][0]
    assert model["samples"] == 3
    assert model["features"]["brightness"]["psi"] is None
    assert model["features"]["brightness"]["current"] is not None
    assert "dfd_drift_psi{" not in (await client.get("/metrics")).text


async def test_only_admin_keys_read_it(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/monitoring/drift"), 401, "unauthorized")
    assert_error(await client.get("/monitoring/drift", headers=AUTH), 403, "forbidden")


async def test_with_drift_monitoring_off_the_route_is_404_and_nothing_is_measured(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(admin_api_keys=[ADMIN_KEY], drift_enabled=False)
    app = create_app(settings)
    async for client in started_client(app):
        assert app.state.service.preparer.measure is False
        assert_error(await client.get("/monitoring/drift", headers=ADMIN), 404, "not_found")


def test_a_window_smaller_than_the_minimum_sample_is_refused_at_start(
    settings_factory: Callable[..., Settings],
) -> None:
    with pytest.raises(ValueError, match="DFD_DRIFT_MIN_SAMPLES"):
        settings_factory(drift_window=50, drift_min_samples=100)


async def test_metrics_speak_openmetrics_when_asked(client: httpx.AsyncClient) -> None:
    classic = await client.get("/metrics")
    assert classic.headers["content-type"].startswith("text/plain")
    open_metrics = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert open_metrics.text.rstrip().endswith("# EOF")
