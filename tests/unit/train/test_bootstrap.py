"""Confidence intervals by resampling identities (src/train/bootstrap.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from src.train.bootstrap import (
    BootstrapOptions,
    estimate,
    format_reports,
    frame_units,
    identity_units,
    reports_for,
)
from src.train.metrics import binary_metrics


def _identity(label_scores: list[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    y, s = zip(*label_scores, strict=True)
    return np.asarray(y), np.asarray(s)


def test_the_point_value_is_the_metric_on_all_rows_and_lies_in_its_interval() -> None:
    rng = np.random.default_rng(0)
    units = {}
    for k in range(12):
        y = np.repeat([0, 1], 20)
        s = np.clip(0.5 + (y - 0.5) * rng.uniform(0.0, 0.8) + rng.normal(0, 0.25, 40), 0, 1)
        units[f"id{k}"] = (y, s)
    est, drawn = estimate(units, n_resamples=300, seed=1)
    assert drawn == 300
    every = binary_metrics(
        np.concatenate([u[0] for u in units.values()]),
        np.concatenate([u[1] for u in units.values()]),
    )
    for name, e in est.items():
        assert e.value == pytest.approx(every[name])
        assert e.low <= e.value <= e.high, name
    assert 0.5 < est["auc"].low < est["auc"].high <= 1.0
    # the same seed gives the same interval, another seed another one
    again, _ = estimate(units, n_resamples=300, seed=1)
    other, _ = estimate(units, n_resamples=300, seed=2)
    assert again == est and other["auc"] != est["auc"]


def test_identities_are_resampled_whole() -> None:
    """One identity the model gets right and one it gets exactly wrong: resampling frames would
    give a tight interval around 0.5; resampling identities spans from all-wrong to all-right."""
    good = _identity([(0, 0.1), (0, 0.2), (1, 0.8), (1, 0.9)])
    bad = _identity([(0, 0.8), (0, 0.9), (1, 0.1), (1, 0.2)])
    est, _ = estimate({"good": good, "bad": bad}, n_resamples=400, seed=0)
    assert est["auc"].low == 0.0 and est["auc"].high == 1.0
    assert est["eer"].low == 0.0 and est["eer"].high == 1.0


def test_with_one_identity_there_is_no_interval() -> None:
    est, drawn = estimate({"only": _identity([(0, 0.2), (1, 0.7)])}, n_resamples=100)
    assert drawn == 0
    assert est["auc"].value == 1.0 and math.isnan(est["auc"].low) and math.isnan(est["auc"].high)
    with pytest.raises(ValueError):
        estimate({})
    with pytest.raises(ValueError):
        estimate({"a": _identity([(0, 0.2)])}, confidence=1.0)


def test_resamples_with_one_class_are_left_out_of_the_interval() -> None:
    """Identities holding only real (or only fake) frames: resamples of one class have no AUC."""
    units = {
        "r1": _identity([(0, 0.1)]),
        "r2": _identity([(0, 0.3)]),
        "f1": _identity([(1, 0.6)]),
        "f2": _identity([(1, 0.9)]),
    }
    est, _ = estimate(units, n_resamples=200, seed=0)
    assert est["auc"].value == 1.0
    assert est["auc"].low == 1.0 and est["auc"].high == 1.0  # every valid resample separates


def test_frame_and_identity_units() -> None:
    labels = [0, 1, 0, 1, 1]
    scores = [0.1, 0.9, 0.3, 0.5, 0.7]
    ids = ["a", "a", "b", "b", "b"]
    frames = frame_units(labels, scores, ids)
    assert frames["b"][0].tolist() == [0, 1, 1]
    per_identity = identity_units(labels, scores, ids)
    assert per_identity["b"][0].tolist() == [0, 1]
    assert per_identity["b"][1].tolist() == pytest.approx([0.3, 0.6])
    with pytest.raises(ValueError):
        frame_units(labels, scores, ids[:-1])


def test_reports_cover_all_rows_then_each_source() -> None:
    rng = np.random.default_rng(3)
    labels, scores, ids, sources = [], [], [], []
    for k in range(6):
        for label in (0, 1):
            for _ in range(5):
                labels.append(label)
                scores.append(float(np.clip(0.3 + 0.4 * label + rng.normal(0, 0.2), 0, 1)))
                ids.append(f"p{k}")
                sources.append("pkg_a" if k < 4 else "pkg_b")
    reports = reports_for(
        labels, scores, ids, sources, options=BootstrapOptions(resamples=50, seed=0)
    )
    assert [(r.source, r.level) for r in reports] == [
        ("all", "frame"),
        ("all", "identity"),
        ("pkg_a", "frame"),
        ("pkg_a", "identity"),
        ("pkg_b", "frame"),
        ("pkg_b", "identity"),
    ]
    by = {(r.source, r.level): r for r in reports}
    assert by[("all", "frame")].n == 60 and by[("all", "frame")].identities == 6
    assert by[("all", "identity")].n == 12 and by[("all", "identity")].n_fake == 6
    assert by[("pkg_b", "frame")].identities == 2 and by[("pkg_b", "frame")].resamples == 50
    table = format_reports([("test", r) for r in reports])
    assert "95% bootstrap intervals over identities" in table
    assert table.splitlines()[2].split()[:5] == ["test", "all", "frame", "6", "60"]
    assert "[" in table and "]" in table
    payload = reports[0].as_json()
    assert set(payload["metrics"]["auc"]) == {"value", "low", "high"}  # type: ignore[index]
    # one source only: no per-source rows
    assert len(reports_for(labels, scores, ids, options=BootstrapOptions(10))) == 2
