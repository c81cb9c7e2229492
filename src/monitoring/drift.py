"""Online drift: the last images' features against the checkpoint's reference statistics.

On the request path a :class:`DriftWindow` only appends a few floats to bounded deques (on the
event loop, so no lock). Every ``DFD_DRIFT_INTERVAL_S`` the :class:`DriftMonitor` copies each
window (on the loop, a few thousand floats) and compares it with the reference on a worker
thread: the population stability index over the reference's bins, and the Kolmogorov-Smirnov
statistic against its percentiles. One window per model version, so a canary's inputs and
answers are judged against its own reference.

PSI reads as usual: below 0.1 no change, 0.1-0.2 a moderate one, above 0.2 a shift worth a look
(the alert rule fires on 0.2 held for 15 minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from src.monitoring.features import FAKE_PROB, MONITORED
from src.monitoring.reference import FeatureReference, ReferenceStats, proportions

logger = logging.getLogger(__name__)
# An empty bin on either side counts as this share, so one bin cannot make the index infinite.
PSI_FLOOR = 1e-4
DRIFT_THRESHOLD = 0.2


def population_stability_index(reference: np.ndarray, current: np.ndarray) -> float:
    """``sum((c - r) * ln(c / r))`` over the bins, both sides floored at ``PSI_FLOOR``."""
    ref = np.maximum(np.asarray(reference, dtype=np.float64), PSI_FLOOR)
    cur = np.maximum(np.asarray(current, dtype=np.float64), PSI_FLOOR)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def ks_statistic(reference_percentiles: list[float] | np.ndarray, values: np.ndarray) -> float:
    """The largest gap between the window's empirical CDF and the reference's, the latter read
    as a step function from its percentiles (good to about one percentile)."""
    percentiles = np.asarray(reference_percentiles, dtype=np.float64)
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    count = len(ordered)
    if count == 0:
        return 0.0
    # The reference CDF just below and at each value, so ties and steps count from both sides.
    below = np.searchsorted(percentiles, ordered, side="left") / len(percentiles)
    at = np.searchsorted(percentiles, ordered, side="right") / len(percentiles)
    ranks = np.arange(count, dtype=np.float64)
    gaps = np.maximum(np.abs(at - (ranks + 1) / count), np.abs(below - ranks / count))
    return float(gaps.max())


@dataclass(frozen=True)
class FeatureDrift:
    """One value's comparison; ``psi`` and ``ks`` are None while the window holds fewer than
    the minimum samples or the reference lacks the value."""

    samples: int
    mean: float | None
    psi: float | None = None
    ks: float | None = None
    edges: list[float] | None = None
    reference: list[float] | None = None
    current: list[float] | None = None


@dataclass(frozen=True)
class DriftReport:
    model_version: str
    window_size: int
    samples: int
    computed_at: str
    reference: ReferenceStats | None
    features: dict[str, FeatureDrift] = field(default_factory=dict)

    @property
    def drifted(self) -> list[str]:
        """The values whose PSI is above ``DRIFT_THRESHOLD``."""
        return [
            name
            for name, drift in self.features.items()
            if drift.psi is not None and drift.psi > DRIFT_THRESHOLD
        ]


def compare_feature(
    values: np.ndarray, reference: FeatureReference | None, min_samples: int
) -> FeatureDrift:
    mean = float(values.mean()) if len(values) else None
    if reference is None:
        return FeatureDrift(samples=len(values), mean=mean)
    current = proportions(values, reference.edges)
    enough = len(values) >= min_samples
    return FeatureDrift(
        samples=len(values),
        mean=mean,
        psi=population_stability_index(np.asarray(reference.proportions), current)
        if enough
        else None,
        ks=ks_statistic(reference.percentiles, values) if enough else None,
        edges=reference.edges,
        reference=reference.proportions,
        current=current.tolist(),
    )


class DriftWindow:
    """The last ``size`` values of every monitored value, for one model version."""

    def __init__(self, version: str, reference: ReferenceStats | None, size: int) -> None:
        self.version = version
        self.reference = reference
        self.size = size
        self._values: dict[str, deque[float]] = {name: deque(maxlen=size) for name in MONITORED}
        self._images: deque[None] = deque(maxlen=size)

    def record(self, features: Mapping[str, float], fake_prob: float) -> None:
        """One scored image. Call on the event loop (appends only: microseconds)."""
        values = self._values
        for name, value in features.items():
            values[name].append(value)
        values[FAKE_PROB].append(fake_prob)
        self._images.append(None)

    def snapshot(self) -> dict[str, np.ndarray]:
        """A copy of every window, to compare off the loop."""
        return {name: np.fromiter(values, np.float64) for name, values in self._values.items()}

    @property
    def samples(self) -> int:
        return len(self._images)

    def report(self, snapshot: Mapping[str, np.ndarray], min_samples: int) -> DriftReport:
        """Compare a snapshot with the reference (pure: runs on a worker thread)."""
        known = self.reference.features if self.reference is not None else {}
        return DriftReport(
            model_version=self.version,
            window_size=self.size,
            samples=max((len(values) for values in snapshot.values()), default=0),
            computed_at=datetime.now(UTC).isoformat(timespec="seconds"),
            reference=self.reference,
            features={
                name: compare_feature(values, known.get(name), min_samples)
                for name, values in snapshot.items()
                if len(values) or name in known
            },
        )


class DriftMonitor:
    """Every model version's window, compared with its reference every ``interval_s``."""

    def __init__(
        self,
        window_size: int,
        min_samples: int,
        interval_s: float,
        on_report: Callable[[DriftReport], None] | None = None,
    ) -> None:
        self.window_size = window_size
        self.min_samples = min_samples
        self.interval_s = interval_s
        self._on_report = on_report
        self._windows: dict[str, DriftWindow] = {}
        self._reports: dict[str, DriftReport] = {}
        self._task: asyncio.Task[None] | None = None

    def window(self, version: str, reference: ReferenceStats | None) -> DriftWindow:
        """The window for ``version`` (a new one, empty, if its reference changed)."""
        current = self._windows.get(version)
        if current is None or current.reference != reference:
            current = DriftWindow(version, reference, self.window_size)
            self._windows[version] = current
        return current

    def forget(self, version: str) -> None:
        """Stop following a version that is no longer served."""
        self._windows.pop(version, None)
        self._reports.pop(version, None)

    @property
    def reports(self) -> list[DriftReport]:
        """The latest comparison of every version, as of the last refresh."""
        return [self._reports[v] for v in sorted(self._reports)]

    async def refresh(self) -> list[DriftReport]:
        """Compare every window now: copied on the loop, compared on a worker thread."""
        windows = list(self._windows.values())
        snapshots = [window.snapshot() for window in windows]
        reports = await asyncio.to_thread(
            lambda: [w.report(s, self.min_samples) for w, s in zip(windows, snapshots, strict=True)]
        )
        for report in reports:
            if report.model_version in self._windows:
                self._reports[report.model_version] = report
                if self._on_report is not None:
                    self._on_report(report)
        return reports

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="drift-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                reports = await self.refresh()
            except Exception:  # a bad window must not end monitoring for the others
                logger.exception("drift comparison failed")
                continue
            for report in reports:
                if report.drifted:
                    logger.warning(
                        "input drift on model %s: PSI above %.1f for %s",
                        report.model_version,
                        DRIFT_THRESHOLD,
                        ", ".join(report.drifted),
                        extra={"model_version": report.model_version, "drifted": report.drifted},
                    )
