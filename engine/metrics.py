"""Prometheus metrics, one registry per app so several apps can share a process.

Labels are bounded by configuration (aliases, deployments, users, error kinds), never by request
content. Circuit-breaker states are read at scrape time, not pushed.

Updates are plain dict and list arithmetic rather than prometheus_client Counter/Histogram/Gauge
objects: those take a mutex and run argument checks on every `.inc()`/`.observe()`, a visible share
of a request's budget, and every update here happens on the one event-loop thread of the process.
prometheus_client only renders: a collector turns the dicts into metric families at scrape time,
and the exposition text (names, help, labels, buckets, `_created` series) is the same as before.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import prometheus_client.metrics
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
_BREAKER_VALUE = {"closed": 0, "half_open": 1, "open": 2}

Labels = tuple[str, ...]


def _use_created() -> bool:
    """Whether prometheus_client emits `_created` series (PROMETHEUS_DISABLE_CREATED_SERIES, disable_created_metrics())."""
    return bool(getattr(prometheus_client.metrics, "_use_created", True))


class _Labelled:
    """Name, help and label names of one metric, and the creation time of each label tuple.

    A label tuple is created on its first `labels(...)` or update and then kept, as in
    prometheus_client: it is exposed (at zero) from then on, with its creation time as `_created`.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.created: dict[Labels, float] = {}

    def _check(self, key: Labels) -> None:
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name}: {len(key)} label values for labels {self.labelnames}")

    def _labels_out(self, key: Labels) -> list[str]:
        return [str(value) for value in key]


class _Counter(_Labelled):
    """A counter: one float per label tuple."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        super().__init__(name, documentation, labelnames)
        self.values: dict[Labels, float] = {}
        self._bound: dict[Labels, _BoundCounter] = {}

    def labels(self, *values: str) -> _BoundCounter:
        """The counter for one label tuple, memoised: callers on the request path call this every time."""
        bound = self._bound.get(values)
        if bound is None:
            self._create(values)
            bound = self._bound[values] = _BoundCounter(self.values, values)
        return bound

    def inc_at(self, key: Labels, amount: float = 1.0) -> None:
        try:
            self.values[key] += amount
        except KeyError:
            self._create(key)
            self.values[key] += amount

    def _create(self, key: Labels) -> None:
        if key not in self.values:
            self._check(key)
            self.values[key] = 0.0
            self.created[key] = time.time()

    def family(self, created: bool) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, value in self.values.items():
            family.add_metric(self._labels_out(key), value, created=self.created[key] if created else None)
        return family


class _BoundCounter:
    __slots__ = ("_key", "_values")

    def __init__(self, values: dict[Labels, float], key: Labels) -> None:
        self._values = values
        self._key = key

    def inc(self, amount: float = 1.0) -> None:
        self._values[self._key] += amount


class _Histogram(_Labelled):
    """A histogram: per label tuple a list of per-bucket counts (not cumulative) with the sum last.

    The count is not stored: it is the total of the bucket counts, so `+Inf` equals `_count` by construction.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        super().__init__(name, documentation, labelnames)
        self.bounds = (*(float(b) for b in buckets), float("inf"))
        self.series: dict[Labels, list[float]] = {}
        self._bound: dict[Labels, _BoundHistogram] = {}
        if not self.labelnames:
            self._create(())

    def labels(self, *values: str) -> _BoundHistogram:
        """The histogram for one label tuple, memoised like `_Counter.labels`."""
        bound = self._bound.get(values)
        if bound is None:
            bound = self._bound[values] = _BoundHistogram(self.bounds, self._create(values))
        return bound

    def observe(self, value: float) -> None:
        """Observe on a histogram without labels."""
        try:
            series = self.series[()]
        except KeyError:
            raise ValueError(f"{self.name} has labels {self.labelnames}: call labels(...) first") from None
        series[bisect_left(self.bounds, value)] += 1
        series[-1] += value

    def observe_at(self, key: Labels, value: float) -> None:
        try:
            series = self.series[key]
        except KeyError:
            series = self._create(key)
        # bounds ends with +Inf, so the index is a bucket; bisect_left puts a value equal to a bound
        # in that bound's bucket (`le` is inclusive).
        series[bisect_left(self.bounds, value)] += 1
        series[-1] += value

    def _create(self, key: Labels) -> list[float]:
        series = self.series.get(key)
        if series is None:
            self._check(key)
            series = self.series[key] = [0.0] * (len(self.bounds) + 1)
            self.created[key] = time.time()
        return series

    def family(self, created: bool) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        les = [floatToGoString(bound) for bound in self.bounds]
        for key, series in self.series.items():
            labels = self._labels_out(key)
            cumulative, acc = [], 0.0
            for le, count in zip(les, series):
                acc += count
                cumulative.append((le, acc))
            family.add_metric(labels, cumulative, series[-1])
            if created:
                family.samples.append(Sample(self.name + "_created", dict(zip(self.labelnames, labels)), self.created[key]))
        return family


class _BoundHistogram:
    __slots__ = ("_bounds", "_series")

    def __init__(self, bounds: tuple[float, ...], series: list[float]) -> None:
        self._bounds = bounds
        self._series = series

    def observe(self, value: float) -> None:
        series = self._series
        series[bisect_left(self._bounds, value)] += 1
        series[-1] += value


class _Gauge:
    """A gauge without labels, a plain number."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value

    def family(self, created: bool) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, value=self.value)


class _MetricsCollector(Collector):
    """Renders the plain-Python metrics at scrape time, in declaration order."""

    def __init__(self, metrics: Sequence[_Counter | _Histogram | _Gauge]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        created = _use_created()
        for metric in self.metrics:
            yield metric.family(created)

    def describe(self) -> Iterator[Metric]:
        """Names for the registry's duplicate checks and `restricted_registry`."""
        for metric in self.metrics:
            if isinstance(metric, _Counter):
                yield CounterMetricFamily(metric.name, metric.documentation, labels=metric.labelnames)
            elif isinstance(metric, _Histogram):
                yield HistogramMetricFamily(metric.name, metric.documentation, labels=metric.labelnames)
            else:
                yield GaugeMetricFamily(metric.name, metric.documentation)


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


#: Token kinds counted per request, and the audit record field of each.
_TOKEN_FIELDS = (("prompt", "prompt_tokens"), ("completion", "completion_tokens"), ("cached", "cached_tokens"))


class Metrics:
    def __init__(self, breaker_states: Callable[[], dict[str, dict[str, Any]]] | None = None) -> None:
        self.requests = _Counter("gaud_requests", "Chat requests.", ["alias", "deployment", "status"])
        self.errors = _Counter("gaud_errors", "Failed chat requests by error kind.", ["kind"])
        self.retries = _Counter("gaud_retries", "Attempts retried on the same deployment.", ["deployment"])
        self.fallbacks = _Counter("gaud_fallbacks", "Moves to the next candidate deployment.", ["deployment"])
        self.cache = _Counter("gaud_cache_lookups", "Response cache lookups.", ["result"])
        self.rate_limited = _Counter("gaud_rate_limit_refusals", "Requests refused by a rate limit.", ["scope"])
        self.tokens = _Counter("gaud_tokens", "Tokens by user, model and type.", ["user", "model", "type"])
        self.cost = _Counter("gaud_cost_usd", "Cost in USD by user and model.", ["user", "model"])
        self.upstream_latency = _Histogram(
            "gaud_upstream_latency_seconds", "Upstream time per attempt (to the first byte for streams).",
            ["deployment"], _LATENCY_BUCKETS,
        )
        self.overhead = _Histogram(
            "gaud_overhead_seconds", "Time spent in the gateway per request, upstream excluded.", [], _OVERHEAD_BUCKETS,
        )
        self.ttft = _Histogram(
            "gaud_time_to_first_token_seconds", "Streaming: time from request to the first chunk.",
            ["deployment"], _LATENCY_BUCKETS,
        )
        self.in_flight = _Gauge("gaud_in_flight_requests", "Chat requests being served.")
        self.alerts = _Counter("gaud_alerts", "Alert events by outcome: delivered and failed (per webhook), deduplicated, dropped.",
                               ["kind", "outcome"])
        self.registry = CollectorRegistry()
        self.registry.register(_MetricsCollector([
            self.requests, self.errors, self.retries, self.fallbacks, self.cache, self.rate_limited, self.tokens,
            self.cost, self.upstream_latency, self.overhead, self.ttft, self.in_flight, self.alerts,
        ]))
        if breaker_states is not None:
            self.registry.register(_BreakerCollector(breaker_states))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def record(self, record: dict[str, Any], overhead_ms: float | None) -> None:
        """Count one finished request from its audit record."""
        deployment = record.get("deployment")
        self.requests.inc_at((record.get("alias") or "", deployment or "none", str(record["status"])))
        if record.get("error_kind"):
            self.errors.inc_at((record["error_kind"],))
        if deployment:
            user = record.get("user_name") or ""
            for kind, field in _TOKEN_FIELDS:
                value = record.get(field)
                if value:
                    self.tokens.inc_at((user, deployment, kind), value)
            if record.get("cost"):
                self.cost.inc_at((user, deployment), record["cost"])
        if record.get("stream") and record.get("ttft_ms") is not None:
            self.ttft.observe_at((deployment or "none",), record["ttft_ms"] / 1000)
        if overhead_ms is not None:
            self.overhead.observe(overhead_ms / 1000)
