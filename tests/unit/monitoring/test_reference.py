"""Reference statistics: bins, their storage in the checkpoint, and the command that makes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from src.core.errors import CheckpointError
from src.models.checkpoint import ModelMetadata, read_checkpoint
from src.monitoring.features import FAKE_PROB
from src.monitoring.reference import (
    REFERENCE_KEY,
    ReferenceStats,
    bin_edges,
    build_reference,
    proportions,
    reference_of,
    with_reference,
)
from src.train import reference as reference_cli
from tests.helpers.checkpoints import make_checkpoint
from tests.unit.monitoring.streams import photo_stream


def test_deciles_make_ten_even_bins_for_continuous_values() -> None:
    values = np.random.default_rng(0).normal(size=5000)
    edges = bin_edges(values)
    assert len(edges) == 9
    assert proportions(values, edges) == pytest.approx(np.full(10, 0.1), abs=0.002)


def test_a_repeated_value_gets_its_own_bin_so_larger_and_smaller_values_both_leave_it() -> None:
    values = np.array([224.0] * 90 + [300.0] * 10)
    edges = bin_edges(values)
    ref = proportions(values, edges)
    assert ref[np.searchsorted(edges, 224.0, side="right")] == pytest.approx(0.9)
    for other in (200.0, 250.0):
        assert proportions(np.array([other]), edges)[np.argmax(ref)] == 0.0


def _reference(n: int = 50) -> ReferenceStats:
    rng = np.random.default_rng(1)
    return build_reference(
        {
            "brightness": rng.uniform(50, 200, n).tolist(),
            FAKE_PROB: rng.uniform(0, 1, n).tolist(),
            "face_score": [0.99] * 5,
        },
        split="val",
        n=n,
    )


def test_values_with_too_few_samples_are_left_out() -> None:
    assert set(_reference().features) == {"brightness", FAKE_PROB}


def test_the_reference_travels_in_the_metadata_and_is_checked_on_the_way_back() -> None:
    metadata = ModelMetadata(architecture="test", version="v1")
    assert reference_of(metadata) is None
    stored = with_reference(metadata, _reference())
    assert reference_of(stored) == _reference().model_copy(
        update={"created_at": reference_of(stored).created_at}  # type: ignore[union-attr]
    )
    assert stored.model_dump(exclude={REFERENCE_KEY}) == metadata.model_dump()
    broken = metadata.model_dump(mode="json") | {REFERENCE_KEY: {"split": "val"}}
    with pytest.raises(CheckpointError, match="reference"):
        reference_of(ModelMetadata.model_validate(broken))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    for label, seed in (("real", 1), ("fake", 2)):
        folder = tmp_path / "data" / "val" / label
        folder.mkdir(parents=True)
        for index, upload in enumerate(photo_stream(12, seed=seed)):
            (folder / f"{label}_{index:03d}.jpg").write_bytes(upload)
    (tmp_path / "data" / "val" / "real" / "broken.jpg").write_bytes(b"not an image")
    return tmp_path / "data"


def test_the_command_stores_the_reference_and_keeps_the_weights(
    tmp_path: Path, data_dir: Path
) -> None:
    path = make_checkpoint(tmp_path / "model.pt", threshold=0.4)
    before = read_checkpoint(path)
    lines: list[str] = []
    code = reference_cli.main(
        ["--checkpoint", str(path), "--data", str(data_dir), "--threads", "1"], out=lines.append
    )
    assert code == 0, lines
    after = read_checkpoint(path)
    reference = reference_of(after.metadata)
    assert reference is not None and reference.n == 24  # the unreadable file is left out
    assert {"brightness", "contrast", "sharpness", "jpeg_quality", FAKE_PROB} <= set(
        reference.features
    )
    assert reference.features["jpeg_quality"].percentiles[0] >= 69  # photo_stream: 70-95
    assert after.metadata.threshold == 0.4 and after.metadata.version == before.metadata.version
    assert after.state_dict.keys() == before.state_dict.keys()
    assert all(torch.equal(after.state_dict[k], before.state_dict[k]) for k in before.state_dict)
    assert "fake_prob" in "\n".join(lines)


def test_a_checkpoint_changed_while_measured_is_not_overwritten(
    tmp_path: Path, data_dir: Path
) -> None:
    path = make_checkpoint(tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="changed"):
        reference_cli.store_reference(path, _reference(), expected_sha256="0" * 64)
    assert reference_of(read_checkpoint(path).metadata) is None


def test_the_command_reports_a_missing_split(tmp_path: Path, data_dir: Path) -> None:
    path = make_checkpoint(tmp_path / "model.pt")
    assert (
        reference_cli.main(["--checkpoint", str(path), "--data", str(data_dir), "--split", "nope"])
        == 2
    )


def test_training_ends_by_storing_the_reference_in_best_pt(tmp_path: Path, data_dir: Path) -> None:
    from src.train.config import TrainConfig
    from src.train.trainer import fit

    (data_dir / "val" / "real" / "broken.jpg").unlink()  # training refuses unreadable files
    for label, seed in (("real", 3), ("fake", 4)):  # a train split beside data_dir's val split
        folder = data_dir / "train" / label
        folder.mkdir(parents=True)
        for index, upload in enumerate(photo_stream(8, seed=seed)):
            (folder / f"{label}_{index:03d}.jpg").write_bytes(upload)
    logs: list[str] = []
    config = TrainConfig(
        data_dir=data_dir,
        out_dir=tmp_path / "run",
        arch="test_efficientnet",
        pretrained="none",
        epochs=1,
        batch_size=8,
        image_size=32,
        device="cpu",
        workers=0,
        max_steps_per_epoch=1,
        progress=False,
    )
    result = fit(config, log=logs.append)
    assert result.best_path is not None
    reference = reference_of(read_checkpoint(result.best_path).metadata)
    assert reference is not None and reference.split == "val" and reference.n == 24
    assert FAKE_PROB in reference.features
    assert any("reference statistics of 24 val images" in line for line in logs)


def test_a_later_calibration_rescales_the_fake_prob_reference_instead_of_staling_it() -> None:
    from src.monitoring.drift import population_stability_index

    rng = np.random.default_rng(0)
    logit_gap = rng.normal(0.0, 3.0, 4000)  # z_fake - z_real of the validation images
    measured = build_reference(
        {FAKE_PROB: (1 / (1 + np.exp(-logit_gap[:2000]))).tolist()}, split="val", n=2000
    )
    stored = with_reference(ModelMetadata(architecture="test"), measured)
    calibrated = stored.model_copy(update={"temperature": 4.0})  # python -m src.train.calibrate
    served = 1 / (1 + np.exp(-logit_gap[2000:] / 4.0))  # what the calibrated model answers

    def psi(reference: ReferenceStats) -> float:
        feature = reference.features[FAKE_PROB]
        return population_stability_index(
            np.asarray(feature.proportions), proportions(served, feature.edges)
        )

    assert psi(measured) > 0.2  # read as measured, the recalibration looks like drift
    rescaled = reference_of(calibrated)
    assert rescaled is not None and rescaled.temperature == 4.0
    assert psi(rescaled) < 0.05
    three_labels = calibrated.model_copy(update={"labels": ["real", "fake", "other"]})
    assert FAKE_PROB not in reference_of(three_labels).features  # type: ignore[union-attr]
