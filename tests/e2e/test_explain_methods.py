"""On ONNX Runtime where torch is not installed (the torch-free image) the page offers LIME and
SHAP only, LIME chosen, with a note saying why, and an image is still explained (with torch it
offers all four: ``test_web_page.py``).

"Not installed" is made for the second server by a ``sitecustomize`` that refuses torch,
torchvision, timm and Captum as a missing package does (``ModuleNotFoundError``).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from src.core.settings import DEFAULT_CHECKPOINT
from src.export import export_onnx
from tests.e2e.test_web_page import EXAMPLES, TIMEOUT_MS, natural_width, offered, open_page
from tests.helpers import REPO_ROOT
from tests.helpers.api import TEST_KEY
from tests.helpers.server import served

UNINSTALLED = '''
import sys


class Uninstalled:
    """torch, torchvision, timm and Captum are not installed (for the browser tests)."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm", "captum"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Uninstalled())
'''


@pytest.fixture(scope="module")
def torch_free_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo model exported to ONNX and served on ONNX Runtime by a process without torch."""
    folder = tmp_path_factory.mktemp("torch-free")
    checkpoint = folder / "model.pt"
    shutil.copy(REPO_ROOT / DEFAULT_CHECKPOINT, checkpoint)
    export_onnx(checkpoint)
    site = folder / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(UNINSTALLED)
    with served(
        checkpoint,
        PYTHONPATH=str(site),
        DFD_BACKEND="onnxruntime",
        DFD_TORCH_THREADS="2",
        DFD_STORE="off",
        DFD_LOG_LEVEL="WARNING",
    ) as (base, _, _):
        yield base


def test_without_torch_only_lime_and_shap_are_offered_and_lime_explains(
    page: Page, torch_free_url: str
) -> None:
    open_page(page, torch_free_url)
    assert offered(page) == ["lime", "shap"]
    expect(page.locator("#method")).to_have_value("lime")
    note = page.locator("#method-note")
    expect(note).to_be_visible()
    expect(note).to_contain_text("Grad-CAM and Integrated Gradients need PyTorch")
    expect(note).to_contain_text("onnxruntime")
    page.get_by_label("API key").fill(TEST_KEY)
    page.locator("#file").set_input_files(EXAMPLES / "fake_0.jpg")
    with page.expect_response(re.compile(r"/explain\?method=lime$")) as answer:
        page.get_by_role("button", name="Check it").click()
    assert answer.value.status == 200, answer.value.text()
    expect(page.locator("#overlay-caption")).to_contain_text("lime", timeout=TIMEOUT_MS)
    page.wait_for_function("document.getElementById('overlay').complete")
    assert natural_width(page, "#overlay") >= 256
