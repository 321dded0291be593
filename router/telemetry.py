"""Prometheus metrics of the proxy, read off each finished request's routing record.

Each app gets its own ``CollectorRegistry``, so several apps (tests, replicas in one process) never clash.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from router.schemas import RoutingRecord

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_COST_BUCKETS = (1e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "erp_requests",
            "Requests by the model chosen for them (routed or named).",
            ["model", "routed"],
            registry=self.registry,
        )
        self.request_errors = Counter(
            "erp_request_errors",
            "Requests that failed after all fallbacks, by chosen model.",
            ["model"],
            registry=self.registry,
        )
        self.upstream_calls = Counter(
            "erp_upstream_calls",
            "Upstream calls (attempts) by model and outcome.",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.fallbacks = Counter("erp_fallbacks", "Attempts beyond the first.", registry=self.registry)
        self.decision_seconds = Histogram(
            "erp_decision_seconds",
            "Time to decide (embedding, prediction, policy).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_seconds = Histogram(
            "erp_upstream_seconds",
            "Upstream latency per attempt (to the first chunk for streams).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predicted_cost = Histogram(
            "erp_predicted_cost_usd",
            "Predicted cost of the answering model per request.",
            ["model"],
            buckets=_COST_BUCKETS,
            registry=self.registry,
        )
        self.realized_cost = Histogram(
            "erp_realized_cost_usd",
            "Realized cost (usage x registry prices) per request.",
            ["model"],
            buckets=_COST_BUCKETS,
            registry=self.registry,
        )
        self.spend = Counter(
            "erp_spend_usd",
            "Realized spend in USD by model and API key name.",
            ["model", "api_key"],
            registry=self.registry,
        )
        self.http_errors = Counter(
            "erp_http_errors",
            "Error responses of the proxy by status and code.",
            ["status", "code"],
            registry=self.registry,
        )
        self.store_degraded = Gauge(
            "erp_store_degraded", "1 while Redis is configured but unreachable.", registry=self.registry
        )

    def observe(self, record: RoutingRecord) -> None:
        """Count one finished request (answered or not) from its routing record."""
        self.requests.labels(record.chosen, str(record.routed).lower()).inc()
        if record.routed:
            self.decision_seconds.observe(record.decision_ms / 1000)
        for i, attempt in enumerate(record.attempts):
            self.upstream_calls.labels(attempt.model, "error" if attempt.error_type else "ok").inc()
            self.upstream_seconds.labels(attempt.model).observe(attempt.latency_ms / 1000)
            if i:
                self.fallbacks.inc()
        if record.model is None or (record.attempts and record.attempts[-1].error_type):
            self.request_errors.labels(record.chosen).inc()
        candidate = record.candidate(record.model) if record.model else None
        if candidate is not None:
            self.predicted_cost.labels(record.model).observe(candidate.predicted_cost_usd)
        if record.realized_cost_usd is not None:
            self.realized_cost.labels(record.model).observe(record.realized_cost_usd)
            self.spend.labels(record.model, record.spend_key or "").inc(record.realized_cost_usd)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
