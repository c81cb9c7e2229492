"""The HTTP contract, end to end through the app factory."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable

import httpx
import pytest

from src.core.settings import Settings
from src.serve.app import create_app
from tests.helpers import REPO_ROOT
from tests.helpers.api import AUTH, ROTATED_KEY, TEST_KEY, assert_error, started_client
from tests.helpers.images import image_bytes, infer_files

pytestmark = pytest.mark.anyio


async def test_infer_contract(client: httpx.AsyncClient) -> None:
    response = await client.post("/infer", files=infer_files(image_bytes()), headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    assert 0.0 <= body["fake_prob"] <= 1.0
    assert body["fake_prob"] + body["real_prob"] == pytest.approx(1.0, abs=1e-6)
    assert body["label"] == ("fake" if body["fake_prob"] >= body["threshold"] else "real")
    assert body["model_version"] == "test-1"
    assert body["model_architecture"] == "test_efficientnet"
    assert body["timings"]["batch_size"] >= 1


async def test_raw_image_body_is_accepted(client: httpx.AsyncClient) -> None:
    data = image_bytes("PNG")
    multipart = await client.post("/infer", files=infer_files(data), headers=AUTH)
    raw = await client.post("/infer", content=data, headers={**AUTH, "Content-Type": "image/png"})
    assert raw.status_code == 200, raw.text
    assert raw.json()["fake_prob"] == pytest.approx(multipart.json()["fake_prob"], abs=1e-5)


async def test_same_image_same_answer_and_different_images_differ(
    client: httpx.AsyncClient,
) -> None:
    first, second, other = await asyncio.gather(
        client.post("/infer", files=infer_files(image_bytes(seed=1)), headers=AUTH),
        client.post("/infer", files=infer_files(image_bytes(seed=1)), headers=AUTH),
        client.post("/infer", files=infer_files(image_bytes(seed=2)), headers=AUTH),
    )
    assert first.json()["fake_prob"] == pytest.approx(second.json()["fake_prob"], abs=1e-5)
    assert first.json()["fake_prob"] != other.json()["fake_prob"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}, {"X-API-Key": TEST_KEY + "x"}],
)
async def test_missing_or_wrong_key_is_401(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await client.post("/infer", files=infer_files(image_bytes()), headers=headers)
    assert_error(response, 401, "unauthorized")


async def test_rotated_key_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/infer", files=infer_files(image_bytes()), headers={"X-API-Key": ROTATED_KEY}
    )
    assert response.status_code == 200


async def test_health_and_ready(client: httpx.AsyncClient) -> None:
    health = await client.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = await client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "model_version": "test-1",
        "model_architecture": "test_efficientnet",
        "device": "cpu",
        "backend": "torch",
    }


async def test_readiness_is_503_before_start_and_while_draining(settings: Settings) -> None:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as cold:
        assert_error(await cold.get("/ready"), 503, "not_ready")
        assert (await cold.get("/health")).status_code == 200
        response = await cold.post("/infer", files=infer_files(image_bytes()), headers=AUTH)
        assert_error(response, 503, "not_ready")
    async for warm in started_client(app):
        assert (await warm.get("/ready")).status_code == 200
        app.state.service.begin_drain()
        assert_error(await warm.get("/ready"), 503, "not_ready")
        response = await warm.post("/infer", files=infer_files(image_bytes()), headers=AUTH)
        assert_error(response, 503, "not_ready")
        assert (await warm.get("/health")).status_code == 200


async def test_request_id_is_kept_or_generated(client: httpx.AsyncClient) -> None:
    kept = await client.get("/health", headers={"X-Request-ID": "abc-123.x"})
    assert kept.headers["x-request-id"] == "abc-123.x"
    invalid = await client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert invalid.headers["x-request-id"] != "bad id\twith spaces"
    assert len(invalid.headers["x-request-id"]) == 32
    one = await client.get("/health")
    two = await client.get("/health")
    assert one.headers["x-request-id"] != two.headers["x-request-id"]
    posted = await client.post(
        "/infer",
        files=infer_files(image_bytes()),
        headers={**AUTH, "X-Request-ID": "client-chosen-id"},
    )
    assert posted.json()["request_id"] == "client-chosen-id"


async def test_logs_are_json_with_request_id_including_inference_threads(
    settings_factory: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(settings_factory(log_level="DEBUG"))
    async for c in started_client(app):
        await c.post(
            "/infer", files=infer_files(b"not an image"), headers={**AUTH, "X-Request-ID": "rid-1"}
        )
        await c.post(
            "/infer", files=infer_files(image_bytes()), headers={**AUTH, "X-Request-ID": "rid-2"}
        )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines, "no log lines written"
    for line in lines:
        assert {"time", "level", "logger", "message", "request_id"} <= set(line)
    access = [line for line in lines if line["logger"] == "src.access"]
    assert {(a["request_id"], a["status"]) for a in access} >= {("rid-1", 415), ("rid-2", 200)}
    assert all({"method", "path", "duration_ms"} <= set(a) for a in access)
    refused = [line for line in lines if line["message"].startswith("request refused")]
    assert refused and refused[0]["request_id"] == "rid-1"
    # A line written on the preprocessing thread carries the request id too.
    threaded = [line for line in lines if line["thread"].startswith("preprocess")]
    assert threaded
    assert all(line["request_id"] in {"rid-1", "rid-2"} for line in threaded)
    assert "test-key" not in capsys.readouterr().out


async def test_metrics_after_traffic(client: httpx.AsyncClient) -> None:
    await client.post("/infer", files=infer_files(image_bytes()), headers=AUTH)
    await client.post("/infer", files=infer_files(b"junk"), headers=AUTH)
    await client.get("/nope")
    text = (await client.get("/metrics")).text
    assert 'dfd_http_requests_total{method="POST",route="/infer",status="200"} 1.0' in text
    assert 'dfd_http_requests_total{method="POST",route="/infer",status="415"} 1.0' in text
    assert 'route="<unmatched>",status="404"' in text
    assert "dfd_http_request_duration_seconds_bucket" in text
    assert 'dfd_model_inference_seconds_count{model_version="test-1"} 1.0' in text
    assert 'dfd_batch_size_count{model_version="test-1"} 1.0' in text
    assert 'dfd_queue_wait_seconds_count{model_version="test-1"} 1.0' in text
    assert 'dfd_fake_probability_count{model_version="test-1"} 1.0' in text
    assert "dfd_predictions_total{label=" in text
    assert (
        'dfd_model_info{architecture="test_efficientnet",backend="torch",device="cpu",'
        'version="test-1"} 1.0' in text
    )
    assert "dfd_http_requests_in_flight" in text
    assert "dfd_ready 1.0" in text


async def test_not_found_and_method_not_allowed_use_error_shape(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/nope"), 404, "not_found")
    assert_error(await client.get("/infer", headers=AUTH), 405, "method_not_allowed")


async def test_openapi_documents_every_route(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert {"/infer", "/health", "/ready", "/metrics"} <= set(spec["paths"])
    infer = spec["paths"]["/infer"]["post"]
    assert "multipart/form-data" in infer["requestBody"]["content"]
    assert {"200", "401", "413", "415", "422", "503"} <= set(infer["responses"])
    schema = spec["components"]["schemas"]["InferenceResponse"]
    assert {"request_id", "fake_prob", "real_prob"} <= set(schema["required"])
    assert schema.get("examples")
    assert spec["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    assert (await client.get("/docs")).status_code == 200


async def test_many_concurrent_requests_each_get_their_own_answer(
    settings_factory: Callable[..., Settings],
) -> None:
    images = [image_bytes(seed=i) for i in range(24)]
    app = create_app(settings_factory(max_batch_size=4, batch_timeout_ms=20))
    async for c in started_client(app):
        singles = []
        for data in images[:6]:
            singles.append((await c.post("/infer", files=infer_files(data), headers=AUTH)).json())
        responses = await asyncio.gather(
            *(c.post("/infer", files=infer_files(d), headers=AUTH) for d in images)
        )
    bodies = [r.json() for r in responses]
    assert all(r.status_code == 200 for r in responses)
    assert len({b["request_id"] for b in bodies}) == len(images)
    assert max(b["timings"]["batch_size"] for b in bodies) > 1, "requests were never batched"
    for single, batched in zip(singles, bodies[:6], strict=True):
        assert batched["fake_prob"] == pytest.approx(single["fake_prob"], abs=1e-4)


async def test_face_crop_setting_scores_faces_and_refuses_faceless_frames(
    settings_factory: Callable[..., Settings],
) -> None:

    face = (REPO_ROOT / "examples" / "real_0.jpg").read_bytes()
    app = create_app(settings_factory(face_crop="on"))
    async for c in started_client(app):
        scored = await c.post("/infer", files=infer_files(face), headers=AUTH)
        assert scored.status_code == 200, scored.text
        faceless = await c.post(
            "/infer", files=infer_files(image_bytes(size=(160, 160))), headers=AUTH
        )
        assert_error(faceless, 422, "no_face_detected")
        assert (await c.get("/ready")).status_code == 200


async def test_inference_request_never_hops_to_the_generic_thread_pool(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dependencies, upload reading and the answer stay on the event loop; decoding and the
    model run on the service's own executors. A plain ``def`` dependency or a spooled upload
    would cost a trip through anyio's thread pool on every request."""
    import anyio.to_thread

    hops: list[object] = []
    original = anyio.to_thread.run_sync

    async def counting(func: Callable[..., object], *args: object, **kwargs: object) -> object:
        hops.append(func)
        return await original(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    multipart = await client.post("/infer", files=infer_files(image_bytes()), headers=AUTH)
    raw = await client.post(
        "/infer", content=image_bytes("PNG"), headers={**AUTH, "Content-Type": "image/png"}
    )
    assert multipart.status_code == raw.status_code == 200
    assert hops == []


def test_uvicorn_runs_on_uvloop_and_httptools(settings: Settings) -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from src.serve.__main__ import uvicorn_config

    config = uvicorn_config(settings)
    config.load()
    http = config.http_protocol_class
    assert isinstance(http, functools.partial) and issubclass(http.func, HttpToolsProtocol)
    assert config.get_loop_factory().__module__.startswith("uvloop")
