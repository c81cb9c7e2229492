"""Prometheus metrics, defined in one place.

Each app gets its own :class:`Metrics` (and registry), so several apps can live in one process
(tests) and nothing is a module-level global.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

if TYPE_CHECKING:
    from src.engine.service import InferenceService
    from src.monitoring.drift import DriftReport

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
MODEL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
PROBABILITY_BUCKETS = tuple(i / 10 for i in range(1, 11))


class Metrics:
    """The service's Prometheus series; also the engine's :class:`EngineEvents`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.http_requests = Counter(
            "dfd_http_requests",
            "HTTP requests handled",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "dfd_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.http_in_flight = Gauge(
            "dfd_http_requests_in_flight", "HTTP requests being served", registry=r
        )
        self.preprocess_latency = Histogram(
            "dfd_preprocess_seconds",
            "Decode, validation and preprocessing time per image",
            buckets=MODEL_BUCKETS,
            registry=r,
        )
        self.inference_latency = Histogram(
            "dfd_model_inference_seconds",
            "Model time per batch: normalising it on the device, then the forward pass",
            ["model_version"],
            buckets=MODEL_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "dfd_queue_wait_seconds",
            "Time an image waited in the queue before its batch ran",
            ["model_version"],
            buckets=MODEL_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "dfd_batch_size",
            "Images per forward pass",
            ["model_version"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.queue_depth_gauge = Gauge(
            "dfd_queue_depth", "Images waiting for a forward pass", registry=r
        )
        self.rejections = Counter(
            "dfd_inference_rejected",
            "Inference requests refused by backpressure",
            ["reason"],
            registry=r,
        )
        self.predictions = Counter(
            "dfd_predictions",
            "Predictions returned, by label and model version",
            ["label", "model_version"],
            registry=r,
        )
        # Explanations (POST /explain): their own series, so /infer's latency stays its own.
        self.explanations = Counter(
            "dfd_explanations",
            "Explanations answered, by method and outcome (ok, or the error code)",
            ["method", "outcome"],
            registry=r,
        )
        self.explanation_latency = Histogram(
            "dfd_explanation_seconds",
            "Time to make an explanation's heat map, by method",
            ["method"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.fake_probability = Histogram(
            "dfd_fake_probability",
            "Distribution of returned fake_prob, by model version",
            ["model_version"],
            buckets=PROBABILITY_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "dfd_model_info",
            "The model being served (value is always 1)",
            ["version", "architecture", "device", "backend"],
            registry=r,
        )
        self.ready = Gauge("dfd_ready", "1 when the service takes inference requests", registry=r)
        self.model_loads = Counter(
            "dfd_model_loads",
            "Model version loads, by outcome (ok, failed)",
            ["outcome"],
            registry=r,
        )
        self.shadow_scores = Counter(
            "dfd_shadow_scores",
            "Requests scored aside by the shadow version: stored, skipped (service full), lost",
            ["outcome"],
            registry=r,
        )
        self._prediction_series: dict[tuple[str, str], Any] = {}
        self._probability_series: dict[str, Any] = {}
        self._add_key_and_limit_series(r)
        self._add_store_series(r)
        self._add_drift_series(r)

    def _add_key_and_limit_series(self, r: CollectorRegistry) -> None:
        """Keys, scopes and rate limits (src/serve/auth.py, src/serve/ratelimit.py). Keys are
        labelled by name (bounded: DFD_RATE_LIMIT_METRIC_KEYS names, the rest ``other``)."""
        self.rate_limit_requests = Counter(
            "dfd_rate_limit_requests",
            "Charged requests by key name and result: allowed, limited, or unchecked (the "
            "rate-limit storage was unreachable)",
            ["key", "result"],
            registry=r,
        )
        self.rate_limit_units = Counter(
            "dfd_rate_limit_units", "Units (images, frames, files) allowed", ["key"], registry=r
        )
        self.auth_refusals = Counter(
            "dfd_auth_refused",
            "Refused authentications: missing, unknown, expired, revoked, scope, address_limited",
            ["reason"],
            registry=r,
        )
        self.rate_limit_storage_up = Gauge(
            "dfd_rate_limit_storage_up",
            "1 while the rate-limit storage (memory or Redis) answers",
            registry=r,
        )
        self.rate_limit_storage_errors = Counter(
            "dfd_rate_limit_storage_errors", "Failed calls to the rate-limit storage", registry=r
        )
        self.managed_keys = Gauge(
            "dfd_managed_keys", "Keys in the key file, by status", ["status"], registry=r
        )
        self.key_file_reloads = Counter(
            "dfd_key_file_reloads", "Reads of the key file, by result", ["result"], registry=r
        )

    def rate_limited(self, key: str, result: str, units: int) -> None:
        self.rate_limit_requests.labels(key=key, result=result).inc()
        if units:
            self.rate_limit_units.labels(key=key).inc(units)

    def key_file_read(self, ok: bool, counts: dict[str, int]) -> None:
        self.key_file_reloads.labels(result="ok" if ok else "error").inc()
        for status, count in counts.items():
            self.managed_keys.labels(status=status).set(count)

    # EngineEvents: what the engine reports, as Prometheus series.
    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason=reason).inc()

    def preprocessed(self, seconds: float) -> None:
        self.preprocess_latency.observe(seconds)

    def queue_depth(self, depth: int) -> None:
        self.queue_depth_gauge.set(depth)

    def queue_waited(self, seconds: float) -> None:
        self.queue_wait.labels(model_version="").observe(seconds)

    def batch_ran(self, size: int, seconds: float) -> None:
        self.batch_size.labels(model_version="").observe(size)
        self.inference_latency.labels(model_version="").observe(seconds)

    def for_version(self, version: str) -> VersionEvents:
        """The engine events of one model version's batcher: its batches and queue waits carry
        the ``model_version`` label."""
        return VersionEvents(self, version)

    def readiness(self, ready: bool) -> None:
        self.ready.set(1 if ready else 0)

    def version_loaded(self, service: InferenceService) -> None:
        """One ``dfd_model_info`` series per loaded version."""
        self.model_info.labels(*_info_labels(service)).set(1)

    def version_unloaded(self, service: InferenceService) -> None:
        with contextlib.suppress(KeyError):
            self.model_info.remove(*_info_labels(service))

    def prediction_made(self, label: str, fake_prob: float, model_version: str) -> None:
        # The labelled series are looked up once per (label, version), not per answer.
        counter = self._prediction_series.get((label, model_version))
        if counter is None:
            counter = self.predictions.labels(label=label, model_version=model_version)
            self._prediction_series[label, model_version] = counter
        counter.inc()
        histogram = self._probability_series.get(model_version)
        if histogram is None:
            histogram = self.fake_probability.labels(model_version=model_version)
            self._probability_series[model_version] = histogram
        histogram.observe(fake_prob)

    # The result store, cache and jobs (src/store); the writer's StoreEvents.
    def _add_store_series(self, r: CollectorRegistry) -> None:
        self.store_queue = Gauge(
            "dfd_store_queue_depth", "Results waiting for the store's writer", registry=r
        )
        self.store_written = Counter(
            "dfd_store_rows_written", "Results inserted into the database", registry=r
        )
        self.store_failures = Counter(
            "dfd_store_write_failures",
            "Database writes that failed (the rows were spooled)",
            registry=r,
        )
        self.store_spooled = Counter(
            "dfd_store_rows_spooled", "Results written to the on-disk spool", registry=r
        )
        self.store_dropped = Counter(
            "dfd_store_rows_dropped", "Results lost because the spool was full", registry=r
        )
        self.store_spool_size = Gauge(
            "dfd_store_spool_bytes", "Bytes in the spool, waiting for the database", registry=r
        )
        self.cache_lookups = Counter(
            "dfd_cache_lookups", "Result cache lookups", ["cache", "result"], registry=r
        )
        self.feedback = Counter(
            "dfd_feedback", "Ground-truth feedback posted", ["label", "replaced"], registry=r
        )
        self.jobs = Counter(
            "dfd_jobs", "Asynchronous jobs, by how they ended", ["status"], registry=r
        )

    def store_queue_depth(self, depth: int) -> None:
        self.store_queue.set(depth)

    def store_rows_written(self, rows: int) -> None:
        self.store_written.inc(rows)

    def store_write_failed(self) -> None:
        self.store_failures.inc()

    def store_rows_spooled(self, rows: int) -> None:
        self.store_spooled.inc(rows)

    def store_rows_dropped(self, rows: int) -> None:
        self.store_dropped.inc(rows)

    def store_spool_bytes(self, size: int) -> None:
        self.store_spool_size.set(size)

    # Drift (src/monitoring/drift.py): one series per value and model version, while known;
    # and how full admission is, for the queue-saturation alert (deploy/prometheus/alerts.yml).
    def _add_drift_series(self, r: CollectorRegistry) -> None:
        self.inference_pending = Gauge(
            "dfd_inference_pending",
            "Images and video frames admitted and not yet answered",
            registry=r,
        )
        self.inference_capacity = Gauge(
            "dfd_inference_capacity",
            "The most images and frames admitted at once (DFD_MAX_QUEUE_SIZE)",
            registry=r,
        )
        self.drift_psi = Gauge(
            "dfd_drift_psi",
            "Population stability index of the last images against the checkpoint's reference "
            "(above 0.2: a shift); absent until the window holds DFD_DRIFT_MIN_SAMPLES images",
            ["feature", "model_version"],
            registry=r,
        )
        self.drift_ks = Gauge(
            "dfd_drift_ks",
            "Kolmogorov-Smirnov statistic of the last images against the reference",
            ["feature", "model_version"],
            registry=r,
        )
        self.drift_window = Gauge(
            "dfd_drift_window_images",
            "Scored images in the drift window",
            ["model_version"],
            registry=r,
        )

    def watch_admission(self, pending: Callable[[], float], capacity: int) -> None:
        """Read the pending count when scraped (no event on every admit and release)."""
        self.inference_pending.set_function(pending)
        self.inference_capacity.set(capacity)

    def drift_computed(self, report: DriftReport) -> None:
        version = report.model_version
        self.drift_window.labels(model_version=version).set(report.samples)
        for feature, drift in report.features.items():
            for gauge, value in ((self.drift_psi, drift.psi), (self.drift_ks, drift.ks)):
                if value is not None:
                    gauge.labels(feature=feature, model_version=version).set(value)
                else:
                    # Unknown (too few samples, no reference) is no series, never a stale one.
                    with contextlib.suppress(KeyError):
                        gauge.remove(feature, version)


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The registry in the format the scraper asked for: OpenMetrics (with exemplars: the
    trace id of a request in the latency histograms) when its ``Accept`` names it, else the
    classic text format, which has no exemplars."""
    if accept and "application/openmetrics-text" in accept:
        return generate_openmetrics(registry), OPENMETRICS_TYPE
    return generate_latest(registry), CONTENT_TYPE_LATEST


class VersionEvents:
    """:class:`Metrics` as one model version's batcher reports to it (``Metrics.for_version``)."""

    def __init__(self, metrics: Metrics, version: str) -> None:
        self._metrics = metrics
        self._batch_size = metrics.batch_size.labels(model_version=version)
        self._latency = metrics.inference_latency.labels(model_version=version)
        self._wait = metrics.queue_wait.labels(model_version=version)

    def rejected(self, reason: str) -> None:
        self._metrics.rejected(reason)

    def preprocessed(self, seconds: float) -> None:
        self._metrics.preprocessed(seconds)

    def queue_depth(self, depth: int) -> None:
        self._metrics.queue_depth(depth)

    def queue_waited(self, seconds: float) -> None:
        self._wait.observe(seconds)

    def batch_ran(self, size: int, seconds: float) -> None:
        self._batch_size.observe(size)
        self._latency.observe(seconds)

    def readiness(self, ready: bool) -> None:
        self._metrics.readiness(ready)


def _info_labels(service: InferenceService) -> tuple[str, str, str, str]:
    info = service.describe()
    return (service.version, info.metadata.architecture, info.device, info.backend)
