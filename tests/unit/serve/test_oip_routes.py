"""``/v2`` (the Open Inference Protocol) in-process: probes, metadata, inference with JSON and
binary tensors through the service's engine, and every refusal in the protocol's error shape."""

from __future__ import annotations

import base64
import gzip
import json
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from src.core.settings import Settings
from src.serve.app import create_app
from tests.helpers.api import AUTH, assert_error, started_client
from tests.helpers.images import image_bytes, infer_files

pytestmark = pytest.mark.anyio
MODEL = "/v2/models/deepfake-detector"


def _binary_body(images: list[bytes], **document: Any) -> tuple[bytes, dict[str, str]]:
    raw = b"".join(struct.pack("<I", len(image)) + image for image in images)
    tensor = {
        "name": "image",
        "datatype": "BYTES",
        "shape": [len(images)],
        "parameters": {"binary_data_size": len(raw)},
    }
    header = json.dumps({"inputs": [tensor], **document}).encode()
    headers = {**AUTH, "Inference-Header-Content-Length": str(len(header))}
    return header + raw, headers


def _json_body(images: list[bytes], **document: Any) -> dict[str, Any]:
    tensor = {
        "name": "image",
        "datatype": "BYTES",
        "shape": [len(images)],
        "data": [base64.b64encode(image).decode() for image in images],
        "parameters": {"content_type": "base64"},
    }
    return {"inputs": [tensor], **document}


def assert_v2_error(response: httpx.Response, status: int, *fragments: str) -> str:
    """The protocol's error shape: ``{"error": "<message>"}``, and nothing else."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    for fragment in fragments:
        assert fragment in body["error"], body["error"]
    return str(body["error"])


@pytest.fixture
def make_app(settings_factory: Callable[..., Settings]) -> Callable[..., FastAPI]:
    def make(**overrides: object) -> FastAPI:
        return create_app(settings_factory(**overrides))

    return make


async def _started(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async for client in started_client(app):
        yield client


async def test_probes_answer_without_a_key(client: httpx.AsyncClient) -> None:
    live = await client.get("/v2/health/live")
    assert live.status_code == 200 and live.json() == {"live": True}
    ready = await client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}


async def test_server_and_model_metadata_need_a_key(client: httpx.AsyncClient) -> None:
    for path in ("/v2", MODEL, f"{MODEL}/ready", f"{MODEL}/versions/test-1"):
        assert_v2_error(await client.get(path), 401)
        assert_v2_error(await client.get(path, headers={"X-API-Key": "wrong"}), 401)
    server = (await client.get("/v2", headers=AUTH)).json()
    assert server["extensions"] == ["binary_tensor_data"] and server["version"]
    for path in (MODEL, f"{MODEL}/versions/test-1"):
        model = (await client.get(path, headers=AUTH)).json()
        assert model["name"] == "deepfake-detector"
        assert model["versions"] == ["test-1"]
        assert model["platform"] in ("torch", "onnxruntime")
        assert model["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
        assert [o["name"] for o in model["outputs"]] == ["fake_prob", "label"]
    ready = await client.get(f"{MODEL}/versions/test-1/ready", headers=AUTH)
    assert ready.status_code == 200 and ready.json() == {"name": "deepfake-detector", "ready": True}


async def test_unknown_models_and_versions_are_404(client: httpx.AsyncClient) -> None:
    body, headers = _binary_body([image_bytes()])
    for method, path in (
        ("GET", "/v2/models/other"),
        ("GET", "/v2/models/other/ready"),
        ("GET", f"{MODEL}/versions/9"),
        ("GET", f"{MODEL}/versions/9/ready"),
        ("POST", "/v2/models/other/infer"),
        ("POST", f"{MODEL}/versions/9/infer"),
    ):
        response = await client.request(method, path, content=body, headers=headers)
        assert_v2_error(response, 404, "unknown model" if "other" in path else "no version")
    assert_v2_error(await client.get("/v2/nothing/here", headers=AUTH), 404)
    assert_v2_error(await client.get(f"{MODEL}/infer", headers=AUTH), 405)
    assert_error(await client.get("/v2nothing", headers=AUTH), 404, "not_found")  # not /v2


async def test_binary_infer_scores_each_image_as_infer_does(client: httpx.AsyncClient) -> None:
    images = [image_bytes(seed=seed) for seed in range(3)]
    body, headers = _binary_body(
        images,
        id="mine-1",
        outputs=[{"name": "fake_prob", "parameters": {"binary_data": True}}, {"name": "label"}],
    )
    response = await client.post(f"{MODEL}/versions/test-1/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:length])
    assert header["model_name"] == "deepfake-detector" and header["model_version"] == "test-1"
    assert header["id"] == "mine-1"
    probs_tensor, label_tensor = header["outputs"]
    assert probs_tensor["shape"] == [3] and probs_tensor["parameters"]["binary_data_size"] == 12
    probs = np.frombuffer(response.content[length:], dtype="<f4").tolist()
    assert len(probs) == 3
    for image, prob, label in zip(images, probs, label_tensor["data"], strict=True):
        single = (await client.post("/infer", files=infer_files(image), headers=AUTH)).json()
        assert prob == pytest.approx(single["fake_prob"], abs=1e-5)
        assert label == single["label"]


async def test_json_infer_takes_base64_and_answers_json(client: httpx.AsyncClient) -> None:
    images = [image_bytes(seed=1), image_bytes("PNG", seed=2)]
    response = await client.post(f"{MODEL}/infer", json=_json_body(images), headers=AUTH)
    assert response.status_code == 200, response.text
    assert "inference-header-content-length" not in response.headers
    outputs = {tensor["name"]: tensor for tensor in response.json()["outputs"]}
    assert outputs["fake_prob"]["datatype"] == "FP32" and outputs["fake_prob"]["shape"] == [2]
    assert all(0.0 <= p <= 1.0 for p in outputs["fake_prob"]["data"])
    assert set(outputs["label"]["data"]) <= {"real", "fake"}
    # binary_data_output turns every output binary
    body, headers = _binary_body(images, parameters={"binary_data_output": True})
    binary = await client.post(f"{MODEL}/infer", content=body, headers=headers)
    length = int(binary.headers["inference-header-content-length"])
    assert all("data" not in t for t in json.loads(binary.content[:length])["outputs"])
    probs = np.frombuffer(binary.content[length : length + 8], dtype="<f4")
    assert probs.tolist() == pytest.approx(outputs["fake_prob"]["data"], abs=1e-5)


async def test_a_compressed_body_is_inflated(client: httpx.AsyncClient) -> None:
    body, headers = _binary_body([image_bytes()])
    response = await client.post(
        f"{MODEL}/infer",
        content=gzip.compress(body),
        headers={**headers, "Content-Encoding": "gzip"},
    )
    assert response.status_code == 200, response.text
    for encoding, content, message in (
        ("gzip", b"not gzip at all", "corrupt"),
        ("gzip", gzip.compress(body)[:-4], "truncated"),
        ("br", body, "not supported"),
    ):
        response = await client.post(
            f"{MODEL}/infer", content=content, headers={**headers, "Content-Encoding": encoding}
        )
        assert_v2_error(response, 400, message)


async def test_malformed_requests_are_400_in_the_protocol_shape(client: httpx.AsyncClient) -> None:
    url = f"{MODEL}/infer"
    assert_v2_error(await client.post(url, content=b"{", headers=AUTH), 400, "malformed")
    wrong_type = _json_body([image_bytes()])
    wrong_type["inputs"][0]["datatype"] = "FP32"
    assert_v2_error(await client.post(url, json=wrong_type, headers=AUTH), 400, "datatype")
    mismatch = _json_body([image_bytes(), image_bytes(seed=3)])
    mismatch["inputs"][0]["shape"] = [3]
    assert_v2_error(await client.post(url, json=mismatch, headers=AUTH), 400, "shape [3]")
    body, headers = _binary_body([image_bytes()])
    response = await client.post(url, content=body + b"more", headers=headers)
    assert_v2_error(response, 400, "binary_data_size")
    bad_length = {**headers, "Inference-Header-Content-Length": str(len(body) + 1)}
    response = await client.post(url, content=body, headers=bad_length)
    assert_v2_error(response, 400, "Inference-Header-Content-Length")


async def test_one_bad_image_fails_the_request_with_its_index(client: httpx.AsyncClient) -> None:
    body, headers = _binary_body([image_bytes(), b"this is not an image"])
    response = await client.post(f"{MODEL}/infer", content=body, headers=headers)
    assert_v2_error(response, 400, "element 1", "unsupported_media_type")
    body, headers = _binary_body([image_bytes(size=(64, 64))[:300]])
    response = await client.post(f"{MODEL}/infer", content=body, headers=headers)
    assert_v2_error(response, 400, "element 0", "invalid_image")


async def test_limits_are_413_and_the_rest_of_the_api_keeps_its_shape(
    make_app: Callable[..., FastAPI],
) -> None:
    async for client in _started(make_app(max_batch_items=2, max_upload_bytes=4096)):
        body, headers = _binary_body([image_bytes()] * 3)
        response = await client.post(f"{MODEL}/infer", content=body, headers=headers)
        assert_v2_error(response, 413, "at most 2 images")
        body, headers = _binary_body([image_bytes(size=(300, 300))])
        response = await client.post(f"{MODEL}/infer", content=body, headers=headers)
        assert_v2_error(response, 413, "element 0 exceeds")
        assert_error(
            await client.post("/infer", files=infer_files(image_bytes())), 401, "unauthorized"
        )


async def test_each_image_is_charged_to_the_rate_limit(make_app: Callable[..., FastAPI]) -> None:
    async for client in _started(make_app(rate_limit="3/minute")):
        body, headers = _binary_body([image_bytes(), image_bytes(seed=4)])
        first = await client.post(f"{MODEL}/infer", content=body, headers=headers)
        assert first.status_code == 200 and ";r=1;" in first.headers["ratelimit"]
        response = await client.post(f"{MODEL}/infer", content=body, headers=headers)
        assert_v2_error(response, 429, "used up")
        assert int(response.headers["retry-after"]) >= 1


async def test_draining_turns_readiness_false_and_refuses_inference(
    make_app: Callable[..., FastAPI],
) -> None:
    app = make_app()
    async for client in _started(app):
        app.state.service.begin_drain()
        ready = await client.get("/v2/health/ready")
        assert ready.status_code == 400 and ready.json() == {"ready": False}
        model_ready = await client.get(f"{MODEL}/ready", headers=AUTH)
        assert model_ready.status_code == 400 and model_ready.json()["ready"] is False
        assert (await client.get("/v2/health/live")).status_code == 200
        body, headers = _binary_body([image_bytes()])
        response = await client.post(f"{MODEL}/infer", content=body, headers=headers)
        assert_v2_error(response, 503)
        assert response.headers["retry-after"]


async def test_openapi_documents_the_protocol(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"/v2", "/v2/health/ready", "/v2/models/{model}/versions/{version}/infer"} <= set(paths)
    body = paths["/v2/models/{model}/infer"]["post"]["requestBody"]
    assert {"application/json", "application/octet-stream"} <= set(body["content"])


async def test_a_compressed_body_is_bounded_after_inflating(
    make_app: Callable[..., FastAPI],
) -> None:
    async for client in _started(make_app(max_batch_bytes=1024)):
        bomb = gzip.compress(b"0" * 400_000)  # ~400 bytes that inflate far past the limit
        response = await client.post(
            f"{MODEL}/infer", content=bomb, headers={**AUTH, "Content-Encoding": "gzip"}
        )
        assert_v2_error(response, 413, "exceeds")
