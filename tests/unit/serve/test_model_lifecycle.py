"""The model lifecycle through the admin API, in-process: load and unload versions while one
serves, traffic weights, pinning with ``X-Model-Version``, rollback, a shadow and its
comparison, failed loads, the resident limit, metrics by version, and zero failed requests at
c=16 while versions are switched and rolled back."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import torch

from src.core.settings import Settings
from src.models import ModelMetadata, build_model, save_checkpoint
from src.serve.app import create_app
from src.serve.lifecycle import ROUTING_FILE, ModelManager
from tests.helpers.api import AUTH, ROTATED_KEY, TEST_KEY, assert_error, started_client
from tests.helpers.checkpoints import TINY_ARCH, TINY_SIZE, make_checkpoint
from tests.helpers.images import image_bytes, infer_files

pytestmark = pytest.mark.anyio
ADMIN_KEY = "admin-key-0123456789"
ADMIN = {"X-API-Key": ADMIN_KEY}
MODEL = "detector"


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """Three versions of one model: 1 and 2 (other weights), 3 a corrupt file."""
    root = tmp_path / "repo"
    for version, seed in (("1", 0), ("2", 1)):
        make_checkpoint(root / MODEL / version / "model.pt", seed=seed, version=f"v{version}")
    (root / MODEL / "3").mkdir(parents=True)
    (root / MODEL / "3" / "model.pt").write_bytes(b"not a checkpoint")
    return root


@pytest.fixture
def repo_settings(
    settings_factory: Callable[..., Settings], repository: Path
) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        values = settings_factory(admin_api_keys=[ADMIN_KEY]).model_dump(
            exclude={"checkpoint_path"}
        )
        values.update(
            model_repository=repository,
            model_name=MODEL,
            model_version="1",
            store="off",
            cache="off",
            routing_sync_s=0,
            **overrides,
        )
        return Settings(**values, _env_file=None)  # type: ignore[arg-type]

    return make


async def clients(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for client in started_client(create_app(settings)):
        yield client


def manager(client: httpx.AsyncClient) -> ModelManager:
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    models: ModelManager = transport.app.state.models  # type: ignore[attr-defined]
    return models


async def infer(client: httpx.AsyncClient, **headers: str) -> httpx.Response:
    return await client.post(
        "/infer", files=infer_files(image_bytes()), headers={**AUTH, **headers}
    )


async def models_view(client: httpx.AsyncClient) -> dict[str, object]:
    response = await client.get("/models", headers=ADMIN)
    assert response.status_code == 200, response.text
    (model,) = [m for m in response.json()["models"] if m["name"] == MODEL]
    return dict(model)


async def test_load_pin_split_roll_back_and_unload(repo_settings: Callable[..., Settings]) -> None:
    async for client in clients(repo_settings()):
        first = await infer(client)
        assert first.status_code == 200 and first.json()["model_version"] == "1"
        # a version not loaded cannot be pinned
        assert_error(await infer(client, **{"X-Model-Version": "2"}), 404, "not_found")

        loaded = await client.post(f"/models/{MODEL}/versions/2/load", headers=ADMIN)
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["state"] == "ready"
        view = await models_view(client)
        states = {v["version"]: v["state"] for v in view["versions"]}  # type: ignore[attr-defined]
        assert states == {"1": "ready", "2": "ready", "3": "available"}
        assert view["traffic"] == {"1": 100}  # loading gives no traffic

        pinned = await infer(client, **{"X-Model-Version": "2"})
        assert pinned.json()["model_version"] == "2"
        assert pinned.json()["fake_prob"] != first.json()["fake_prob"]  # other weights

        moved = await client.put(f"/models/{MODEL}/traffic", json={"2": 100}, headers=ADMIN)
        assert moved.status_code == 200, moved.text
        assert moved.json()["traffic"] == {"2": 100}
        assert moved.json()["previous_traffic"] == {"1": 100}
        assert (await infer(client)).json()["model_version"] == "2"
        ready = (await client.get("/ready")).json()
        assert ready["model_version"] == "2"

        back = await client.post(f"/models/{MODEL}/rollback", headers=ADMIN)
        assert back.status_code == 200 and back.json()["traffic"] == {"1": 100}
        assert (await infer(client)).json()["model_version"] == "1"
        assert_error(await client.post(f"/models/{MODEL}/rollback", headers=ADMIN), 409, "conflict")

        unloaded = await client.post(f"/models/{MODEL}/versions/2/unload", headers=ADMIN)
        assert unloaded.status_code == 200 and unloaded.json()["state"] == "available"
        assert "2" not in manager(client).registry.loaded
        assert_error(await infer(client, **{"X-Model-Version": "2"}), 404, "not_found")
        # the only loaded version cannot go
        only = await client.post(f"/models/{MODEL}/versions/1/unload", headers=ADMIN)
        assert_error(only, 409, "conflict")
        metrics = (await client.get("/metrics")).text
        assert 'dfd_predictions_total{label="fake",model_version="2"}' in metrics or (
            'dfd_predictions_total{label="real",model_version="2"}' in metrics
        )
        assert 'dfd_fake_probability_count{model_version="2"}' in metrics
        assert 'dfd_model_inference_seconds_count{model_version="2"}' in metrics
        assert (
            'dfd_model_info{architecture="test_efficientnet",backend="torch",device="cpu",version="1"}'
            in metrics
        )
        assert 'version="2"}' not in metrics.split("dfd_model_info", 2)[-1].split("# HELP")[0]


async def test_bad_admin_requests_are_refused_in_the_one_error_shape(
    repo_settings: Callable[..., Settings],
) -> None:
    async for client in clients(repo_settings()):
        url = f"/models/{MODEL}"
        assert_error(await client.post(f"{url}/versions/2/load", headers=AUTH), 403, "forbidden")
        assert_error(await client.post(f"{url}/versions/2/load"), 401, "unauthorized")
        assert_error(
            await client.post("/models/other/versions/1/load", headers=ADMIN), 404, "not_found"
        )
        assert_error(await client.post(f"{url}/versions/9/load", headers=ADMIN), 404, "not_found")
        assert_error(await client.post(f"{url}/versions/9/unload", headers=ADMIN), 404, "not_found")
        # weights over an unloaded version, not summing to 100, or not integers
        for body in ({"1": 90, "2": 10}, {"1": 90}, {"1": 100.5}, {}, {"1": -5, "2": 105}):
            assert_error(
                await client.put(f"{url}/traffic", json=body, headers=ADMIN),
                422,
                "validation_error",
            )
        assert_error(
            await client.put(f"{url}/traffic", content=b"[", headers=ADMIN), 422, "validation_error"
        )
        shadow = await client.put(
            f"{url}/shadow", json={"version": "2", "sample": 0.5}, headers=ADMIN
        )
        assert_error(shadow, 422, "validation_error")  # not loaded
        sample = await client.put(
            f"{url}/shadow", json={"version": "1", "sample": 2}, headers=ADMIN
        )
        assert_error(sample, 422, "validation_error")
        assert_error(await client.get(f"{url}/compare", headers=ADMIN), 422, "validation_error")
        assert_error(
            await client.get(f"{url}/compare?a=1&b=1", headers=ADMIN), 422, "validation_error"
        )
        # still serving
        assert (await infer(client)).status_code == 200
        assert (await client.get("/ready")).status_code == 200


async def test_a_load_that_fails_leaves_the_serving_version_untouched(
    repo_settings: Callable[..., Settings], repository: Path
) -> None:
    async for client in clients(repo_settings()):
        failed = await client.post(f"/models/{MODEL}/versions/3/load", headers=ADMIN)
        error = assert_error(failed, 422, "model_load_failed")
        assert "'3'" in error["message"]
        view = await models_view(client)
        (three,) = [v for v in view["versions"] if v["version"] == "3"]  # type: ignore[attr-defined]
        assert three["state"] == "failed" and three["reason"]
        assert view["traffic"] == {"1": 100}
        assert (await infer(client)).json()["model_version"] == "1"
        # other labels: the metadata does not match the serving version's
        make_checkpoint(repository / MODEL / "4" / "model.pt", labels=["fake", "real"])
        mismatch = await client.post(f"/models/{MODEL}/versions/4/load", headers=ADMIN)
        assert "metadata mismatch" in assert_error(mismatch, 422, "model_load_failed")["message"]
        assert list(manager(client).registry.loaded) == ["1"]
        # weights of another architecture than the metadata names
        torch.manual_seed(0)
        other = build_model(TINY_ARCH, num_classes=2).state_dict()
        save_checkpoint(
            repository / MODEL / "6" / "model.pt",
            other,
            ModelMetadata(architecture="resnet18", input_size=TINY_SIZE, version="v6"),
        )
        wrong = await client.post(f"/models/{MODEL}/versions/6/load", headers=ADMIN)
        assert_error(wrong, 422, "model_load_failed")
        assert (await infer(client)).json()["model_version"] == "1"
        # a failed version loads once fixed
        shutil.copyfile(
            repository / MODEL / "2" / "model.pt", repository / MODEL / "3" / "model.pt"
        )
        assert (
            await client.post(f"/models/{MODEL}/versions/3/load", headers=ADMIN)
        ).status_code == 200


async def test_loading_twice_at_once_and_past_the_resident_limit_is_a_conflict(
    repo_settings: Callable[..., Settings], repository: Path
) -> None:
    make_checkpoint(repository / MODEL / "5" / "model.pt", seed=5)
    async for client in clients(repo_settings(max_loaded_versions=2)):
        url = f"/models/{MODEL}/versions/2/load"
        both = await asyncio.gather(
            client.post(url, headers=ADMIN), client.post(url, headers=ADMIN)
        )
        assert sorted(r.status_code for r in both) == [200, 409]
        (conflict,) = [r for r in both if r.status_code == 409]
        assert "already loading" in assert_error(conflict, 409, "conflict")["message"]
        again = await client.post(url, headers=ADMIN)  # loaded already: nothing to do
        assert again.status_code == 200
        third = await client.post(f"/models/{MODEL}/versions/5/load", headers=ADMIN)
        assert "DFD_MAX_LOADED_VERSIONS" in assert_error(third, 409, "conflict")["message"]
        busy = await client.put(f"/models/{MODEL}/traffic", json={"1": 50, "2": 50}, headers=ADMIN)
        assert busy.status_code == 200
        # a version with traffic cannot be unloaded
        unload = await client.post(f"/models/{MODEL}/versions/2/unload", headers=ADMIN)
        assert "traffic" in assert_error(unload, 409, "conflict")["message"]


async def test_a_canary_split_is_sticky_per_key_or_drawn_per_request(
    repo_settings: Callable[..., Settings],
) -> None:
    async for client in clients(repo_settings(api_keys=[TEST_KEY, ROTATED_KEY])):
        await client.post(f"/models/{MODEL}/versions/2/load", headers=ADMIN)
        split = await client.put(f"/models/{MODEL}/traffic", json={"1": 50, "2": 50}, headers=ADMIN)
        assert split.status_code == 200
        for key in (TEST_KEY, ROTATED_KEY):
            versions = set()
            for _ in range(6):
                response = await client.post(
                    "/infer", files=infer_files(image_bytes()), headers={"X-API-Key": key}
                )
                versions.add(response.json()["model_version"])
            assert len(versions) == 1, f"key {key} moved between versions: {versions}"
        registry = manager(client).registry
        drawn = [registry.route(f"key-{n}").version for n in range(2000)]
        assert 0.45 < drawn.count("2") / len(drawn) < 0.55
    async for client in clients(repo_settings(traffic_split="request")):
        await client.post(f"/models/{MODEL}/versions/2/load", headers=ADMIN)
        await client.put(f"/models/{MODEL}/traffic", json={"1": 90, "2": 10}, headers=ADMIN)
        registry = manager(client).registry
        drawn = [registry.route(TEST_KEY).version for _ in range(4000)]
        assert 0.07 < drawn.count("2") / len(drawn) < 0.13  # one key, both versions


async def test_a_shadow_scores_aside_and_the_comparison_reports_it(
    repo_settings: Callable[..., Settings],
) -> None:
    async for client in clients(repo_settings()):
        await client.post(f"/models/{MODEL}/versions/2/load", headers=ADMIN)
        shadow = await client.put(
            f"/models/{MODEL}/shadow", json={"version": "2", "sample": 1.0}, headers=ADMIN
        )
        assert shadow.status_code == 200 and shadow.json()["shadow"] == {
            "version": "2",
            "sample": 1.0,
        }
        answers = []
        for seed in range(5):
            response = await client.post(
                "/infer", files=infer_files(image_bytes(seed=seed)), headers=AUTH
            )
            assert response.json()["model_version"] == "1"  # the shadow never answers
            answers.append(response.json())
        await _shadows_done(manager(client))
        report = (await client.get(f"/models/{MODEL}/compare", headers=ADMIN)).json()
        assert report["versions"] == ["1", "2"] and report["shared_requests"] == 5
        pinned = [
            (
                await client.post(
                    "/infer",
                    files=infer_files(image_bytes(seed=seed)),
                    headers={**AUTH, "X-Model-Version": "2"},
                )
            ).json()["fake_prob"]
            for seed in range(5)
        ]
        diffs = sorted(abs(a["fake_prob"] - b) for a, b in zip(answers, pinned, strict=True))
        assert report["mean_abs_diff"] == pytest.approx(sum(diffs) / 5, abs=1e-5)
        assert report["mean_abs_diff"] > 0
        assert 0 <= report["label_agreement"] <= 1
        assert report["p95_abs_diff"] <= diffs[-1] + 1e-6
        metrics = (await client.get("/metrics")).text
        assert 'dfd_shadow_scores_total{outcome="stored"} 5.0' in metrics
        # no shadow any more: requests are scored once
        off = await client.put(f"/models/{MODEL}/shadow", json={"version": None}, headers=ADMIN)
        assert off.json()["shadow"] is None
        await infer(client)
        await _shadows_done(manager(client))
        again = (await client.get(f"/models/{MODEL}/compare?a=1&b=2", headers=ADMIN)).json()
        assert again["shared_requests"] == 5


async def _shadows_done(models: ModelManager) -> None:
    for _ in range(200):
        if not models._shadow_tasks:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("shadow scoring did not finish")


async def test_the_routing_is_kept_in_the_repository_and_restored_at_start(
    repo_settings: Callable[..., Settings], repository: Path
) -> None:
    async for client in clients(repo_settings()):
        await client.post(f"/models/{MODEL}/versions/2/load", headers=ADMIN)
        await client.put(f"/models/{MODEL}/traffic", json={"1": 80, "2": 20}, headers=ADMIN)
    stored = json.loads((repository / MODEL / ROUTING_FILE).read_text())
    assert stored["traffic"] == {"1": 80, "2": 20} and stored["revision"] == 1
    async for client in clients(repo_settings()):
        assert sorted(manager(client).registry.loaded) == ["1", "2"]
        view = await models_view(client)
        assert view["traffic"] == {"1": 80, "2": 20} and view["previous_traffic"] == {"1": 100}


async def test_switching_and_rolling_back_under_load_fails_no_request(
    repo_settings: Callable[..., Settings],
) -> None:
    """c=16 clients keep sending while a version loads, takes the traffic in steps, is rolled
    back and unloaded: every answer is 200, and every answer names a loaded version."""
    async for client in clients(repo_settings(max_queue_size=256)):
        statuses: list[int] = []
        versions: set[str] = set()
        stop = asyncio.Event()
        clients_ = [
            asyncio.create_task(keep_sending(client, stop, statuses, versions)) for _ in range(16)
        ]
        await asyncio.sleep(0.3)
        admin = [
            ("POST", f"/models/{MODEL}/versions/2/load", None),
            ("PUT", f"/models/{MODEL}/traffic", {"1": 90, "2": 10}),
            ("PUT", f"/models/{MODEL}/traffic", {"1": 50, "2": 50}),
            ("PUT", f"/models/{MODEL}/traffic", {"2": 100}),
            ("POST", f"/models/{MODEL}/rollback", None),
            ("POST", f"/models/{MODEL}/rollback", None),
            ("POST", f"/models/{MODEL}/rollback", None),
            ("POST", f"/models/{MODEL}/versions/2/unload", None),
        ]
        for method, url, body in admin:
            response = await client.request(method, url, json=body, headers=ADMIN)
            assert response.status_code == 200, (url, response.text)
            await asyncio.sleep(0.15)
        stop.set()
        await asyncio.gather(*clients_)
        assert len(statuses) > 50
        assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
        assert versions == {"1", "2"}
        assert manager(client).core.admission.pending == 0


async def keep_sending(
    client: httpx.AsyncClient, stop: asyncio.Event, statuses: list[int], versions: set[str]
) -> None:
    """One client sending ``/infer`` requests back to back until ``stop``."""
    while not stop.is_set():
        response = await infer(client)
        statuses.append(response.status_code)
        if response.status_code == 200:
            versions.add(response.json()["model_version"])


async def test_a_stored_routing_that_no_longer_loads_falls_back_to_the_configured_version(
    repo_settings: Callable[..., Settings], repository: Path
) -> None:
    async for client in clients(repo_settings()):
        await client.post(f"/models/{MODEL}/versions/2/load", headers=ADMIN)
        await client.put(f"/models/{MODEL}/traffic", json={"2": 100}, headers=ADMIN)
    (repository / MODEL / "2" / "model.pt").write_bytes(b"broken since")
    async for client in clients(repo_settings()):
        assert (await infer(client)).json()["model_version"] == "1"
        view = await models_view(client)
        assert view["traffic"] == {"1": 100} and view["revision"] == 1
        # the next change builds on the stored revision
        shadow = await client.put(
            f"/models/{MODEL}/shadow", json={"version": "1", "sample": 0.5}, headers=ADMIN
        )
        assert shadow.status_code == 200 and shadow.json()["revision"] == 2
