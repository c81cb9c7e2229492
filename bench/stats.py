"""Percentiles and per-level summaries of what the load generator recorded."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation (numpy's default method)."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


@dataclass
class LevelResult:
    """What one run of the load generator at one concurrency saw."""

    concurrency: int
    wall_s: float
    latencies_s: list[float] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    client_cpu_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return summarize(
            self.concurrency, self.wall_s, self.latencies_s, self.statuses, self.client_cpu_s
        )


def summarize(
    concurrency: int,
    wall_s: float,
    latencies_s: Sequence[float],
    statuses: Iterable[str],
    client_cpu_s: float = 0.0,
) -> dict[str, Any]:
    """Throughput counts 200 answers only; latency percentiles are over the 200 answers.

    ``latencies_s`` and ``statuses`` are parallel: one entry per finished request. A status is
    the HTTP code as a string, or ``timeout`` / ``error:<Type>`` when no answer came.
    """
    statuses = list(statuses)
    if len(statuses) != len(latencies_s):
        raise ValueError("latencies and statuses must have one entry per request")
    ok = [lat for lat, status in zip(latencies_s, statuses, strict=True) if status == "200"]
    counts = Counter(statuses)
    to_ms = 1000.0
    return {
        "concurrency": concurrency,
        "requests": len(statuses),
        "ok": len(ok),
        "wall_s": round(wall_s, 3),
        "throughput_rps": round(len(ok) / wall_s, 2) if wall_s > 0 else 0.0,
        "p50_ms": round(percentile(ok, 50) * to_ms, 2) if ok else None,
        "p95_ms": round(percentile(ok, 95) * to_ms, 2) if ok else None,
        "p99_ms": round(percentile(ok, 99) * to_ms, 2) if ok else None,
        "max_ms": round(max(ok) * to_ms, 2) if ok else None,
        "statuses": dict(sorted(counts.items())),
        "client_cpu_s": round(client_cpu_s, 3),
    }


def histogram_delta(
    before: Mapping[str, Any] | None, after: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Subtract two scrapes of one histogram, each ``{"buckets": {le: n}, "sum", "count"}``."""
    if not after:
        return None
    before = before or {"buckets": {}, "sum": 0.0, "count": 0.0}
    buckets = {le: after["buckets"][le] - before["buckets"].get(le, 0.0) for le in after["buckets"]}
    return {
        "buckets": buckets,
        "sum": after["sum"] - before["sum"],
        "count": after["count"] - before["count"],
    }


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float:
    """Prometheus-style quantile (0-1) from cumulative buckets, interpolating inside a bucket."""
    bounds = sorted(buckets)
    if not bounds:
        return math.nan
    total = buckets[bounds[-1]]
    if total <= 0:
        return math.nan
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return previous_bound
            in_bucket = count - previous_count
            if in_bucket <= 0:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / in_bucket
        previous_bound, previous_count = bound, count
    return previous_bound


def describe_histogram(delta: Mapping[str, Any] | None, scale: float = 1.0) -> dict[str, Any]:
    """Mean, p50 and p95 of a histogram delta, multiplied by ``scale`` (1000 for ms)."""
    if not delta or delta["count"] <= 0:
        return {"count": 0}
    buckets = delta["buckets"]
    return {
        "count": int(delta["count"]),
        "mean": round(delta["sum"] / delta["count"] * scale, 3),
        "p50": round(histogram_quantile(0.5, buckets) * scale, 3),
        "p95": round(histogram_quantile(0.95, buckets) * scale, 3),
    }
