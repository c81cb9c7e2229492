"""int8 quantisation (``src/export/quantize.py``): the file, its metadata, the AUC gate, and the
backend's refusals. Tiny checkpoint and a handful of generated images: no demo data needed."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from PIL import Image

from src.core.errors import CheckpointError, ConfigurationError
from src.export import export_onnx
from src.export import quantize as quantize_module
from src.export.__main__ import main
from src.export.quantize import SplitAccuracy, compare_split, quantize_int8
from src.models.backends import choose_backend, load_backend
from src.models.backends import onnxruntime as onnx_backend
from src.models.backends.onnxruntime import OnnxRuntimeBackend
from src.train.dataset import Sample


@pytest.fixture
def checkpoint(checkpoint_path: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    path = Path(shutil.copy(checkpoint_path, folder / "model.pt"))
    export_onnx(path)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DIR/{val,test,test_xmanip}/{real,fake}/*.png: smooth 'real' images, noisy 'fake' ones."""
    root = tmp_path_factory.mktemp("int8data")
    rng = np.random.default_rng(0)
    for split in ("val", "test", "test_xmanip"):
        for label in ("real", "fake"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                base = rng.integers(0, 256, (1, 1, 3)) * np.ones((48, 48, 3))
                if label == "fake":
                    base = base * 0.5 + rng.integers(0, 128, (48, 48, 3))
                Image.fromarray(base.clip(0, 255).astype(np.uint8)).save(folder / f"im{i}.png")
    return root


def props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def quantize(checkpoint: Path, data_dir: Path, **kwargs: object) -> quantize_module.Int8Result:
    return quantize_int8(checkpoint, data_dir / "val", **kwargs)  # type: ignore[arg-type]


def test_int8_lands_beside_the_checkpoint_with_metadata_hash_and_figures(
    checkpoint: Path, data_dir: Path
) -> None:
    result = quantize(checkpoint, data_dir, max_auc_drop=1.0)
    assert result.path == checkpoint.with_suffix(".int8.onnx") and result.offered
    recorded = props(result.path)
    fp32 = props(checkpoint.with_suffix(".onnx"))
    assert recorded["dfd.format"] == "dfd-onnx/1"
    assert recorded["dfd.precision"] == "int8" and recorded["dfd.int8_offered"] == "true"
    assert recorded["dfd.checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert recorded["dfd.metadata"] == fp32["dfd.metadata"]
    figures = json.loads(recorded["dfd.int8_accuracy"])
    assert [s["split"] for s in figures["splits"]] == ["test", "test_xmanip"]
    assert figures["calibration_images"] == 8 and figures["max_auc_drop"] == 1.0
    graph = onnx.load(str(result.path)).graph
    assert any(node.op_type == "QuantizeLinear" for node in graph.node)  # QDQ format
    assert any(node.op_type == "DequantizeLinear" for node in graph.node)


def test_int8_scores_stay_close_to_fp32(checkpoint: Path, data_dir: Path) -> None:
    result = quantize(checkpoint, data_dir, max_auc_drop=1.0)
    for split in result.splits:
        assert split.n == 8
        assert split.max_abs_diff < 0.1, split
    fp32 = load_backend("onnxruntime", checkpoint, device="cpu", threads=1)
    int8 = load_backend("onnxruntime-int8", checkpoint, device="cpu", threads=1)
    assert int8.describe().backend == "onnxruntime-int8"
    assert fp32.describe().backend == "onnxruntime"
    size = int8.metadata.input_size
    crops = [np.full((size, size, 3), v, np.uint8) for v in (0, 90, 200)]
    a = [s.fake_prob for s in fp32.score(crops)]
    b = [s.fake_prob for s in int8.score(crops)]
    assert np.allclose(a, b, atol=0.1)


def dropping(
    fp32: OnnxRuntimeBackend, int8: OnnxRuntimeBackend, split: str, samples: Sequence[Sample]
) -> SplitAccuracy:
    """The real comparison, reported as a 0.02 AUC drop on test_xmanip."""
    real = compare_split(fp32, int8, split, samples)
    drop = 0.02 if split == "test_xmanip" else 0.0
    return SplitAccuracy(split, real.n, 0.9, 0.9 - drop, real.max_abs_diff)


def test_the_gate_marks_a_large_auc_drop_not_offered_and_the_backend_refuses_it(
    checkpoint: Path, data_dir: Path
) -> None:
    result = quantize(checkpoint, data_dir, evaluate=dropping)
    assert not result.offered and result.path.is_file()
    assert props(result.path)["dfd.int8_offered"] == "false"
    with pytest.raises(CheckpointError, match="not offered"):
        onnx_backend.load(checkpoint, threads=1, precision="int8")
    with pytest.raises(ConfigurationError, match="not offered"):
        choose_backend("auto", checkpoint, "cpu", "int8")
    # fp32 is unaffected
    assert choose_backend("auto", checkpoint, "cpu").name == "onnxruntime"


def test_the_cli_exits_2_when_not_offered(
    checkpoint: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real = quantize_module.quantize_int8

    def forced(*args: Any, **kwargs: Any) -> quantize_module.Int8Result:
        return real(*args, **kwargs, evaluate=dropping)

    monkeypatch.setattr(quantize_module, "quantize_int8", forced)
    code = main(
        ["--checkpoint", str(checkpoint), "--int8", "--calibration-dir", str(data_dir / "val")]
    )
    captured = capsys.readouterr()
    assert code == 2 and "NOT offered" in captured.err
    assert "test_xmanip: ROC AUC fp32" in captured.out


def test_the_cli_writes_both_files(checkpoint: Path, data_dir: Path) -> None:
    checkpoint.with_suffix(".onnx").unlink()
    code = main(
        ["--checkpoint", str(checkpoint), "--int8", "--calibration-dir", str(data_dir / "val")]
    )
    assert code in (0, 2)  # the tiny random model's AUC may move; the files are what we check
    assert checkpoint.with_suffix(".onnx").is_file()
    assert checkpoint.with_suffix(".int8.onnx").is_file()


def test_int8_is_refused_when_missing_or_stale(checkpoint: Path, data_dir: Path) -> None:
    with pytest.raises(CheckpointError, match=r"int8 --calibration-dir"):
        onnx_backend.load(checkpoint, threads=1, precision="int8")
    with pytest.raises(ConfigurationError, match="int8"):
        choose_backend("onnxruntime", checkpoint, "cpu", "int8")
    quantize(checkpoint, data_dir, max_auc_drop=1.0)
    assert choose_backend("auto", checkpoint, "cpu", "int8").name == "onnxruntime-int8"
    assert choose_backend("auto", checkpoint, "cuda:0", "int8").name == "torch"
    with pytest.raises(ConfigurationError, match="DFD_BACKEND=torch"):
        choose_backend("torch", checkpoint, "cpu", "int8")
    with checkpoint.open("ab") as handle:  # other weights: the int8 file is stale
        handle.write(b"\0")
    with pytest.raises(CheckpointError, match="another checkpoint"):
        onnx_backend.load(checkpoint, threads=1, precision="int8")


def test_an_int8_file_is_not_served_as_fp32(checkpoint: Path, data_dir: Path) -> None:
    result = quantize(checkpoint, data_dir, max_auc_drop=1.0)
    shutil.copy(result.path, checkpoint.with_suffix(".onnx"))
    with pytest.raises(CheckpointError, match="int8 export, not fp32"):
        onnx_backend.load(checkpoint, threads=1)


def test_quantize_needs_the_fp32_export_and_data(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(quantize_module.QuantizationError, match="calibration folder"):
        quantize_int8(checkpoint, tmp_path / "nowhere")
    checkpoint.with_suffix(".onnx").unlink()
    with pytest.raises(CheckpointError, match="no ONNX export"):
        quantize_int8(checkpoint, tmp_path)
