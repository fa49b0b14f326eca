"""Prometheus metrics (prometheus-client), one registry per app so several apps can share a process.

Labels are bounded by configuration (aliases, deployments, users, error kinds), never by request
content. Circuit-breaker states are read at scrape time, not pushed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
_BREAKER_VALUE = {"closed": 0, "half_open": 1, "open": 2}


class _BreakerCollector(Collector):
    def __init__(self, states: Callable[[], dict[str, dict[str, Any]]]) -> None:
        self.states = states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "gaud_breaker_state", "Circuit breaker per deployment: 0 closed, 1 half-open, 2 open.", labels=["deployment"]
        )
        for deployment, state in self.states().items():
            family.add_metric([deployment], _BREAKER_VALUE.get(str(state["state"]), 0))
        yield family


class Metrics:
    def __init__(self, breaker_states: Callable[[], dict[str, dict[str, Any]]] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("gaud_requests", "Chat requests.", ["alias", "deployment", "status"], registry=r)
        self.errors = Counter("gaud_errors", "Failed chat requests by error kind.", ["kind"], registry=r)
        self.retries = Counter("gaud_retries", "Attempts retried on the same deployment.", ["deployment"], registry=r)
        self.fallbacks = Counter("gaud_fallbacks", "Moves to the next candidate deployment.", ["deployment"], registry=r)
        self.cache = Counter("gaud_cache_lookups", "Response cache lookups.", ["result"], registry=r)
        self.rate_limited = Counter("gaud_rate_limit_refusals", "Requests refused by a rate limit.", ["scope"], registry=r)
        self.tokens = Counter("gaud_tokens", "Tokens by user, model and type.", ["user", "model", "type"], registry=r)
        self.cost = Counter("gaud_cost_usd", "Cost in USD by user and model.", ["user", "model"], registry=r)
        self.upstream_latency = Histogram(
            "gaud_upstream_latency_seconds", "Upstream time per attempt (to the first byte for streams).",
            ["deployment"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.overhead = Histogram(
            "gaud_overhead_seconds", "Time spent in the gateway per request, upstream excluded.",
            buckets=_OVERHEAD_BUCKETS, registry=r,
        )
        self.ttft = Histogram(
            "gaud_time_to_first_token_seconds", "Streaming: time from request to the first chunk.",
            ["deployment"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.in_flight = Gauge("gaud_in_flight_requests", "Chat requests being served.", registry=r)
        if breaker_states is not None:
            r.register(_BreakerCollector(breaker_states))
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(...)` memoised: label lookups cost more than the increments."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def record(self, record: dict[str, Any], overhead_ms: float | None) -> None:
        """Count one finished request from its audit record."""
        deployment = record.get("deployment") or "none"
        self._child(self.requests, record.get("alias") or "", deployment, str(record["status"])).inc()
        if record.get("error_kind"):
            self._child(self.errors, record["error_kind"]).inc()
        user = record.get("user_name") or ""
        if record.get("deployment"):
            for kind in ("prompt", "completion", "cached"):
                value = record.get(f"{kind}_tokens") or 0
                if value:
                    self._child(self.tokens, user, deployment, kind).inc(value)
            if record.get("cost"):
                self._child(self.cost, user, deployment).inc(record["cost"])
        if record.get("stream") and record.get("ttft_ms") is not None:
            self._child(self.ttft, deployment).observe(record["ttft_ms"] / 1000)
        if overhead_ms is not None:
            self.overhead.observe(overhead_ms / 1000)
