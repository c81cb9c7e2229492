"""On ONNX Runtime the service imports no torch at all: not at start, not for an image, a
video or a batch, with the face detector on (a torch-free image can serve).

The service runs in its own interpreter (this test process has torch loaded already).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from src.export import export_onnx
from tests.helpers.checkpoints import make_checkpoint
from tests.helpers.torch_free import run_onnx_app_script

pytestmark = pytest.mark.slow

SCRIPT = r"""
import asyncio, json, sys
from pathlib import Path
import httpx
from src.core.settings import Settings
from src.serve.app import create_app

async def main():
    app = create_app(Settings(_env_file=None))
    statuses = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            key = {"X-API-Key": "demo-key"}
            image = Path("examples/fake_0.jpg").read_bytes()
            video = Path("examples/fake_0.mp4").read_bytes()
            for path, files in (
                ("/infer", {"file": ("a.jpg", image)}),
                ("/infer/video?frames=4", {"file": ("a.mp4", video)}),
                ("/infer/batch", [("files", ("a.jpg", image)), ("files", ("b.jpg", image))]),
            ):
                answer = await client.post(path, files=files, headers=key)
                statuses.append(answer.status_code)
            backend = (await client.get("/ready")).json()["backend"]
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "timm"))
    print(json.dumps({"statuses": statuses, "backend": backend, "heavy": heavy[:5]}))

asyncio.run(main())
"""


def test_onnxruntime_serving_never_imports_torch(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "model.pt")
    export_onnx(checkpoint)
    report = run_onnx_app_script(SCRIPT, checkpoint, tmp_path / "store")
    assert report["backend"] == "onnxruntime"
    assert report["statuses"] == [200, 200, 200]
    assert report["heavy"] == [], f"torch-family modules were imported: {report['heavy']}"
