"""``python -m src.train.calibrate``: temperature scaling, the threshold rule, the metadata it
writes, and every backend applying the temperature before the softmax."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from src.core.errors import CheckpointError
from src.export import PARITY_TOLERANCE, export_onnx
from src.export import onnx as export_module
from src.models import read_checkpoint
from src.models.backends import onnxruntime as onnx_backend
from src.models.backends import torch as torch_backend
from src.models.checkpoint import CHECKPOINT_FORMAT, ModelMetadata
from src.train import calibrate
from src.train.calibrate import (
    SplitLogits,
    best_balanced_accuracy_threshold,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from src.train.evaluate import evaluate_checkpoint
from tests.helpers.checkpoints import make_checkpoint


def _overconfident_logits(n: int, scale: float, seed: int = 0) -> SplitLogits:
    """Two-class logits whose labels follow ``sigmoid(z)``, reported as ``scale * z``: the
    temperature that calibrates them is ``scale``."""
    rng = np.random.default_rng(seed)
    margin = rng.normal(0.0, 2.0, n)
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-margin))).astype(np.int64)
    logits = np.stack([np.zeros(n), scale * margin], axis=1)
    return SplitLogits(logits, labels, ("real", "fake"))


# --- the fit -------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_the_fitted_temperature_undoes_a_known_over_or_under_confidence(scale: float) -> None:
    split = _overconfident_logits(20_000, scale)
    temperature = fit_temperature(split)
    assert temperature == pytest.approx(scale, rel=0.06)
    assert negative_log_likelihood(split, temperature) < negative_log_likelihood(split, 1.0)
    before = expected_calibration_error(split.labels, split.fake_probs(1.0))
    after = expected_calibration_error(split.labels, split.fake_probs(temperature))
    assert after < 0.02 < before


def test_nll_reads_the_true_class_by_the_models_label_order() -> None:
    split = _overconfident_logits(2_000, 3.0)
    swapped = SplitLogits(split.logits[:, ::-1].copy(), split.labels, ("fake", "real"))
    assert negative_log_likelihood(swapped, 2.0) == pytest.approx(
        negative_log_likelihood(split, 2.0)
    )
    assert np.allclose(swapped.fake_probs(2.0), split.fake_probs(2.0))


def test_ece_is_the_gap_between_confidence_and_accuracy() -> None:
    labels = np.array([1] * 8 + [0] * 2)
    assert expected_calibration_error(labels, np.full(10, 0.9)) == pytest.approx(0.1)
    assert expected_calibration_error(labels, np.full(10, 0.8)) == pytest.approx(0.0)
    assert math.isnan(expected_calibration_error([], []))


def test_the_threshold_maximises_balanced_accuracy_halfway_between_scores() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert best_balanced_accuracy_threshold(labels, [0.1, 0.2, 0.3, 0.35, 0.6, 0.9]) == (
        pytest.approx(0.325)
    )
    # overlapping classes, 9 real and 3 fake: calling 0.7 fake costs one real of nine but wins
    # one fake of three, so the best cut is below it, at (0.7 + 0.65) / 2
    real = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7]
    fake = [0.65, 0.8, 0.9]
    threshold = best_balanced_accuracy_threshold([0] * 9 + [1] * 3, real + fake)
    assert threshold == pytest.approx((0.65 + 0.5) / 2)


def test_tied_cuts_go_to_the_one_nearest_one_half() -> None:
    # perfectly separable with a wide gap: every cut in (0.2, 0.9) is as good; the midpoint of
    # the gap's two scores is the one the rule gives
    assert best_balanced_accuracy_threshold([0, 0, 1, 1], [0.1, 0.2, 0.9, 0.95]) == (
        pytest.approx(0.55)
    )


# --- the checkpoint ------------------------------------------------------------------------


def _write_split(root: Path, split: str, n: int, *, only_real: bool = False) -> None:
    rng = np.random.default_rng(0)
    for label in ("real",) if only_real else ("real", "fake"):
        folder = root / split / label
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            if label == "fake":
                image[10:30, 10:30] = 255 - image[10:30, 10:30]
            cv2.imwrite(str(folder / f"id{k}_f0.png"), image)


@pytest.fixture
def checkpoint(checkpoint_path: Path, tmp_path: Path) -> Path:
    return Path(shutil.copy(checkpoint_path, tmp_path / "model.pt"))


def test_the_cli_writes_temperature_threshold_and_record_and_keeps_the_weights(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_split(tmp_path / "data", "val", 6)
    out = tmp_path / "out" / "calibrated.pt"
    code = calibrate.main(
        ["--checkpoint", str(checkpoint), "--data", str(tmp_path / "data"), "--out", str(out)]
    )
    assert code == 0
    assert "temperature" in capsys.readouterr().out
    before, after = read_checkpoint(checkpoint), read_checkpoint(out)
    assert before.metadata.temperature == 1.0 and before.metadata.calibration is None
    record = after.metadata.calibration
    assert record is not None
    assert (record.method, record.split, record.n, record.n_fake) == (
        "temperature_scaling",
        "val",
        12,
        6,
    )
    assert record.threshold_rule.startswith("balanced_accuracy")
    assert record.nll_after <= record.nll_before + 1e-9
    assert 0.05 <= after.metadata.temperature <= 20.0
    assert after.metadata.temperature != 1.0
    assert all(torch.equal(after.state_dict[k], v) for k, v in before.state_dict.items())
    assert sorted(p.name for p in out.parent.iterdir()) == ["calibrated.pt"]  # no temp files

    # the record's figures are what the served probabilities give: evaluation scores through
    # the backend, so its log loss is the calibrated NLL, and the uncalibrated file's the old one
    samples = calibrate.load_split(tmp_path / "data", "val")
    device = torch.device("cpu")
    calibrated = evaluate_checkpoint(out, samples, "val", device).metrics["log_loss"]
    uncalibrated = evaluate_checkpoint(checkpoint, samples, "val", device).metrics["log_loss"]
    assert calibrated == pytest.approx(record.nll_after, rel=1e-5)
    assert uncalibrated == pytest.approx(record.nll_before, rel=1e-5)


def test_calibrating_in_place_twice_gives_the_same_fit(checkpoint: Path, tmp_path: Path) -> None:
    _write_split(tmp_path / "data", "val", 4)
    args = ["--checkpoint", str(checkpoint), "--data", str(tmp_path / "data")]
    assert calibrate.main(args) == 0
    first = read_checkpoint(checkpoint).metadata
    assert calibrate.main([*args, "--threshold-rule", "keep"]) == 0
    second = read_checkpoint(checkpoint).metadata
    assert second.temperature == pytest.approx(first.temperature, rel=1e-9)
    assert second.calibration is not None and first.calibration is not None
    assert second.calibration.nll_before == pytest.approx(first.calibration.nll_before)
    assert second.threshold == first.threshold  # "keep"


def test_a_split_with_one_class_is_refused_and_nothing_is_written(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_split(tmp_path / "data", "val", 4, only_real=True)
    data = checkpoint.read_bytes()
    code = calibrate.main(["--checkpoint", str(checkpoint), "--data", str(tmp_path / "data")])
    assert code == 2
    assert "both real and fake" in capsys.readouterr().err
    assert checkpoint.read_bytes() == data


def test_a_missing_split_or_checkpoint_is_a_usage_error(checkpoint: Path, tmp_path: Path) -> None:
    _write_split(tmp_path / "data", "val", 2)
    assert calibrate.main(["--checkpoint", str(checkpoint), "--data", str(tmp_path / "none")]) == 2
    missing = tmp_path / "missing.pt"
    assert calibrate.main(["--checkpoint", str(missing), "--data", str(tmp_path / "data")]) == 2


# --- metadata and backends -----------------------------------------------------------------


def test_a_checkpoint_written_before_the_field_existed_loads_with_temperature_one(
    checkpoint: Path, tmp_path: Path
) -> None:
    payload = torch.load(checkpoint, weights_only=True)
    for key in ("temperature", "calibration"):
        payload["metadata"].pop(key)
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    metadata = read_checkpoint(old).metadata
    assert metadata.temperature == 1.0 and metadata.calibration is None


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_temperature_that_is_not_a_positive_number_is_refused(tmp_path: Path, bad: float) -> None:
    with pytest.raises(ValueError):
        ModelMetadata(architecture="x", temperature=bad)
    path = make_checkpoint(tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    payload["metadata"]["temperature"] = bad
    assert payload["format"] == CHECKPOINT_FORMAT
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="temperature"):
        read_checkpoint(path)


def test_torch_and_onnxruntime_apply_the_temperature_before_the_softmax_and_agree(
    tmp_path: Path,
) -> None:
    path = make_checkpoint(tmp_path / "model.pt", seed=3, temperature=0.25)
    export_onnx(path)  # its own parity guard runs on the temperature-scaled probabilities
    torch_scaled = torch_backend.load(path, "cpu")
    onnx_scaled = onnx_backend.load(path, threads=1)
    assert onnx_scaled.metadata.temperature == 0.25
    crops = export_module.parity_crops(torch_scaled.metadata, seed=11)
    worst = export_module.max_fake_prob_difference(torch_scaled, onnx_scaled, crops)
    assert worst <= PARITY_TOLERANCE

    batch = torch_scaled.prepare_batch(crops)
    with torch.inference_mode():
        logits = torch_scaled.model(batch).double()
    expected = torch.softmax(logits / 0.25, dim=1)[:, 1].numpy()
    got = np.asarray([s.fake_prob for s in torch_scaled.score(crops)])
    assert np.allclose(got, expected, atol=1e-5)
    unscaled = torch.softmax(logits, dim=1)[:, 1].numpy()
    assert np.abs(got - unscaled).max() > 1e-3  # the temperature changed the answers
