"""Prometheus metrics, defined in one place.

Each app gets its own :class:`Metrics` (and registry), so several apps can live in one process
(tests) and nothing is a module-level global.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

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
            buckets=MODEL_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "dfd_queue_wait_seconds",
            "Time an image waited in the queue before its batch ran",
            buckets=MODEL_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "dfd_batch_size",
            "Images per forward pass",
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
            "dfd_predictions", "Predictions returned, by label", ["label"], registry=r
        )
        self.fake_probability = Histogram(
            "dfd_fake_probability",
            "Distribution of returned fake_prob",
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

    # EngineEvents: what the engine reports, as Prometheus series.
    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason=reason).inc()

    def preprocessed(self, seconds: float) -> None:
        self.preprocess_latency.observe(seconds)

    def queue_depth(self, depth: int) -> None:
        self.queue_depth_gauge.set(depth)

    def queue_waited(self, seconds: float) -> None:
        self.queue_wait.observe(seconds)

    def batch_ran(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference_latency.observe(seconds)

    def readiness(self, ready: bool) -> None:
        self.ready.set(1 if ready else 0)

    def prediction_made(self, label: str, fake_prob: float) -> None:
        self.predictions.labels(label=label).inc()
        self.fake_probability.observe(fake_prob)
