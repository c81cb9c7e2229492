"""The checkpoint format, strict loading and the shared preprocessing."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from src.core.errors import CheckpointError
from src.models import (
    ModelMetadata,
    build_crop,
    build_model,
    build_preprocess,
    read_checkpoint,
    resize_center_crop,
    save_checkpoint,
)
from src.models.backends import torch as torch_backend
from tests.helpers.checkpoints import TINY_ARCH, TINY_SIZE, make_checkpoint


def test_round_trip_keeps_weights_and_metadata(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "m.pt", seed=3, metrics={"auc": 0.9}, threshold=0.4)
    loaded = torch_backend.load(path, "cpu")
    assert loaded.metadata.architecture == TINY_ARCH
    assert loaded.metadata.metrics == {"auc": 0.9}
    assert loaded.metadata.threshold == 0.4
    torch.manual_seed(3)
    reference = build_model(TINY_ARCH).eval()
    x = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    with torch.inference_mode():
        expected = torch.softmax(reference(x), dim=1)
    assert torch.allclose(loaded.predict_proba(x), expected, atol=1e-6)
    assert not loaded.model.training
    assert list(tmp_path.iterdir()) == [path], "a temp file was left behind"
    assert path.stat().st_mode & 0o044 == 0o044, "checkpoint is not readable by other users"


def test_checkpoint_that_does_not_match_its_metadata_is_refused(tmp_path: Path) -> None:
    model = build_model("mobilenetv3_small_050")
    path = save_checkpoint(
        tmp_path / "m.pt", model.state_dict(), ModelMetadata(architecture=TINY_ARCH)
    )
    with pytest.raises(CheckpointError, match="does not match its metadata"):
        torch_backend.load(path, "cpu")


def test_label_count_must_match_the_head(tmp_path: Path) -> None:
    model = build_model(TINY_ARCH, num_classes=2)
    meta = ModelMetadata(architecture=TINY_ARCH, labels=["real", "fake", "other"])
    path = save_checkpoint(tmp_path / "m.pt", model.state_dict(), meta)
    with pytest.raises(CheckpointError, match="does not match"):
        torch_backend.load(path, "cpu")


def test_unsafe_pickles_and_foreign_files_are_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("owned",))

    evil.write_bytes(pickle.dumps({"format": "dfd-checkpoint/1", "x": Payload()}))
    with pytest.raises(CheckpointError, match="cannot read"):
        read_checkpoint(evil)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError, match="is not a dfd-checkpoint"):
        read_checkpoint(plain)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "absent.pt")
    torch.save(
        {"format": "dfd-checkpoint/1", "metadata": {"labels": ["a"]}, "state_dict": {}}, plain
    )
    with pytest.raises(CheckpointError, match="invalid metadata"):
        read_checkpoint(plain)


def test_unknown_architecture_is_a_checkpoint_error() -> None:
    with pytest.raises(CheckpointError, match="unknown architecture"):
        build_model("no_such_net_v9")


def test_preprocess_follows_metadata() -> None:
    meta = ModelMetadata(
        architecture=TINY_ARCH, input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
    )
    preprocess = build_preprocess(meta)
    gray = np.full((60, 90, 3), 191, dtype=np.uint8)
    tensor = preprocess(gray)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    assert torch.allclose(tensor, torch.full_like(tensor, (191 / 255 - 0.5) / 0.25), atol=1e-4)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        preprocess(np.zeros((10, 10), dtype=np.uint8))


def test_serving_normalises_a_batch_exactly_as_training_does(tmp_path: Path) -> None:
    """The service crops per image and normalises the batch on the device; training uses
    build_preprocess. A model must see the same numbers either way."""
    meta = ModelMetadata(
        architecture=TINY_ARCH, input_size=TINY_SIZE, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25)
    )
    path = save_checkpoint(tmp_path / "m.pt", build_model(TINY_ARCH).state_dict(), meta)
    classifier = torch_backend.load(path, "cpu")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(50 + 7 * i, 70, 3), dtype=np.uint8) for i in range(3)]
    crop, preprocess = build_crop(meta), build_preprocess(meta)
    crops = [crop(image) for image in images]
    assert all(c.dtype == np.uint8 and c.shape == (TINY_SIZE, TINY_SIZE, 3) for c in crops)
    served = classifier.prepare_batch(crops)
    trained = torch.stack([preprocess(image) for image in images])
    assert served.shape == trained.shape and served.dtype == torch.float32
    assert torch.equal(served, trained)
    assert served.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_changes_speed_not_answers(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "m.pt", seed=5)
    fast = torch_backend.load(path, "cpu")
    plain = torch_backend.load(path, "cpu", channels_last=False)
    conv = next(p for p in fast.model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = torch.randn(3, 3, TINY_SIZE, TINY_SIZE)
    assert torch.allclose(fast.predict_proba(x), plain.predict_proba(x), atol=1e-5)


def test_resize_center_crop_keeps_the_centre() -> None:
    image = np.zeros((100, 300, 3), dtype=np.uint8)
    image[:, 100:200] = 255  # a white band in the middle third
    crop = resize_center_crop(image, 50)
    assert crop.shape == (50, 50, 3)
    assert crop.mean() > 250
