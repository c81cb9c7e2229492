"""The torch backend behind the ``Backend`` protocol, and backends found by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from src.core.errors import ConfigurationError
from src.models import ModelMetadata, build_crop, save_checkpoint
from src.models.backends import Backend, FrameScore, load_backend
from src.models.backends import torch as torch_backend
from tests.helpers.checkpoints import TINY_ARCH, TINY_SIZE, make_checkpoint


def crops(metadata: ModelMetadata, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    crop = build_crop(metadata)
    return [crop(rng.integers(0, 256, (40, 50 + i, 3), dtype=np.uint8)) for i in range(count)]


def test_the_torch_backend_implements_the_protocol_and_scores_each_crop(
    checkpoint_path: Path,
) -> None:
    backend = load_backend("torch", checkpoint_path, device="cpu", threads=1)
    assert isinstance(backend, Backend)
    info = backend.describe()
    assert (info.backend, info.device, info.metadata.version) == ("torch", "cpu", "test-1")
    batch = crops(backend.metadata, 3)
    scores = backend.score(batch)
    assert all(isinstance(s, FrameScore) and 0.0 <= s.fake_prob <= 1.0 for s in scores)
    alone = [backend.score([c])[0].fake_prob for c in batch]
    assert [s.fake_prob for s in scores] == pytest.approx(alone, abs=1e-5)
    backend.warm_up([1, 2])  # blank batches run without error


def test_an_unknown_backend_name_is_a_configuration_error(checkpoint_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="unknown backend 'tensorrt'; known: torch"):
        load_backend("tensorrt", checkpoint_path)


def test_the_fake_column_follows_the_checkpoint_s_label_order(tmp_path: Path) -> None:
    """Swapping the label order (and the head's rows) must not change the fake probability."""
    standard = make_checkpoint(tmp_path / "standard.pt", seed=4)
    weights = torch_backend.load(standard).model.state_dict()
    head = next(k for k in weights if k.endswith("weight") and weights[k].shape[0] == 2)
    bias = head.replace("weight", "bias")
    swapped = {**weights, head: weights[head].flip(0), bias: weights[bias].flip(0)}
    meta = ModelMetadata(architecture=TINY_ARCH, input_size=TINY_SIZE, labels=["fake", "real"])
    reversed_path = save_checkpoint(tmp_path / "reversed.pt", swapped, meta)
    a, b = torch_backend.load(standard), torch_backend.load(reversed_path)
    batch = crops(a.metadata, 4)
    assert [s.fake_prob for s in b.score(batch)] == pytest.approx(
        [s.fake_prob for s in a.score(batch)], abs=1e-6
    )
