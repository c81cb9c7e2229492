"""Explanations on ONNX Runtime without torch: LIME and SHAP answer and import no torch; where
torch is not installed (as in the torch-free image), Grad-CAM and IG are refused with 422
``method_unavailable`` and ``GET /explain/methods`` offers LIME and SHAP only.

The service runs in its own interpreter (this test process has torch loaded already). "Not
installed" is made by a finder that refuses torch, torchvision, timm and Captum, as a missing
package does (``ModuleNotFoundError``), before anything else is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from src.export import export_onnx
from tests.helpers.checkpoints import make_checkpoint
from tests.helpers.torch_free import run_onnx_app_script

pytestmark = pytest.mark.slow

SCRIPT = r"""
import sys
HEAVY = ("torch", "torchvision", "timm", "captum")
if sys.argv[1] == "uninstalled":
    class Uninstalled:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HEAVY:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, Uninstalled())

import asyncio, json
from pathlib import Path
import httpx
from src.core.settings import Settings
from src.serve.app import create_app

async def main():
    app = create_app(Settings(_env_file=None))
    answers = {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            key = {"X-API-Key": "demo-key"}
            image = Path("examples/fake_0.jpg").read_bytes()
            methods = (await client.get("/explain/methods")).json()
            answers["methods"] = {m["name"]: m["available"] for m in methods["methods"]}
            answers["default"] = methods["default"]
            for method in ("lime", "shap", "gradcam", "ig"):
                if not answers["methods"][method]:
                    answer = await client.post(
                        f"/explain?method={method}", files={"file": ("a.jpg", image)}, headers=key
                    )
                    answers[method] = [answer.status_code, answer.json()["error"]["code"]]
                    continue
                if method not in ("lime", "shap"):
                    continue
                answer = await client.post(
                    f"/explain?method={method}", files={"file": ("a.jpg", image)}, headers=key
                )
                body = answer.json()
                explanation = body.get("explanation", {})
                answers[method] = [
                    answer.status_code,
                    explanation.get("method"),
                    explanation.get("face_box") is not None,
                    max(max(row) for row in explanation.get("heatmap", [[0.0]])),
                ]
            answers["backend"] = (await client.get("/ready")).json()["backend"]
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
    answers["heavy"] = heavy[:5]
    print(json.dumps(answers))

asyncio.run(main())
"""


def serve_and_explain(tmp_path: Path, checkpoint: Path, mode: str) -> dict[str, Any]:
    return run_onnx_app_script(
        SCRIPT,
        checkpoint,
        tmp_path / mode,
        mode,
        timeout=240,
        DFD_API_KEYS="demo-key",
        DFD_EXPLAIN_LIME_SAMPLES="40",
        DFD_EXPLAIN_SHAP_SAMPLES="40",
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = make_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")
    export_onnx(path)
    return path


def test_lime_and_shap_on_onnxruntime_import_no_torch(tmp_path: Path, checkpoint: Path) -> None:
    """Torch is installed here, and stays unimported: the gradient methods are offered (they
    would load torch on first use) but LIME and SHAP never touch it."""
    report = serve_and_explain(tmp_path, checkpoint, "installed")
    assert report["backend"] == "onnxruntime"
    assert report["methods"] == {"gradcam": True, "ig": True, "lime": True, "shap": True}
    assert report["default"] == "gradcam"
    for method in ("lime", "shap"):
        assert report[method] == [200, method, True, 1.0], report
    assert report["heavy"] == [], f"torch-family modules were imported: {report['heavy']}"


def test_without_torch_installed_gradient_methods_are_refused(
    tmp_path: Path, checkpoint: Path
) -> None:
    report = serve_and_explain(tmp_path, checkpoint, "uninstalled")
    assert report["backend"] == "onnxruntime"
    assert report["methods"] == {"gradcam": False, "ig": False, "lime": True, "shap": True}
    assert report["default"] == "lime"
    assert report["gradcam"] == [422, "method_unavailable"]
    assert report["ig"] == [422, "method_unavailable"]
    for method in ("lime", "shap"):
        assert report[method] == [200, method, True, 1.0], report
    assert report["heavy"] == []
