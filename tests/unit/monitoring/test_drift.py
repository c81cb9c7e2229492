"""Drift both ways: a shifted stream raises the right features' PSI past 0.2, an unshifted one
from the same source stays low. Images go through the service's own preparation."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from src.engine.preprocess import FramePreparer
from src.media.images import ImageLimits
from src.models.checkpoint import ModelMetadata
from src.monitoring.drift import (
    DRIFT_THRESHOLD,
    DriftMonitor,
    DriftWindow,
    ks_statistic,
    population_stability_index,
)
from src.monitoring.features import FAKE_PROB, Features
from src.monitoring.reference import ReferenceStats, build_reference
from tests.unit.monitoring.streams import photo_stream

LIMITS = ImageLimits(frozenset({"JPEG", "PNG"}), 5_000_000, 40_000_000, 12_000, 16)
METADATA = ModelMetadata(architecture="test", input_size=160)
REFERENCE_IMAGES = 400
STREAM_IMAGES = 300
MIN_SAMPLES = 100


def _measured(uploads: list[bytes]) -> list[Features]:
    preparer = FramePreparer(METADATA, LIMITS, measure=True)
    prepared = [preparer.prepare_bytes(data) for data in uploads]
    assert all(item.features is not None for item in prepared)
    return [item.features for item in prepared if item.features is not None]


def _scores(count: int, seed: int, a: float = 2.0, b: float = 5.0) -> np.ndarray:
    return np.random.default_rng(seed).beta(a, b, count)


@pytest.fixture(scope="module")
def reference() -> ReferenceStats:
    features = _measured(photo_stream(REFERENCE_IMAGES, seed=1))
    values: dict[str, list[float]] = {name: [f[name] for f in features] for name in features[0]}
    values[FAKE_PROB] = _scores(REFERENCE_IMAGES, seed=1).tolist()
    return build_reference(values, split="val", n=REFERENCE_IMAGES)


def _psi(reference: ReferenceStats, uploads: list[bytes], scores: np.ndarray) -> dict[str, float]:
    window = DriftWindow("v1", reference, size=STREAM_IMAGES)
    for features, score in zip(_measured(uploads), scores, strict=True):
        window.record(features, float(score))
    report = window.report(window.snapshot(), MIN_SAMPLES)
    assert report.samples == STREAM_IMAGES
    psi = {name: drift.psi for name, drift in report.features.items()}
    assert all(value is not None for value in psi.values()), psi
    return {name: float(value) for name, value in psi.items() if value is not None}


def test_an_unshifted_stream_stays_below_the_threshold(reference: ReferenceStats) -> None:
    psi = _psi(reference, photo_stream(STREAM_IMAGES, seed=2), _scores(STREAM_IMAGES, seed=2))
    assert set(psi) == {
        "brightness",
        "contrast",
        "sharpness",
        "jpeg_quality",
        "image_size",
        FAKE_PROB,
    }
    assert max(psi.values()) < 0.1, psi


@pytest.mark.parametrize(
    ("shift", "drifted", "steady"),
    [
        ({"darken": 0.5}, {"brightness"}, {"jpeg_quality", "image_size", FAKE_PROB}),
        ({"blur": 2.5}, {"sharpness"}, {"brightness", "jpeg_quality", "image_size", FAKE_PROB}),
        ({"quality": 25}, {"jpeg_quality"}, {"brightness", "contrast", "image_size", FAKE_PROB}),
    ],
    ids=["darkened", "blurred", "recompressed"],
)
def test_a_shifted_stream_raises_the_right_features(
    reference: ReferenceStats, shift: dict[str, float], drifted: set[str], steady: set[str]
) -> None:
    uploads = photo_stream(STREAM_IMAGES, seed=2, **shift)  # type: ignore[arg-type]
    psi = _psi(reference, uploads, _scores(STREAM_IMAGES, seed=2))
    for name in drifted:
        assert psi[name] > DRIFT_THRESHOLD, (name, psi)
    for name in steady:
        assert psi[name] < 0.1, (name, psi)


def test_a_shift_in_the_answers_shows_in_fake_prob(reference: ReferenceStats) -> None:
    skewed = _scores(STREAM_IMAGES, seed=2, a=5.0, b=2.0)  # the model now says "fake" far more
    psi = _psi(reference, photo_stream(STREAM_IMAGES, seed=2), skewed)
    assert psi[FAKE_PROB] > DRIFT_THRESHOLD
    assert psi["brightness"] < 0.1


def test_psi_and_ks_on_known_distributions() -> None:
    assert population_stability_index(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0
    # (0.9 - 0.5) ln(0.9/0.5) + (0.1 - 0.5) ln(0.1/0.5)
    expected = 0.4 * np.log(1.8) - 0.4 * np.log(0.2)
    assert population_stability_index(np.array([0.5, 0.5]), np.array([0.9, 0.1])) == (
        pytest.approx(expected)
    )
    # An empty bin is floored, not infinite.
    assert np.isfinite(population_stability_index(np.array([0.0, 1.0]), np.array([1.0, 0.0])))
    uniform = np.linspace(0, 1, 101)
    rng = np.random.default_rng(0)
    assert ks_statistic(uniform, rng.uniform(0, 1, 2000)) < 0.05
    assert ks_statistic(uniform, rng.uniform(0.5, 1.5, 2000)) == pytest.approx(0.5, abs=0.05)


def test_too_few_samples_or_no_reference_report_no_psi(reference: ReferenceStats) -> None:
    window = DriftWindow("v1", reference, size=50)
    for features in _measured(photo_stream(10, seed=5)):
        window.record(features, 0.3)
    report = window.report(window.snapshot(), min_samples=20)
    assert report.samples == 10
    assert all(
        drift.psi is None and drift.current is not None for drift in report.features.values()
    )
    bare = DriftWindow("v0", None, size=50)
    bare.record({"brightness": 100.0}, 0.3)
    report = bare.report(bare.snapshot(), min_samples=1)
    assert report.features["brightness"].psi is None
    assert report.features["brightness"].mean == 100.0


def test_the_window_keeps_only_the_last_images() -> None:
    window = DriftWindow("v1", None, size=3)
    for value in range(5):
        window.record({"brightness": float(value)}, 0.5)
    assert window.samples == 3
    assert window.snapshot()["brightness"].tolist() == [2.0, 3.0, 4.0]


@pytest.mark.anyio
async def test_the_monitor_publishes_every_version_and_follows_a_new_reference(
    reference: ReferenceStats,
) -> None:
    published = []
    monitor = DriftMonitor(
        window_size=100, min_samples=5, interval_s=0.05, on_report=published.append
    )
    canary = monitor.window("v2", reference)
    stable = monitor.window("v1", None)
    assert monitor.window("v2", reference) is canary  # the same window while nothing changed
    for features in _measured(photo_stream(8, seed=9, darken=0.4)):
        canary.record(features, 0.5)
        stable.record(features, 0.5)
    monitor.start()
    try:
        for _ in range(100):
            if {r.model_version for r in published} == {"v1", "v2"}:
                break
            await asyncio.sleep(0.02)
    finally:
        await monitor.stop()
    assert [r.model_version for r in monitor.reports] == ["v1", "v2"]
    by_version = {r.model_version: r for r in monitor.reports}
    assert "brightness" in by_version["v2"].drifted
    assert by_version["v1"].drifted == []
    monitor.forget("v1")
    assert [r.model_version for r in monitor.reports] == ["v2"]
