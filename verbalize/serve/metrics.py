"""Prometheus metrics of the service (each app has its own registry, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The service's counters, gauges and histograms, all prefixed ``verbalize_``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "verbalize_requests",
            "Classification requests answered, by template and HTTP status",
            ["template", "status"],
            registry=r,
        )
        self.texts = Counter("verbalize_texts", "Texts classified, by template", ["template"], registry=r)
        self.latency = Histogram(
            "verbalize_request_latency_seconds",
            "Time from a classify request's arrival to its answer",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("verbalize_queue_depth_texts", "Texts waiting for the model", registry=r)
        self.batch_texts = Histogram(
            "verbalize_batch_texts", "Texts per scorer call (one micro-batch group)", buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "verbalize_batch_requests", "Requests per micro-batch", buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "verbalize_batch_seconds", "Model time per micro-batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.rejected = Counter(
            "verbalize_rejected",
            "Requests refused or dropped (queue_full, not_ready, stopping, deadline, read_timeout)",
            ["reason"],
            registry=r,
        )
        self.abandoned = Counter(
            "verbalize_abandoned_requests", "Queued requests whose client had gone before scoring", registry=r
        )
        self.reloads = Counter(
            "verbalize_template_reloads", "Template reloads after a file changed, by result", ["result"], registry=r
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
