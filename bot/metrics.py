"""Prometheus metrics of the bot process, served by `GET /metrics`.

Each `Metrics` object owns a `CollectorRegistry`, so several can live in one process
(tests build one per server). The process has one active instance, which the
module-level helpers write to:

    from bot import metrics
    metrics.record_prediction(prediction.model_version, seconds, source="telegram")
    metrics.record_feedback("correct")
    metrics.record_error("decode_truncated")

Label values must come from small fixed sets (model versions, feedback kinds, error
kinds), never from user input, because every distinct value is a new time series.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

logger = logging.getLogger(__name__)

NAMESPACE = "flowerbot"

# Bucket bounds in seconds. A CPU forward pass of ConvNeXt-Tiny takes roughly 20 to 100 ms
# (an estimate for current x86 CPUs), so the buckets are dense there. Queueing under load
# and image downloads push requests to seconds.
PREDICTION_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
HTTP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The bot's counters and histograms, registered in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "http_requests",
            "HTTP requests served, by route, method and status code.",
            ["endpoint", "method", "status"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.http_request_seconds = Histogram(
            "http_request_duration_seconds",
            "Time from reading an HTTP request to sending its response, by route.",
            ["endpoint"],
            namespace=NAMESPACE,
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self.http_requests_in_progress = Gauge(
            "http_requests_in_progress",
            "HTTP requests being handled now, by route.",
            ["endpoint"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.predictions = Counter(
            "predictions",
            "Images classified, by model version and source (telegram or http).",
            ["model_version", "source"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.prediction_seconds = Histogram(
            "prediction_duration_seconds",
            "Time to classify one request: decoding, queueing for a batch and inference.",
            ["source"],
            namespace=NAMESPACE,
            buckets=PREDICTION_BUCKETS,
            registry=self.registry,
        )
        self.feedback = Counter(
            "feedback",
            "Feedback on predictions, by kind (for example correct, wrong, correction).",
            ["kind"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.errors = Counter(
            "errors",
            "Errors caught and handled, by kind.",
            ["kind"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.model_info = Gauge(
            "model_info",
            "1 for the model version being served.",
            ["model_version"],
            namespace=NAMESPACE,
            registry=self.registry,
        )

    def record_prediction(self, version: str, seconds: float, *, source: str = "telegram") -> None:
        """Count one classified request of model `version` that took `seconds`."""
        self.predictions.labels(model_version=version, source=source).inc()
        self.prediction_seconds.labels(source=source).observe(seconds)

    def record_feedback(self, kind: str) -> None:
        """Count one piece of feedback of `kind`."""
        self.feedback.labels(kind=kind).inc()

    def record_error(self, kind: str) -> None:
        """Count one handled error of `kind`."""
        self.errors.labels(kind=kind).inc()

    def record_http_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request on route `endpoint` and observe its duration."""
        self.http_requests.labels(endpoint=endpoint, method=method, status=str(status)).inc()
        self.http_request_seconds.labels(endpoint=endpoint).observe(seconds)

    def set_model_version(self, version: str) -> None:
        """Mark `version` as the served model, clearing the version served before."""
        self.model_info.clear()
        self.model_info.labels(model_version=version).set(1)

    def render(self) -> bytes:
        """Return the registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """Return the current value of sample `name` with `labels`, or None when absent."""
        return self.registry.get_sample_value(name, labels or {})


_active: Metrics | None = None
_active_lock = threading.Lock()


def get_metrics() -> Metrics:
    """Return the process's active `Metrics`, creating it on first use."""
    global _active
    with _active_lock:
        if _active is None:
            _active = Metrics()
        return _active


def set_metrics(metrics: Metrics | None) -> Metrics | None:
    """Make `metrics` the instance the module-level helpers write to; return the previous one.

    With None, the next `get_metrics` call creates a new instance.
    """
    global _active
    with _active_lock:
        previous, _active = _active, metrics
        return previous


def record_prediction(version: str, seconds: float, *, source: str = "telegram") -> None:
    """Count one classified request on the active `Metrics`."""
    get_metrics().record_prediction(version, seconds, source=source)


def record_feedback(kind: str) -> None:
    """Count one piece of feedback on the active `Metrics`."""
    get_metrics().record_feedback(kind)


def record_error(kind: str) -> None:
    """Count one handled error on the active `Metrics`."""
    get_metrics().record_error(kind)
