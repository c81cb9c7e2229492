"""``python -m src.export``: the ONNX file, what it records, and the parity guard."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from src.core.errors import CheckpointError
from src.export import PARITY_TOLERANCE, ParityError, export_onnx
from src.export import onnx as export_module
from src.export.__main__ import main
from src.models import read_checkpoint
from src.models.backends import onnxruntime as onnx_backend
from src.models.backends import torch as torch_backend


@pytest.fixture
def checkpoint(checkpoint_path: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint: exports land beside it, not beside the shared one."""
    return Path(shutil.copy(checkpoint_path, tmp_path / "model.pt"))


def props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_the_export_lands_beside_the_checkpoint_with_its_metadata_and_hash(
    checkpoint: Path,
) -> None:
    path = export_onnx(checkpoint)
    assert path == checkpoint.with_suffix(".onnx") and path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["model.onnx", "model.pt"]
    recorded = props(path)
    assert recorded["dfd.format"] == "dfd-onnx/1"
    assert recorded["dfd.checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    metadata = read_checkpoint(checkpoint).metadata
    assert json.loads(recorded["dfd.metadata"]) == metadata.model_dump(mode="json")
    info = onnx_backend.read_export(path.read_bytes(), path)
    assert info.metadata == metadata
    assert info.parity_max_abs_diff is not None and info.parity_max_abs_diff <= PARITY_TOLERANCE
    assert info.parity_crops == len(export_module.parity_crops(metadata))


def test_the_graph_takes_any_batch_of_normalised_nchw_and_returns_logits(
    checkpoint: Path,
) -> None:
    graph = onnx.load(str(export_onnx(checkpoint))).graph
    (graph_input,) = graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == "input"
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert [o.name for o in graph.output] == ["logits"]


def test_an_export_answers_as_torch_does_on_crops(checkpoint: Path) -> None:
    onnx_path = export_onnx(checkpoint)
    reference = torch_backend.load(checkpoint, "cpu")
    info = onnx_backend.read_export(onnx_path.read_bytes(), onnx_path)
    candidate = onnx_backend.from_bytes(onnx_path.read_bytes(), info.metadata, threads=1)
    crops = export_module.parity_crops(reference.metadata, seed=7)
    worst = export_module.max_fake_prob_difference(reference, candidate, crops)
    assert worst <= PARITY_TOLERANCE


def test_an_out_path_and_parity_images_are_honoured(checkpoint: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    from PIL import Image

    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out = export_onnx(checkpoint, tmp_path / "exports" / "tiny.onnx", parity_images=[images])
    assert out == tmp_path / "exports" / "tiny.onnx" and out.is_file()
    assert not checkpoint.with_suffix(".onnx").exists()
    metadata = read_checkpoint(checkpoint).metadata
    assert onnx_backend.read_export(out.read_bytes(), out).parity_crops == (
        len(export_module.parity_crops(metadata)) + 3
    )


def test_an_export_whose_graph_disagrees_is_refused_and_nothing_is_written(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    honest = export_module._export_graph

    def perturbed(model: nn.Module, input_size: int) -> bytes:
        with torch.no_grad():
            head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
            original = head.bias.clone()
            head.bias += torch.tensor([0.0, 0.05])  # shifts fake_prob by ~1e-2
            try:
                return honest(model, input_size)
            finally:
                head.bias.copy_(original)

    monkeypatch.setattr(export_module, "_export_graph", perturbed)
    with pytest.raises(ParityError, match=r"disagrees with torch: max \|fake_prob difference\|"):
        export_onnx(checkpoint)
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["model.pt"]


def test_nan_answers_fail_the_parity_guard(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_module, "max_fake_prob_difference", lambda *_: float("nan"))
    with pytest.raises(ParityError):
        export_onnx(checkpoint)
    assert not checkpoint.with_suffix(".onnx").exists()


def test_a_missing_or_unreadable_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        export_onnx(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        export_onnx(junk)
    assert not junk.with_suffix(".onnx").exists()


def test_the_command_prints_what_it_wrote_and_the_parity_figure(
    checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--checkpoint", str(checkpoint), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {checkpoint.with_suffix('.onnx')}" in out
    assert "parity with torch: max |fake_prob difference|" in out
    assert "tolerance 0.0001" in out


def test_the_command_exits_2_with_a_message_on_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "error: checkpoint not found" in capsys.readouterr().err
