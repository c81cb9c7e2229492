"""Frame scores to a video score (src/core/aggregate.py)."""

from __future__ import annotations

import pytest

from src.core.aggregate import AGGREGATE_RULES, DEFAULT_AGGREGATE, aggregate


def test_the_rules_and_the_default() -> None:
    assert AGGREGATE_RULES == ("mean", "max", "confident")
    assert DEFAULT_AGGREGATE in AGGREGATE_RULES


def test_mean_and_max() -> None:
    probs = [0.1, 0.2, 0.9]
    assert aggregate(probs, "mean") == pytest.approx(0.4)
    assert aggregate(probs, "max") == 0.9


def test_confident_takes_the_mean_of_confident_fakes_when_there_are_enough() -> None:
    # 32 frames (the DFDC winner's setting): 13 > 32 / 2.5 confident fakes -> their mean
    probs = [0.9] * 13 + [0.5] * 19
    assert aggregate(probs, "confident") == pytest.approx(0.9)
    # 12 is not more than 32 // 2.5: the plain mean
    probs = [0.9] * 12 + [0.5] * 20
    assert aggregate(probs, "confident") == pytest.approx((0.9 * 12 + 0.5 * 20) / 32)


def test_confident_fake_minimum_scales_with_the_number_of_frames() -> None:
    # 8 frames: more than 8 / 2.5 = 3.2 and more than 11 / 32 * 8 = 2.75 -> 4 suffice
    assert aggregate([0.95] * 4 + [0.3] * 4, "confident") == pytest.approx(0.95)
    assert aggregate([0.95] * 3 + [0.3] * 5, "confident") == pytest.approx((0.95 * 3 + 1.5) / 8)


def test_confident_takes_the_mean_of_confident_reals_when_nearly_all_are() -> None:
    probs = [0.1] * 19 + [0.6]  # 95 % confidently real
    assert aggregate(probs, "confident") == pytest.approx(0.1)
    probs = [0.1] * 9 + [0.6]  # 90 % is not more than 90 %
    assert aggregate(probs, "confident") == pytest.approx((0.9 + 0.6) / 10)


def test_confident_fakes_win_over_a_real_majority_only_past_the_share() -> None:
    probs = [0.05] * 6 + [0.99] * 4  # 4 > 10 / 2.5 fails (not more than 4)
    assert aggregate(probs, "confident") == pytest.approx(aggregate(probs, "mean"))
    probs = [0.05] * 5 + [0.99] * 5
    assert aggregate(probs, "confident") == pytest.approx(0.99)


def test_one_frame() -> None:
    for rule in AGGREGATE_RULES:
        assert aggregate([0.7], rule) == pytest.approx(0.7)  # type: ignore[arg-type]
    assert aggregate([0.9], "confident") == pytest.approx(0.9)


@pytest.mark.parametrize("probs", [[], [1.2], [-0.1], [float("nan")]])
def test_no_scores_or_a_non_probability_is_a_value_error(probs: list[float]) -> None:
    with pytest.raises(ValueError):
        aggregate(probs, "mean")


def test_an_unknown_rule_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="median"):
        aggregate([0.5], "median")  # type: ignore[arg-type]
