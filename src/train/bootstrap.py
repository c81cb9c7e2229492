"""Confidence intervals by resampling identities (a cluster bootstrap).

Frames of one person are not independent draws: a model that fails on one face fails on most of
its frames. So the intervals here resample *identities* with replacement (each draw takes all of
an identity's rows) and recompute the metric on every resample; the interval is the 2.5th to
97.5th percentile of the resampled values (the percentile bootstrap; ``scipy.stats.bootstrap``
draws the resamples). With few identities the interval is wide, which is the point; with one
identity there is nothing to resample and no interval is given.

A *unit* is one identity's rows: ``(labels, scores)``. For frame-level metrics a unit's rows are
its frames; for identity- or video-level metrics they are its aggregated scores (one per
(identity, label) pair, or one per video).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from scipy.stats import DegenerateDataWarning, bootstrap
from sklearn.metrics import auc as area_under
from sklearn.metrics import roc_curve

from src.train.metrics import accuracy, average_precision, equal_error_rate, log_loss, video_level

__all__ = [
    "CI_METRICS",
    "DEFAULT_RESAMPLES",
    "BootstrapOptions",
    "Estimate",
    "LevelReport",
    "estimate",
    "format_reports",
    "frame_units",
    "identity_units",
    "reports_for",
    "sliced_reports",
]

CI_METRICS = ("auc", "ap", "eer", "log_loss", "acc")
DEFAULT_RESAMPLES = 1000
ALL_SOURCES = "all"

Unit = tuple[np.ndarray, np.ndarray]  # (labels, scores) of one identity
T = TypeVar("T")


@dataclass(frozen=True)
class BootstrapOptions:
    """How the intervals are drawn: resamples (0: none), confidence level, seed."""

    resamples: int = DEFAULT_RESAMPLES
    confidence: float = 0.95
    seed: int = 0


@dataclass(frozen=True)
class Estimate:
    """A metric on the data as it is, and its bootstrap interval (NaN when there is none)."""

    value: float
    low: float
    high: float

    def as_json(self) -> dict[str, float | None]:
        return {k: (None if math.isnan(v) else v) for k, v in vars(self).items()}


@dataclass(frozen=True)
class LevelReport:
    """Metrics with intervals for one (source, level) slice of an evaluation."""

    source: str  # "all" or the package the images come from
    level: str  # "frame", "identity", "video_<rule>"
    n: int  # rows scored at this level (frames, identity groups or videos)
    n_fake: int
    identities: int
    resamples: int  # bootstrap resamples drawn (0: no interval)
    metrics: dict[str, Estimate]

    def as_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "level": self.level,
            "n": self.n,
            "n_fake": self.n_fake,
            "identities": self.identities,
            "resamples": self.resamples,
            "metrics": {k: v.as_json() for k, v in self.metrics.items()},
        }


def _metrics(units: Sequence[Unit], threshold: float) -> dict[str, float]:
    """:data:`CI_METRICS` as :func:`src.train.metrics.binary_metrics` computes them; the ROC
    AUC is read off one ``roc_curve`` (what ``roc_auc_score`` does for two classes), as this
    runs once per resample."""
    y = np.concatenate([u[0] for u in units])
    s = np.concatenate([u[1] for u in units])
    nan = math.nan
    auc = ap = eer = nan
    if 0 < int(y.sum()) < y.size:
        fpr, tpr, _ = roc_curve(y, s)
        auc = float(area_under(fpr, tpr))
        ap = average_precision(y, s)
        eer = equal_error_rate(y, s)[0]
    return {
        "auc": auc,
        "ap": ap,
        "eer": eer,
        "log_loss": log_loss(y, s),
        "acc": accuracy(y, s, threshold),
    }


def estimate(
    units: Mapping[Hashable, Unit],
    threshold: float = 0.5,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[dict[str, Estimate], int]:
    """Each of :data:`CI_METRICS` on all ``units`` (identity -> (labels, scores)), with its
    percentile interval over ``n_resamples`` resamples of the identities; and the number of
    resamples drawn (0 when there are fewer than two identities or ``n_resamples`` is 0)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    keys = list(units)
    if not keys:
        raise ValueError("no identities to estimate on")
    rows = [
        (np.asarray(units[k][0], np.int64).ravel(), np.asarray(units[k][1], np.float64).ravel())
        for k in keys
    ]
    point = _metrics(rows, threshold)
    if len(keys) < 2 or n_resamples <= 0:
        nan = math.nan
        return {k: Estimate(v, nan, nan) for k, v in point.items()}, 0

    def statistic(index: np.ndarray) -> np.ndarray:
        chosen = [rows[int(i)] for i in np.asarray(index).ravel()]
        values = _metrics(chosen, threshold)
        return np.asarray([values[k] for k in CI_METRICS], dtype=np.float64)

    with warnings.catch_warnings():
        # resamples without both classes give NaN metrics; they are left out below instead
        warnings.simplefilter("ignore", DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        result = bootstrap(
            (np.arange(len(keys)),),
            statistic,
            n_resamples=n_resamples,
            vectorized=False,
            method="percentile",
            confidence_level=confidence,
            rng=np.random.default_rng(seed),
        )
    draws = np.asarray(result.bootstrap_distribution, dtype=np.float64)  # (metrics, resamples)
    tail = 100.0 * (1.0 - confidence) / 2.0
    out: dict[str, Estimate] = {}
    for i, name in enumerate(CI_METRICS):
        valid = draws[i][~np.isnan(draws[i])]
        if valid.size == 0:
            out[name] = Estimate(point[name], math.nan, math.nan)
            continue
        low, high = np.percentile(valid, [tail, 100.0 - tail])
        out[name] = Estimate(point[name], float(low), float(high))
    return out, n_resamples


def frame_units(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    identities: Sequence[Hashable],
) -> dict[Hashable, Unit]:
    """Each identity's frames."""
    y = np.asarray(labels, np.int64).ravel()
    s = np.asarray(scores, np.float64).ravel()
    if not len(identities) == y.size == s.size:
        raise ValueError("labels, scores and identities differ in length")
    index: dict[Hashable, list[int]] = {}
    for i, ident in enumerate(identities):
        index.setdefault(ident, []).append(i)
    return {k: (y[v], s[v]) for k, v in index.items()}


def identity_units(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    identities: Sequence[Hashable],
) -> dict[Hashable, Unit]:
    """Each identity's mean score per label (one row for its real frames, one for its fakes):
    the identity-level rows of :func:`src.train.metrics.video_level`."""
    v_labels, v_scores, v_groups = video_level(labels, scores, identities)
    index: dict[Hashable, list[int]] = {}
    for i, group in enumerate(v_groups):
        index.setdefault(group, []).append(i)
    return {k: (v_labels[v], v_scores[v]) for k, v in index.items()}


def sliced_reports(
    items: Sequence[T],
    source_of: Callable[[T], str],
    levels: Mapping[str, Callable[[Sequence[T]], dict[Hashable, Unit]]],
    threshold: float = 0.5,
    options: BootstrapOptions | None = None,
) -> list[LevelReport]:
    """A :class:`LevelReport` per level, over all ``items`` and then per source (when they come
    from more than one). ``levels`` maps a level name to a function that turns items into
    units (identity -> rows)."""
    options = options or BootstrapOptions()
    slices: list[tuple[str, list[T]]] = [(ALL_SOURCES, list(items))]
    names = sorted({source_of(i) for i in items})
    if len(names) > 1:
        slices += [(name, [i for i in items if source_of(i) == name]) for name in names]
    reports: list[LevelReport] = []
    for source, chosen in slices:
        for level, make in levels.items():
            units = make(chosen)
            metrics, drawn = estimate(
                units, threshold, options.resamples, options.confidence, options.seed
            )
            n = sum(len(u[0]) for u in units.values())
            n_fake = int(sum(int(u[0].sum()) for u in units.values()))
            reports.append(LevelReport(source, level, n, n_fake, len(units), drawn, metrics))
    return reports


def reports_for(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    identities: Sequence[Hashable],
    sources: Sequence[str] | None = None,
    threshold: float = 0.5,
    options: BootstrapOptions | None = None,
) -> list[LevelReport]:
    """Frame- and identity-level reports of scored frames, overall and per source."""
    y = np.asarray(labels, np.int64).ravel()
    s = np.asarray(scores, np.float64).ravel()
    ids = list(identities)
    src = list(sources) if sources is not None else [""] * len(ids)
    if not y.size == s.size == len(ids) == len(src):
        raise ValueError("labels, scores, identities and sources differ in length")

    def frames(rows: Sequence[int]) -> dict[Hashable, Unit]:
        return frame_units(y[list(rows)], s[list(rows)], [ids[i] for i in rows])

    def per_identity(rows: Sequence[int]) -> dict[Hashable, Unit]:
        return identity_units(y[list(rows)], s[list(rows)], [ids[i] for i in rows])

    return sliced_reports(
        list(range(y.size)),
        lambda i: src[i],
        {"frame": frames, "identity": per_identity},
        threshold,
        options,
    )


def _cell(e: Estimate) -> str:
    if math.isnan(e.value):
        return "-"
    if math.isnan(e.low):
        return f"{e.value:.4f}"
    return f"{e.value:.4f} [{e.low:.4f}, {e.high:.4f}]"


def format_reports(rows: Sequence[tuple[str, LevelReport]], confidence: float = 0.95) -> str:
    """A table: one line per (title, report), metric cells ``value [low, high]``."""
    metrics = ("auc", "ap", "eer", "log_loss")
    header = ["split", "source", "level", "ids", "n", *metrics]
    table = [
        [
            title,
            r.source,
            r.level,
            str(r.identities),
            str(r.n),
            *(_cell(r.metrics[m]) for m in metrics),
        ]
        for title, r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
    lines = [
        f"metrics with {round(100 * confidence)}% bootstrap intervals over identities "
        "(value [low, high]; no interval with one identity)",
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    return "\n".join(line.rstrip() for line in lines)
