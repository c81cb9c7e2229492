"""Binary detection metrics at frame level and at video (or identity) level.

Scores are fake probabilities and labels are 1 for fake, 0 for real. A "video" is every frame that
shares a group id (a video or identity) *and* a label, so a group that holds both real frames and
self-blended fakes of the same person gives one real and one fake "video". The video score is the
mean of its frame scores.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

__all__ = [
    "accuracy",
    "average_precision",
    "binary_metrics",
    "compute_metrics",
    "equal_error_rate",
    "log_loss",
    "roc_auc",
    "video_level",
]

_EPS = 1e-7


def _as_arrays(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} != {s.shape[0]}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    return y, s


def _has_both_classes(y: np.ndarray) -> bool:
    return bool(y.size) and 0 < int(y.sum()) < y.size


def accuracy(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, threshold: float = 0.5
) -> float:
    """Share of samples whose ``score >= threshold`` decision matches the label."""
    y, s = _as_arrays(labels, scores)
    if not y.size:
        return math.nan
    return float(((s >= threshold).astype(np.int64) == y).mean())


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN unless both classes are present."""
    y, s = _as_arrays(labels, scores)
    if not _has_both_classes(y):
        return math.nan
    return float(roc_auc_score(y, s))


def average_precision(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> float:
    """Average precision with fake as the positive class; NaN unless both classes are present."""
    y, s = _as_arrays(labels, scores)
    if not _has_both_classes(y):
        return math.nan
    return float(average_precision_score(y, s))


def equal_error_rate(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[float, float]:
    """The error rate where false-positive and false-negative rates meet, and its threshold.

    The ROC curve is linearly interpolated between the two operating points where
    ``FNR - FPR`` changes sign; the threshold is interpolated the same way.
    """
    y, s = _as_arrays(labels, scores)
    if not _has_both_classes(y):
        return math.nan, math.nan
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    thresholds = np.minimum(thresholds, 1.0) if s.max() <= 1.0 else thresholds
    fnr = 1.0 - tpr
    diff = fnr - fpr  # starts at 1 (threshold above every score), ends at -1
    index = int(np.argmax(diff <= 0))
    if diff[index] == 0 or index == 0:
        return float(fpr[index]), float(thresholds[index])
    d0, d1 = diff[index - 1], diff[index]
    weight = d0 / (d0 - d1)
    eer = fpr[index - 1] + weight * (fpr[index] - fpr[index - 1])
    threshold = thresholds[index - 1] + weight * (thresholds[index] - thresholds[index - 1])
    return float(eer), float(threshold)


def log_loss(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Mean binary cross-entropy of the fake probabilities, clipped to ``[1e-7, 1 - 1e-7]``."""
    y, s = _as_arrays(labels, scores)
    if not y.size:
        return math.nan
    p = np.clip(s, _EPS, 1.0 - _EPS)
    return float(-(y * np.log(p) + (1 - y) * np.log(1.0 - p)).mean())


def binary_metrics(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """``acc``, ``auc``, ``ap``, ``eer``, ``eer_threshold``, ``log_loss`` and counts."""
    y, s = _as_arrays(labels, scores)
    eer, eer_threshold = equal_error_rate(y, s)
    return {
        "acc": accuracy(y, s, threshold),
        "auc": roc_auc(y, s),
        "ap": average_precision(y, s),
        "eer": eer,
        "eer_threshold": eer_threshold,
        "log_loss": log_loss(y, s),
        "n": float(y.size),
        "n_fake": float(y.sum()),
    }


def video_level(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    groups: Sequence[Hashable],
) -> tuple[np.ndarray, np.ndarray, list[Hashable]]:
    """Aggregate frames to videos: one entry per ``(group, label)``, scored by the mean score.

    Returns ``(labels, scores, groups)`` in first-seen order.
    """
    y, s = _as_arrays(labels, scores)
    if len(groups) != y.size:
        raise ValueError(f"groups and labels differ in length: {len(groups)} != {y.size}")
    sums: dict[tuple[Hashable, int], list[float]] = {}
    for group, label, score in zip(groups, y.tolist(), s.tolist(), strict=True):
        entry = sums.setdefault((group, label), [0.0, 0.0])
        entry[0] += score
        entry[1] += 1.0
    keys = list(sums)
    video_labels = np.asarray([label for _, label in keys], dtype=np.int64)
    video_scores = np.asarray([sums[k][0] / sums[k][1] for k in keys], dtype=np.float64)
    return video_labels, video_scores, [group for group, _ in keys]


def compute_metrics(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    groups: Sequence[Hashable] | None = None,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Frame-level metrics, plus ``video_``-prefixed ones when group ids are given.

    Video-level metrics are left out when every video holds exactly one frame (they would just
    repeat the frame-level ones).
    """
    result = binary_metrics(labels, scores, threshold)
    if groups is not None:
        video_labels, video_scores, _ = video_level(labels, scores, groups)
        if video_labels.size < len(groups):
            for key, value in binary_metrics(video_labels, video_scores, threshold).items():
                result[f"video_{key}"] = value
    return result
