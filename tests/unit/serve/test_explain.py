"""``POST /explain`` on the app factory with the tiny checkpoint: the answer, every method, the
PNG answer, refusals in the one error shape, its own admission, and a timeout that leaves the
service healthy."""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image

from src.core.settings import DEFAULT_CHECKPOINT, Settings
from src.explain.runner import ExplanationRunner
from src.serve.app import create_app
from tests.helpers import REPO_ROOT
from tests.helpers.api import AUTH, assert_error, started_client
from tests.helpers.images import image_bytes, infer_files

pytestmark = pytest.mark.anyio
FAST = {"explain_lime_samples": 24, "explain_shap_samples": 24, "explain_ig_steps": 4}


@pytest.fixture
def explain_app(settings_factory: Callable[..., Settings]) -> FastAPI:
    return create_app(settings_factory(**FAST))


@pytest.fixture
async def explain_client(explain_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async for client in started_client(explain_app):
        yield client


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as image:
        return image.size


@pytest.mark.parametrize("method", ["gradcam", "ig", "lime", "shap"])
async def test_each_method_answers_the_infer_fields_and_a_heat_map(
    explain_client: httpx.AsyncClient, method: str
) -> None:
    data = image_bytes(size=(96, 80), seed=4)
    inferred = await explain_client.post("/infer", files=infer_files(data), headers=AUTH)
    response = await explain_client.post(
        "/explain", params={"method": method}, files=infer_files(data), headers=AUTH
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["fake_prob"] == pytest.approx(inferred.json()["fake_prob"], abs=1e-6)
    assert body["fake_prob"] + body["real_prob"] == pytest.approx(1.0)
    assert body["label"] in {"real", "fake"}
    assert body["request_id"] == response.headers["x-request-id"]
    explanation = body["explanation"]
    assert explanation["method"] == method
    assert explanation["face_box"] is None  # the tiny checkpoint has no face crop
    width, height = png_size(base64.b64decode(explanation["heatmap_png"]))
    assert width == height >= 256
    heat = np.asarray(explanation["heatmap"])
    assert heat.ndim == 2 and heat.shape[0] == heat.shape[1] <= 32
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert set(explanation["timings"]) == {"preprocess_ms", "explain_ms", "render_ms"}


async def test_the_default_method_is_gradcam(explain_client: httpx.AsyncClient) -> None:
    response = await explain_client.post("/explain", files=infer_files(image_bytes()), headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["explanation"]["method"] == "gradcam"
    series = (await explain_client.get("/metrics")).text
    assert 'dfd_explanations_total{method="gradcam",outcome="ok"} 1.0' in series
    assert 'dfd_explanation_seconds_count{method="gradcam"} 1.0' in series


async def test_accept_png_answers_the_overlay_itself(explain_client: httpx.AsyncClient) -> None:
    response = await explain_client.post(
        "/explain",
        files=infer_files(image_bytes()),
        headers={**AUTH, "Accept": "image/png"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert png_size(response.content)[0] >= 256
    assert 0.0 <= float(response.headers["x-fake-prob"]) <= 1.0
    assert response.headers["x-label"] in {"real", "fake"}


async def test_bad_input_is_refused_as_infer_refuses_it(explain_client: httpx.AsyncClient) -> None:
    files = infer_files(image_bytes())
    response = await explain_client.post("/explain", params={"method": "occlusion"}, files=files)
    assert_error(response, 401, "unauthorized")  # the key is checked first
    response = await explain_client.post(
        "/explain", params={"method": "occlusion"}, files=files, headers=AUTH
    )
    assert_error(response, 422, "validation_error")
    response = await explain_client.post(
        "/explain", files=infer_files(image_bytes("GIF")), headers=AUTH
    )
    assert_error(response, 415, "unsupported_media_type")
    response = await explain_client.post(
        "/explain", files=infer_files(b"\xff\xd8\xff\xe0 not really a jpeg"), headers=AUTH
    )
    assert response.status_code in (415, 422), response.text
    response = await explain_client.post("/explain", files=infer_files(b""), headers=AUTH)
    assert_error(response, 400, "empty_file")


async def test_a_second_explanation_while_one_runs_is_refused_with_retry_after(
    explain_app: FastAPI, explain_client: httpx.AsyncClient
) -> None:
    # The first request makes the runner; then its one place is taken as a running one would.
    assert (
        await explain_client.post("/explain", files=infer_files(image_bytes()), headers=AUTH)
    ).status_code == 200
    runner: ExplanationRunner = explain_app.state.explanation_runner
    release = runner.gate.take()
    try:
        response = await explain_client.post(
            "/explain", files=infer_files(image_bytes()), headers=AUTH
        )
        assert_error(response, 503, "overloaded")
        assert response.headers["retry-after"] == "1"
        # /infer is not behind the explanations' admission
        inferred = await explain_client.post(
            "/infer", files=infer_files(image_bytes()), headers=AUTH
        )
        assert inferred.status_code == 200
    finally:
        release()


async def test_a_timed_out_explanation_is_504_and_leaves_the_service_healthy(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(explain_timeout_s=0.1, explain_lime_samples=2000)
    app = create_app(settings)
    async for client in started_client(app):
        data = image_bytes(size=(96, 96))
        response = await client.post(
            "/explain", params={"method": "lime"}, files=infer_files(data), headers=AUTH
        )
        assert_error(response, 504, "timeout")
        inferred = await client.post("/infer", files=infer_files(data), headers=AUTH)
        assert inferred.status_code == 200, inferred.text
        assert (await client.get("/ready")).status_code == 200
        runner: ExplanationRunner = app.state.explanation_runner
        for _ in range(100):  # the abandoned LIME stops at its next batch, then frees its place
            if runner.gate.in_use == 0:
                break
            await asyncio.sleep(0.05)
        assert runner.gate.in_use == 0
        series = (await client.get("/metrics")).text
        assert 'dfd_explanations_total{method="lime",outcome="timeout"} 1.0' in series


async def test_on_onnx_runtime_the_gradient_methods_load_the_torch_network_once(
    settings_factory: Callable[..., Settings], checkpoint_path: Path, tmp_path: Path
) -> None:
    from src.export import export_onnx

    checkpoint = tmp_path / "model.pt"
    shutil.copy(checkpoint_path, checkpoint)
    export_onnx(checkpoint)
    app = create_app(settings_factory(checkpoint_path=checkpoint, backend="onnxruntime", **FAST))
    async for client in started_client(app):
        assert (await client.get("/ready")).json()["backend"] == "onnxruntime"
        for method in ("lime", "gradcam", "ig"):
            response = await client.post(
                "/explain",
                params={"method": method},
                files=infer_files(image_bytes()),
                headers=AUTH,
            )
            assert response.status_code == 200, response.text
        runner: ExplanationRunner = app.state.explanation_runner
        gradients = runner._gradients
        assert gradients is not None and gradients.model is not getattr(
            app.state.service.backend, "model", None
        )


async def test_with_the_demo_model_the_face_is_found_or_the_image_refused(
    settings_factory: Callable[..., Settings],
) -> None:
    app = create_app(settings_factory(checkpoint_path=REPO_ROOT / DEFAULT_CHECKPOINT))
    async for client in started_client(app):
        data = (REPO_ROOT / "examples" / "fake_0.jpg").read_bytes()
        response = await client.post("/explain", files=infer_files(data), headers=AUTH)
        assert response.status_code == 200, response.text
        body = response.json()
        x, y, w, h = body["explanation"]["face_box"]
        assert w > 50 and h > 50 and x >= 0 and y >= 0
        assert body["label"] == "fake"
        noise = image_bytes(size=(160, 160), seed=7)
        response = await client.post("/explain", files=infer_files(noise), headers=AUTH)
        assert_error(response, 422, "no_face_detected")


async def test_infer_is_served_while_a_long_explanation_runs(
    settings_factory: Callable[..., Settings],
) -> None:
    """LIME's model calls take turns with /infer's batches on the model thread."""
    app = create_app(settings_factory(explain_lime_samples=2000))
    async for client in started_client(app):
        data = image_bytes(size=(96, 96))
        explaining = asyncio.ensure_future(
            client.post(
                "/explain", params={"method": "lime"}, files=infer_files(data), headers=AUTH
            )
        )
        for _ in range(200):
            runner = getattr(app.state, "explanation_runner", None)
            if runner is not None and runner.gate.in_use:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # into LIME's sampling
        answered_during = 0
        for _ in range(3):
            inferred = await client.post("/infer", files=infer_files(data), headers=AUTH)
            assert inferred.status_code == 200
            answered_during += not explaining.done()
        response = await explaining
        assert response.status_code == 200, response.text
        assert answered_during == 3, "/infer waited for the whole explanation"


@pytest.fixture
def without_captum(monkeypatch: pytest.MonkeyPatch) -> None:
    """As where torch and Captum are not installed: the gradient methods' modules include one
    that does not exist (looked up as the service looks them up)."""
    import src.explain.kinds as kinds

    monkeypatch.setattr(kinds, "GRADIENT_MODULES", ("torch", "captum_not_installed_here"))


async def test_the_methods_route_lists_every_method_where_torch_is_installed(
    explain_client: httpx.AsyncClient,
) -> None:
    response = await explain_client.get("/explain/methods")  # no key: the page reads it first
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["backend"] == (await explain_client.get("/ready")).json()["backend"]
    assert body["default"] == "gradcam"
    assert [(m["name"], m["kind"], m["available"], m["reason"]) for m in body["methods"]] == [
        ("gradcam", "gradient", True, None),
        ("ig", "gradient", True, None),
        ("lime", "perturbation", True, None),
        ("shap", "perturbation", True, None),
    ]


async def test_without_captum_gradient_methods_are_refused_and_lime_is_the_default(
    explain_client: httpx.AsyncClient, without_captum: None
) -> None:
    """A torch-free installation explains with LIME and SHAP; Grad-CAM and IG are a 422 in the
    one error shape that says what they need (never a 500), before the upload is read."""
    body = (await explain_client.get("/explain/methods")).json()
    assert body["default"] == "lime"
    available = {m["name"]: m["available"] for m in body["methods"]}
    assert available == {"gradcam": False, "ig": False, "lime": True, "shap": True}
    reasons = {m["name"]: m["reason"] for m in body["methods"]}
    assert "captum_not_installed_here" in reasons["ig"] and reasons["lime"] is None
    for method in ("gradcam", "ig"):
        response = await explain_client.post(
            "/explain", params={"method": method}, files=infer_files(image_bytes()), headers=AUTH
        )
        error = assert_error(response, 422, "method_unavailable")
        assert f"the {method} explanation needs the torch network" in error["message"]
        assert "lime, shap" in error["message"]
    response = await explain_client.post("/explain", files=infer_files(image_bytes()), headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["explanation"]["method"] == "lime"
    response = await explain_client.post(
        "/explain", params={"method": "shap"}, files=infer_files(image_bytes()), headers=AUTH
    )
    assert response.status_code == 200, response.text
    series = (await explain_client.get("/metrics")).text
    assert 'dfd_explanations_total{method="gradcam",outcome="method_unavailable"} 1.0' in series
    assert 'dfd_explanations_total{method="lime",outcome="ok"} 1.0' in series
    inferred = await explain_client.post("/infer", files=infer_files(image_bytes()), headers=AUTH)
    assert inferred.status_code == 200


async def test_the_runner_itself_refuses_a_gradient_method_it_cannot_run(
    explain_app: FastAPI, explain_client: httpx.AsyncClient, without_captum: None
) -> None:
    """The check is not only the route's: a caller of the runner gets the same refusal."""
    from src.explain.kinds import MethodUnavailableError

    response = await explain_client.post("/explain", files=infer_files(image_bytes()), headers=AUTH)
    assert response.status_code == 200, response.text
    runner: ExplanationRunner = explain_app.state.explanation_runner
    with pytest.raises(MethodUnavailableError, match="needs the torch network"):
        await runner.explain_bytes(image_bytes(), "ig", deadline=time.perf_counter() + 30)
    assert runner.gate.in_use == 0 and runner._gradients is None
