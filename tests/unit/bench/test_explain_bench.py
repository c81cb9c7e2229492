"""``python -m bench.explain`` measures only the methods ``GET /explain/methods`` offers, and says
which it skipped and why (a torch-free install offers LIME and SHAP only)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from bench.explain import measure, report, targets
from src.explain import kinds
from src.serve.routes.explain import explain_methods


def methods_body(monkeypatch: pytest.MonkeyPatch, missing: str | None) -> dict[str, Any]:
    """What the service's own route answers on ONNX Runtime, with ``missing`` not installed."""
    monkeypatch.setattr(kinds, "missing_gradient_module", lambda: missing)
    service = SimpleNamespace(describe=lambda: SimpleNamespace(backend="onnxruntime"))
    response = asyncio.run(explain_methods(service))  # type: ignore[arg-type]
    body: dict[str, Any] = json.loads(response.model_dump_json())
    return body


class FakeService:
    """Answers like the service: /explain/methods from the real route, 422 method_unavailable
    for a method it does not offer, 200 with timings otherwise; records every request."""

    def __init__(self, methods: dict[str, Any]) -> None:
        self.methods = methods
        self.offered = {m["name"] for m in methods["methods"] if m["available"]}
        self.requests: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        method = request.url.params.get("method")
        self.requests.append(f"{request.method} {path}" + (f"?method={method}" if method else ""))
        if request.method == "GET" and path == "/explain/methods":
            return httpx.Response(200, json=self.methods)
        if path == "/infer":
            return httpx.Response(200, json={"fake_prob": 0.9})
        if path == "/explain":
            if method not in self.offered:
                return httpx.Response(422, json={"error": {"code": "method_unavailable"}})
            timings = {"explain_ms": 12.5}
            return httpx.Response(200, json={"explanation": {"timings": timings}})
        return httpx.Response(404)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url="http://service.test", transport=httpx.MockTransport(self))


def test_torch_free_service_measures_lime_and_shap_and_names_the_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeService(methods_body(monkeypatch, missing="torch"))
    assert fake.offered == {"lime", "shap"}
    with fake.client() as client:
        results = measure(client, b"jpeg", rounds=3, slow_runs=2)
    # asked for the list first, never for a gradient method
    assert fake.requests[0] == "GET /explain/methods"
    assert not [r for r in fake.requests if "gradcam" in r or "method=ig" in r]
    assert fake.requests.count("POST /infer") == 3
    assert fake.requests.count("POST /explain?method=lime") == 1 + 2  # first, then slow runs
    assert fake.requests.count("POST /explain?method=shap") == 2
    assert results["methods"] == ["lime", "shap"]
    assert set(results["skipped"]) == {"gradcam", "ig"}
    assert "no torch" in results["skipped"]["gradcam"]
    assert "ratio" not in results and "gradcam_s" not in results
    assert targets(results) == {"gradcam": None, "lime": True, "shap": True}
    text = report(results, Path("examples/fake_0.jpg"))
    assert "backend onnxruntime" in text
    assert "gradcam / infer: not measured" in text
    assert "skipped gradcam: the gradcam explanation needs the torch network" in text
    assert "skipped ig:" in text
    assert "lime: " in text and "met" in text


def test_full_install_measures_every_method_and_the_gradcam_ratio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeService(methods_body(monkeypatch, missing=None))
    with fake.client() as client:
        results = measure(client, b"jpeg", rounds=4, slow_runs=1)
    assert results["methods"] == ["gradcam", "ig", "lime", "shap"]
    assert results["skipped"] == {}
    assert fake.requests[:3] == [
        "GET /explain/methods",
        "POST /explain?method=gradcam",  # first gradient explanation: loads torch
        "POST /explain?method=lime",  # first perturbation explanation
    ]
    assert fake.requests.count("POST /explain?method=gradcam") == 1 + 4
    assert fake.requests.count("POST /explain?method=ig") == 1
    assert results["ratio"] == pytest.approx(results["gradcam_s"] / results["infer_s"])
    assert targets(results)["gradcam"] is not None
    text = report(results, Path("x.jpg"))
    assert "gradcam / infer:" in text and "not measured" not in text
    assert "skipped" not in text


def test_missed_targets_and_unmeasured_ones() -> None:
    results: dict[str, Any] = {
        "backend": "torch",
        "skipped": {"shap": "not listed by GET /explain/methods"},
        "infer_s": 0.1,
        "gradcam_s": 0.5,
        "ratio": 5.0,
        "lime_s": 6.0,
    }
    assert targets(results) == {"gradcam": False, "lime": False, "shap": None}
    text = report(results, Path("x.jpg"))
    assert "gradcam / infer: 5.00x (target <= 3x): NOT met" in text
    assert "lime: 6.00 s (target <= 5 s): NOT met" in text
    assert "shap: not measured" in text


def test_a_service_without_the_methods_route_stops_the_bench() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(404, json={}))
    with (
        httpx.Client(base_url="http://old.test", transport=transport) as client,
        pytest.raises(SystemExit, match="/explain/methods answered 404"),
    ):
        measure(client, b"jpeg", rounds=1, slow_runs=1)
