"""``python -m src.train.calibrate``: temperature scaling and a decision threshold, fitted on a
validation split and written into the checkpoint's metadata.

A network trained with cross-entropy on little data is usually over-confident: its softmax says
0.999 where it is right 80 % of the time. Temperature scaling (Guo et al., ICML 2017) divides the
logits by one scalar ``T`` before the softmax, chosen to minimise the negative log-likelihood on
held-out data. It changes no ranking (ROC AUC, AP and EER stay the same) but makes the
probabilities mean what they say. Every backend applies ``metadata.temperature``
(``src/models/backends/base.py``), so the fit reaches serving, export and evaluation at once.

``T`` is found by a bounded 1-D search over ``log T`` (the NLL is convex in ``1/T``, so it has
one minimum). The decision threshold is then chosen on the *calibrated* validation probabilities
by a stated rule (:data:`THRESHOLD_RULES`). Images are read as :mod:`src.train.evaluate` reads
them: as they are on disk (face crops for a ``face_crop`` model), through the checkpoint's own
``build_preprocess``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import roc_curve
from torch.utils.data import DataLoader

from src.core.device import resolve_device
from src.core.errors import CheckpointError, DatasetError
from src.core.labels import LABELS, fake_index
from src.models.backends import torch as torch_backend
from src.models.checkpoint import Calibration, ModelMetadata, read_checkpoint, save_checkpoint
from src.models.transforms import build_preprocess
from src.train.dataset import FrameDataset, Sample, describe, load_split
from src.train.evaluate import add_scoring_arguments
from src.train.metrics import equal_error_rate

TEMPERATURE_BOUNDS = (0.05, 20.0)
ECE_BINS = 15
BALANCED_ACCURACY = "balanced_accuracy"
EER = "eer"
KEEP = "keep"
THRESHOLD_RULES = {
    BALANCED_ACCURACY: "maximises balanced accuracy (Youden's J = TPR - FPR) on the calibrated "
    "split; the cut lies halfway between the two scores it separates, ties go to the cut "
    "nearest 0.5",
    EER: "the equal-error-rate threshold of the calibrated split (FPR = FNR)",
    KEEP: "the checkpoint's threshold, unchanged",
}


@dataclass(frozen=True)
class SplitLogits:
    """Raw logits of one split, in the model's class order, with the data labels (1 fake)."""

    logits: np.ndarray  # (N, num_labels) float64
    labels: np.ndarray  # (N,) int64, 0 real / 1 fake
    model_labels: tuple[str, ...]

    @property
    def target_columns(self) -> np.ndarray:
        """The column of each item's true class in the model's output."""
        columns = np.asarray([self.model_labels.index(name) for name in LABELS])
        return columns[self.labels]

    def fake_probs(self, temperature: float) -> np.ndarray:
        probabilities = softmax(self.logits / temperature, axis=1)
        column: np.ndarray = probabilities[:, fake_index(self.model_labels)]
        return column


@dataclass(frozen=True)
class SplitFigures:
    """How well one split's probabilities fit its labels at one temperature and threshold."""

    split: str
    n: int
    nll: float
    ece: float
    accuracy: float
    balanced_accuracy: float


@dataclass(frozen=True)
class CalibrationResult:
    metadata: ModelMetadata  # the calibrated metadata
    fitted: tuple[SplitFigures, SplitFigures]  # the fitted split: uncalibrated, calibrated
    held_out: tuple[tuple[SplitFigures, SplitFigures], ...] = ()  # --report splits, same pairs

    @property
    def record(self) -> Calibration:
        assert self.metadata.calibration is not None
        return self.metadata.calibration


# ---------------------------------------------------------------------------- the fit
def negative_log_likelihood(split: SplitLogits, temperature: float) -> float:
    """Mean cross-entropy of ``softmax(logits / temperature)`` against the true classes."""
    log_probs = log_softmax(split.logits / temperature, axis=1)
    picked = log_probs[np.arange(len(split.labels)), split.target_columns]
    return float(-picked.mean())


def fit_temperature(split: SplitLogits, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The ``T`` in ``bounds`` that minimises the split's NLL (bounded search over ``log T``)."""
    if not len(split.labels):
        raise ValueError("no items to calibrate on")
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(split, math.exp(log_t)),
        bounds=(math.log(bounds[0]), math.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(math.exp(result.x))


def expected_calibration_error(
    labels: Sequence[int] | np.ndarray,
    fake_probs: Sequence[float] | np.ndarray,
    bins: int = ECE_BINS,
) -> float:
    """Top-label ECE: over ``bins`` equal-width confidence bins, the item-weighted mean gap between
    the confidence ``max(p, 1 - p)`` and the accuracy of the ``p >= 0.5`` decision."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(fake_probs, dtype=np.float64)
    if not y.size:
        return math.nan
    confidence = np.maximum(p, 1.0 - p)
    correct = ((p >= 0.5).astype(np.int64) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    gap = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            gap += members.sum() * abs(confidence[members].mean() - correct[members].mean())
    return float(gap / y.size)


def balanced_accuracy(
    labels: Sequence[int] | np.ndarray, fake_probs: Sequence[float] | np.ndarray, threshold: float
) -> float:
    """Mean of the true-positive and true-negative rates of ``p >= threshold``."""
    y = np.asarray(labels, dtype=np.int64)
    fake = np.asarray(fake_probs, dtype=np.float64) >= threshold
    if not (y == 1).any() or not (y == 0).any():
        return math.nan
    return float((fake[y == 1].mean() + (~fake[y == 0]).mean()) / 2.0)


def best_balanced_accuracy_threshold(
    labels: Sequence[int] | np.ndarray, fake_probs: Sequence[float] | np.ndarray
) -> float:
    """The threshold of :data:`THRESHOLD_RULES` ``balanced_accuracy``."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(fake_probs, dtype=np.float64)
    fpr, tpr, cuts = roc_curve(y, p, drop_intermediate=False)
    # cuts[k] is a score: "fake" when p >= cuts[k]; cuts[0] is +inf (nothing called fake).
    below = np.append(cuts[1:], -np.inf)  # the next lower score, which stays "real"
    thresholds = np.where(
        np.isfinite(below), (np.minimum(cuts, 1.0) + below) / 2.0, np.minimum(cuts, 1.0)
    )
    thresholds = np.clip(thresholds, 0.0, 1.0)
    youden = tpr - fpr
    best = np.flatnonzero(np.isclose(youden, youden.max(), rtol=0.0, atol=1e-12))
    chosen = best[np.argmin(np.abs(thresholds[best] - 0.5))]
    return float(thresholds[chosen])


def fit_threshold(
    rule: str,
    labels: Sequence[int] | np.ndarray,
    fake_probs: Sequence[float] | np.ndarray,
    current: float,
) -> float:
    if rule == BALANCED_ACCURACY:
        return best_balanced_accuracy_threshold(labels, fake_probs)
    if rule == EER:
        return float(np.clip(equal_error_rate(labels, fake_probs)[1], 0.0, 1.0))
    if rule == KEEP:
        return current
    raise ValueError(f"unknown threshold rule {rule!r}; known: {', '.join(THRESHOLD_RULES)}")


# ---------------------------------------------------------------------------- the data
def collect_logits(
    backend: torch_backend.TorchBackend,
    samples: Sequence[Sample],
    batch_size: int = 64,
    workers: int = 0,
) -> SplitLogits:
    """The model's raw logits (no temperature) on ``samples``, read as evaluation reads them."""
    dataset = FrameDataset(samples, build_preprocess(backend.metadata))
    loader: DataLoader[tuple[torch.Tensor, int]] = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers
    )
    logits_out: list[np.ndarray] = []
    labels_out: list[np.ndarray] = []
    with torch.inference_mode():
        for images, targets in loader:
            batch = images.to(backend.device, memory_format=backend.memory_format)
            logits_out.append(backend.model(batch).float().cpu().numpy().astype(np.float64))
            labels_out.append(targets.numpy().astype(np.int64))
    if not logits_out:
        raise DatasetError("the split holds no images")
    return SplitLogits(
        np.concatenate(logits_out), np.concatenate(labels_out), tuple(backend.metadata.labels)
    )


def check_both_classes(labels: np.ndarray, split: str) -> None:
    if not (labels == 1).any() or not (labels == 0).any():
        raise DatasetError(
            f"split {split!r} must hold both real and fake images to fit a threshold "
            f"({int((labels == 0).sum())} real, {int((labels == 1).sum())} fake)"
        )


# ---------------------------------------------------------------------------- the checkpoint
def calibrate_metadata(
    metadata: ModelMetadata,
    split_logits: SplitLogits,
    *,
    split: str,
    rule: str = BALANCED_ACCURACY,
    data: str | None = None,
) -> CalibrationResult:
    """Fit ``T`` and the threshold on ``split_logits`` and return the calibrated metadata.

    The fit starts from the raw logits, so calibrating a calibrated checkpoint again gives the
    same answer; the ``*_before`` figures are the uncalibrated model's (T = 1).
    """
    labels = split_logits.labels
    check_both_classes(labels, split)
    temperature = fit_temperature(split_logits)
    raw, calibrated = split_logits.fake_probs(1.0), split_logits.fake_probs(temperature)
    threshold = fit_threshold(rule, labels, calibrated, metadata.threshold)
    record = Calibration(
        split=split,
        n=int(labels.size),
        n_fake=int(labels.sum()),
        nll_before=negative_log_likelihood(split_logits, 1.0),
        nll_after=negative_log_likelihood(split_logits, temperature),
        ece_before=expected_calibration_error(labels, raw),
        ece_after=expected_calibration_error(labels, calibrated),
        threshold_rule=f"{rule}: {THRESHOLD_RULES[rule]}",
        threshold_before=metadata.threshold,
        data=data,
        fitted_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    new = metadata.model_copy(
        update={"temperature": temperature, "threshold": threshold, "calibration": record}
    )
    calibrated_metadata = ModelMetadata.model_validate(new.model_dump())
    return CalibrationResult(
        metadata=calibrated_metadata,
        fitted=compare_figures(split_logits, split, metadata, calibrated_metadata),
    )


def split_figures(
    split_logits: SplitLogits, split: str, temperature: float, threshold: float
) -> SplitFigures:
    labels = split_logits.labels
    probs = split_logits.fake_probs(temperature)
    return SplitFigures(
        split=split,
        n=int(labels.size),
        nll=negative_log_likelihood(split_logits, temperature),
        ece=expected_calibration_error(labels, probs),
        accuracy=float(((probs >= threshold).astype(np.int64) == labels).mean()),
        balanced_accuracy=balanced_accuracy(labels, probs, threshold),
    )


def compare_figures(
    split_logits: SplitLogits, split: str, before: ModelMetadata, after: ModelMetadata
) -> tuple[SplitFigures, SplitFigures]:
    """The split uncalibrated (T = 1, the old threshold) and calibrated (the fitted pair)."""
    return (
        split_figures(split_logits, split, 1.0, before.threshold),
        split_figures(split_logits, split, after.temperature, after.threshold),
    )


def calibrate_checkpoint(
    checkpoint: str | Path,
    data_dir: str | Path,
    *,
    split: str = "val",
    out: str | Path | None = None,
    rule: str = BALANCED_ACCURACY,
    report: Sequence[str] = (),
    device: str = "cpu",
    batch_size: int = 64,
    workers: int = 0,
) -> tuple[Path, CalibrationResult]:
    """Calibrate ``checkpoint`` on ``data_dir``'s ``split`` and write it (atomically) to ``out``
    (default: in place). The weights and any training state are written back unchanged.

    ``report`` names held-out splits scored before and after, never used for the fit: what the
    fit does to data it has not seen (the model card's figures).
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; known: {', '.join(THRESHOLD_RULES)}")
    if split in report:
        raise ValueError(f"split {split!r} is the one fitted on; --report takes held-out splits")
    loaded = read_checkpoint(checkpoint)
    backend = torch_backend.load(checkpoint, torch.device(resolve_device(device)))

    def logits_of(name: str) -> SplitLogits:
        samples = load_split(data_dir, name)
        print(f"{name}: {describe(samples)}", file=sys.stderr)
        return collect_logits(backend, samples, batch_size, workers)

    result = calibrate_metadata(
        loaded.metadata, logits_of(split), split=split, rule=rule, data=str(data_dir)
    )
    held_out = tuple(
        compare_figures(logits_of(name), name, loaded.metadata, result.metadata) for name in report
    )
    result = replace(result, held_out=held_out)
    target = Path(out) if out is not None else Path(checkpoint)
    save_checkpoint(target, loaded.state_dict, result.metadata, loaded.training)
    return target, result


def format_summary(result: CalibrationResult) -> str:
    """The fitted pair, then each split's NLL, ECE and accuracies uncalibrated vs calibrated."""
    record = result.record
    lines = [
        f"temperature {result.metadata.temperature:.4f} (fitted on {record.split}, "
        f"n {record.n}, {record.n_fake} fake)",
        f"threshold {record.threshold_before:.4f} -> {result.metadata.threshold:.4f} "
        f"({record.threshold_rule})",
        "",
        f"{'split':14}{'':12}{'nll':>8}{'ece':>8}{'acc':>8}{'bal_acc':>9}",
    ]
    pairs = [result.fitted, *result.held_out]
    for before, after in pairs:
        for name, figures in (("uncalibrated", before), ("calibrated", after)):
            split = before.split if name == "uncalibrated" else ""
            lines.append(
                f"{split:14}{name:12}{figures.nll:8.4f}{figures.ece:8.4f}"
                f"{figures.accuracy:8.4f}{figures.balanced_accuracy:9.4f}"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m src.train.calibrate",
        description="Fit temperature scaling (one scalar T dividing the logits, minimising the "
        "NLL) and a decision threshold on a validation split, and write both into the "
        "checkpoint's metadata (temperature, threshold, calibration). Rankings (AUC) do not "
        "change. Re-export ONNX afterwards: the export records the checkpoint's SHA-256.",
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint to calibrate")
    parser.add_argument(
        "--data",
        required=True,
        type=Path,
        help="data folder: manifest.csv with a split column, or DIR/<split>/{real,fake}",
    )
    parser.add_argument(
        "--split", default="val", help="split to fit on (default %(default)s; never the test one)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write (default: the checkpoint, in place)"
    )
    parser.add_argument(
        "--threshold-rule",
        choices=list(THRESHOLD_RULES),
        default=BALANCED_ACCURACY,
        help="how the decision threshold is chosen (default %(default)s: "
        f"{THRESHOLD_RULES[BALANCED_ACCURACY]})",
    )
    parser.add_argument(
        "--report",
        nargs="+",
        default=[],
        metavar="SPLIT",
        help="held-out split(s) to score before and after (NLL, ECE, accuracy); not fitted on",
    )
    add_scoring_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        target, result = calibrate_checkpoint(
            args.checkpoint,
            args.data,
            split=args.split,
            out=args.out,
            rule=args.threshold_rule,
            report=args.report,
            device=args.device,
            batch_size=args.batch_size,
            workers=args.workers,
        )
    except (DatasetError, CheckpointError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(result))
    print(f"wrote {target}", file=sys.stderr)
    if target.with_suffix(".onnx").exists():
        print(
            f"note: {target.with_suffix('.onnx')} was exported from the old weights' file; "
            f"re-export with `python -m src.export --checkpoint {target}`",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
