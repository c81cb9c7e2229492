"""The onnxruntime backend: same answers as torch, only its own checkpoint's export, the choice
``DFD_BACKEND=auto`` makes, the service end to end, and no torch in the module."""

from __future__ import annotations

import ast
import logging
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from src.core.errors import CheckpointError, ConfigurationError
from src.core.settings import Settings
from src.export import PARITY_TOLERANCE, export_onnx
from src.models import ModelMetadata, build_crop
from src.models.backends import Backend, FrameScore, choose_backend, load_backend
from src.models.backends import onnxruntime as onnx_backend
from src.models.backends import torch as torch_backend
from src.serve.app import create_app
from tests.helpers.api import AUTH, started_client
from tests.helpers.checkpoints import make_checkpoint
from tests.helpers.images import image_bytes, infer_files

REPO_ROOT = Path(__file__).resolve().parents[3]
EXPORT_HINT = "python -m src.export --checkpoint"


@pytest.fixture(scope="module")
def exported(checkpoint_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny checkpoint with its export beside it (model.pt + model.onnx)."""
    checkpoint = Path(shutil.copy(checkpoint_path, tmp_path_factory.mktemp("onnx") / "model.pt"))
    export_onnx(checkpoint)
    return checkpoint


@pytest.fixture
def bare(checkpoint_path: Path, tmp_path: Path) -> Path:
    """A copy of the tiny checkpoint with no export beside it."""
    return Path(shutil.copy(checkpoint_path, tmp_path / "model.pt"))


def crops(metadata: ModelMetadata, count: int, seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    crop = build_crop(metadata)
    return [crop(rng.integers(0, 256, (40 + i, 56, 3), dtype=np.uint8)) for i in range(count)]


# ------------------------------------------------------------------ the backend
def test_the_backend_implements_the_protocol_and_describes_itself(exported: Path) -> None:
    backend = load_backend("onnxruntime", exported, device="cpu", threads=1)
    assert isinstance(backend, Backend)
    info = backend.describe()
    assert (info.backend, info.device, info.metadata.version) == ("onnxruntime", "cpu", "test-1")
    assert backend.metadata == torch_backend.load(exported).metadata
    batch = crops(backend.metadata, 3)
    scores = backend.score(batch)
    assert all(isinstance(s, FrameScore) and 0.0 <= s.fake_prob <= 1.0 for s in scores)
    alone = [backend.score([c])[0].fake_prob for c in batch]
    assert [s.fake_prob for s in scores] == pytest.approx(alone, abs=1e-6)
    backend.warm_up([1, 4])


def test_it_normalises_exactly_as_the_torch_backend_does(exported: Path) -> None:
    ours = onnx_backend.load(exported, threads=1)
    theirs = torch_backend.load(exported, "cpu")
    batch = crops(ours.metadata, 5)
    np.testing.assert_array_equal(ours.prepare_batch(batch), theirs.prepare_batch(batch).numpy())


@pytest.mark.parametrize("batch_size", [1, 4, 9])
def test_it_answers_as_torch_does_within_the_parity_tolerance(
    exported: Path, batch_size: int
) -> None:
    ours = onnx_backend.load(exported, threads=1)
    theirs = torch_backend.load(exported, "cpu")
    batch = crops(ours.metadata, batch_size, seed=batch_size)
    got = np.array([s.fake_prob for s in ours.score(batch)])
    want = np.array([s.fake_prob for s in theirs.score(batch)])
    assert np.max(np.abs(got - want)) <= PARITY_TOLERANCE


def test_an_export_of_other_weights_is_refused(exported: Path, tmp_path: Path) -> None:
    """The checkpoint was retrained (or swapped) after the export: re-export, never serve it."""
    checkpoint = make_checkpoint(tmp_path / "model.pt", seed=1)
    shutil.copy(exported.with_suffix(".onnx"), tmp_path / "model.onnx")
    with pytest.raises(CheckpointError, match=f"another checkpoint.*re-export with `{EXPORT_HINT}"):
        onnx_backend.load(checkpoint)


def test_a_missing_truncated_or_foreign_export_is_refused(bare: Path) -> None:
    with pytest.raises(CheckpointError, match=f"no ONNX export.*export it with `{EXPORT_HINT}"):
        onnx_backend.load(bare)
    onnx_path = bare.with_suffix(".onnx")
    onnx_path.write_bytes(b"\x08\x07garbage")
    with pytest.raises(CheckpointError, match="re-export with"):
        onnx_backend.load(bare)


def test_it_serves_on_the_cpu_only(exported: Path) -> None:
    with pytest.raises(ConfigurationError, match="runs on the CPU"):
        onnx_backend.load(exported, "cuda:0")


# ------------------------------------------------------------------ the choice
def test_auto_chooses_onnxruntime_on_the_cpu_when_the_export_matches(
    exported: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="src.models.backends"):
        choice = choose_backend("auto", exported, "cpu")
    assert choice.name == "onnxruntime"
    assert "model.onnx was exported from" in choice.reason
    assert "backend onnxruntime chosen (DFD_BACKEND=auto)" in caplog.text


def test_auto_falls_back_to_torch_without_an_export_and_says_why(
    bare: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="src.models.backends"):
        choice = choose_backend("auto", bare, "cpu")
    assert choice.name == "torch"
    assert "no ONNX export" in choice.reason and EXPORT_HINT in choice.reason
    assert "backend torch chosen (DFD_BACKEND=auto): on the CPU, but no ONNX export" in caplog.text


def test_auto_falls_back_to_torch_when_the_export_is_of_other_weights(
    exported: Path, tmp_path: Path
) -> None:
    checkpoint = make_checkpoint(tmp_path / "model.pt", seed=2)
    shutil.copy(exported.with_suffix(".onnx"), tmp_path / "model.onnx")
    choice = choose_backend("auto", checkpoint, "cpu")
    assert choice.name == "torch" and "another checkpoint" in choice.reason


def test_auto_chooses_torch_on_a_gpu(exported: Path) -> None:
    assert choose_backend("auto", exported, "cuda:0").name == "torch"


def test_torch_is_chosen_when_asked_for(exported: Path) -> None:
    assert choose_backend("torch", exported, "cpu").name == "torch"


def test_onnxruntime_asked_for_without_a_matching_export_stops_the_start(
    bare: Path, exported: Path
) -> None:
    with pytest.raises(ConfigurationError, match="DFD_BACKEND=onnxruntime, but no ONNX export"):
        choose_backend("onnxruntime", bare, "cpu")
    with pytest.raises(ConfigurationError, match="set DFD_DEVICE=cpu"):
        choose_backend("onnxruntime", exported, "cuda")
    assert choose_backend("onnxruntime", exported, "cpu").name == "onnxruntime"
    with pytest.raises(ConfigurationError, match="unknown backend 'tensorrt'"):
        choose_backend("tensorrt", exported, "cpu")


def test_the_setting_takes_auto_torch_and_onnxruntime(
    settings_factory: Callable[..., Settings],
) -> None:
    assert settings_factory().backend == "auto"
    for name in ("torch", "onnxruntime"):
        assert settings_factory(backend=name).backend == name
    with pytest.raises(ValueError, match="backend"):
        settings_factory(backend="tensorrt")


# ------------------------------------------------------------------ the service
async def infer_and_ready(settings: Settings) -> tuple[dict[str, object], list[float], str]:
    async for client in started_client(create_app(settings)):
        ready = (await client.get("/ready")).json()
        answers = []
        for seed in range(3):
            files = infer_files(image_bytes(seed=seed, size=(70, 50)))
            response = await client.post("/infer", files=files, headers=AUTH)
            assert response.status_code == 200, response.text
            answers.append(response.json()["fake_prob"])
        metrics = (await client.get("/metrics")).text
    return ready, answers, metrics


@pytest.mark.anyio
async def test_the_service_serves_through_onnxruntime_by_default_on_the_cpu(
    exported: Path, settings_factory: Callable[..., Settings]
) -> None:
    ready, fast, metrics = await infer_and_ready(settings_factory(checkpoint_path=exported))
    assert ready["backend"] == "onnxruntime" and ready["device"] == "cpu"
    assert 'backend="onnxruntime"' in metrics and "dfd_model_info{" in metrics
    torch_ready, reference, _ = await infer_and_ready(
        settings_factory(checkpoint_path=exported, backend="torch")
    )
    assert torch_ready["backend"] == "torch"
    assert np.max(np.abs(np.array(fast) - np.array(reference))) <= PARITY_TOLERANCE


@pytest.mark.anyio
async def test_the_service_refuses_to_start_with_onnxruntime_and_no_export(
    bare: Path, settings_factory: Callable[..., Settings]
) -> None:
    with pytest.raises(ConfigurationError, match=EXPORT_HINT):
        async for _ in started_client(
            create_app(settings_factory(checkpoint_path=bare, backend="onnxruntime"))
        ):
            pass


# ------------------------------------------------------------------ no torch
ALLOWED_SRC_IMPORTS = {
    "src.core.errors",
    "src.core.labels",
    "src.models.backends.base",  # torch through src.models.checkpoint, for ModelMetadata
    "src.models.checkpoint",  # ModelMetadata; the module imports torch for its save/load
    "src.models.transforms",  # normalization(), NumPy; the module imports torch
}


def test_the_onnxruntime_module_itself_imports_no_torch() -> None:
    """Its own imports: no torch, timm or torchvision, and only these modules of ``src``, so
    serving without torch needs only those three to stop importing torch at module level."""
    tree = ast.parse((REPO_ROOT / "src/models/backends/onnxruntime.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    tops = {name.split(".")[0] for name in names}
    assert not tops & {"torch", "torchvision", "timm"}
    assert {name for name in names if name.startswith("src.")} <= ALLOWED_SRC_IMPORTS


def test_scoring_through_onnxruntime_loads_no_torch(exported: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "torchvision", "timm"):
                    raise ImportError(f"{{name}} is blocked")

        sys.meta_path.insert(0, NoTorch())
        from src.models.backends import load_backend
        backend = load_backend("onnxruntime", {str(exported)!r}, device="cpu", threads=1)
        size = backend.metadata.input_size
        backend.score([np.zeros((size, size, 3), np.uint8)])
        assert "torch" not in sys.modules
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
