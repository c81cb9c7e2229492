"""Detection metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from src.train.metrics import (
    accuracy,
    average_precision,
    binary_metrics,
    compute_metrics,
    equal_error_rate,
    log_loss,
    roc_auc,
    video_level,
)


def test_auc_counts_ordered_pairs_and_half_ties() -> None:
    # Pairs (fake, real): (0.35, 0.1) yes, (0.35, 0.4) no, (0.8, 0.1) yes, (0.8, 0.4) yes: 3/4.
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([0, 0, 1], [0.2, 0.6, 0.6]) == pytest.approx((1 + 0.5) / 2)
    assert roc_auc([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0


def test_auc_and_ap_undefined_for_one_class() -> None:
    assert math.isnan(roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))
    assert math.isnan(average_precision([0, 0], [0.2, 0.5]))
    assert all(math.isnan(v) for v in equal_error_rate([0, 0], [0.1, 0.2]))


def test_average_precision_hand_computed() -> None:
    # Ranked: 0.9 fake (P=1), 0.8 real, 0.7 fake (P=2/3): AP = (1 + 2/3) / 2.
    assert average_precision([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(5 / 6)


def test_eer_separable_is_zero() -> None:
    eer, threshold = equal_error_rate([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert eer == 0.0
    assert 0.2 < threshold <= 0.8


def test_eer_where_false_positive_and_negative_rates_meet() -> None:
    # 10 real, 10 fake. Above 0.5: 2 real (0.6, 0.7) and 8 fake; below: 8 real and 2 fake.
    # Any threshold in (0.45, 0.6] gives FPR = FNR = 0.2.
    real = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.6, 0.7]
    fake = [0.3, 0.45, 0.65, 0.75, 0.8, 0.85, 0.9, 0.92, 0.95, 0.99]
    labels = [0] * 10 + [1] * 10
    eer, threshold = equal_error_rate(labels, real + fake)
    assert eer == pytest.approx(0.2)
    assert 0.45 < threshold <= 0.65
    predicted_fake = np.asarray(real + fake) >= threshold
    fpr = predicted_fake[:10].mean()
    fnr = 1 - predicted_fake[10:].mean()
    assert fpr == pytest.approx(0.2) and fnr == pytest.approx(0.2)


def test_eer_interpolates_between_operating_points() -> None:
    # ROC points (0, 0.5) then (0.5, 0.5) then (0.5, 1): FNR = FPR at 0.5.
    eer, _ = equal_error_rate([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
    assert eer == pytest.approx(0.5)


def test_log_loss_and_accuracy_by_hand() -> None:
    assert log_loss([1, 0], [0.8, 0.3]) == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2)
    assert math.isfinite(log_loss([1, 0], [0.0, 1.0]))  # clipped, not inf
    assert accuracy([1, 0, 1, 0], [0.9, 0.2, 0.4, 0.5]) == pytest.approx(0.5)
    assert accuracy([1, 0, 1, 0], [0.9, 0.2, 0.4, 0.5], threshold=0.3) == pytest.approx(0.75)
    assert accuracy([1, 0, 1, 0], [0.9, 0.2, 0.4, 0.35], threshold=0.38) == pytest.approx(1.0)


def test_matches_sklearn_on_random_scores() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.clip(rng.normal(0.4 + 0.2 * labels, 0.2), 0, 1)
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert log_loss(labels, scores) == pytest.approx(
        sk_log_loss(labels, np.clip(scores, 1e-7, 1 - 1e-7)), rel=1e-9
    )


def test_shuffled_labels_give_chance_auc() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 2000)
    scores = np.clip(rng.normal(0.3 + 0.4 * labels, 0.15), 0, 1)
    assert roc_auc(labels, scores) > 0.9
    shuffled = rng.permutation(labels)
    assert abs(roc_auc(shuffled, scores) - 0.5) < 0.05
    assert abs(equal_error_rate(shuffled, scores)[0] - 0.5) < 0.05


def test_video_level_is_mean_score_per_group_and_label() -> None:
    groups = ["a", "a", "b", "b", "a"]
    labels = [0, 0, 1, 1, 1]
    scores = [0.1, 0.3, 0.6, 1.0, 0.9]
    video_labels, video_scores, video_groups = video_level(labels, scores, groups)
    assert video_groups == ["a", "b", "a"]
    assert video_labels.tolist() == [0, 1, 1]
    assert video_scores.tolist() == pytest.approx([0.2, 0.8, 0.9])


def test_compute_metrics_adds_video_level_only_when_frames_aggregate() -> None:
    labels = [0, 0, 1, 1]
    scores = [0.1, 0.7, 0.4, 0.9]
    frame_only = compute_metrics(labels, scores, groups=["a", "b", "c", "d"])
    assert not any(k.startswith("video_") for k in frame_only)
    with_video = compute_metrics(labels, scores, groups=["a", "a", "b", "b"])
    assert with_video["auc"] == pytest.approx(0.75)
    assert with_video["video_auc"] == 1.0  # means 0.4 (real) vs 0.65 (fake)
    assert with_video["video_n"] == 2.0
    assert set(binary_metrics(labels, scores)) == {
        "acc",
        "auc",
        "ap",
        "eer",
        "eer_threshold",
        "log_loss",
        "n",
        "n_fake",
    }


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError):
        roc_auc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError):
        roc_auc([0, 1], [0.1])
    with pytest.raises(ValueError):
        video_level([0, 1], [0.1, 0.2], ["a"])
