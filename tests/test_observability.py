"""Metrics in Prometheus format and one JSON log line per request, without secrets or contents."""

from __future__ import annotations

import json

import httpx
from prometheus_client.parser import text_string_to_metric_families

from engine.metrics import Metrics

from .conftest import TEST_SECRETS

HELLO = [{"role": "user", "content": "a very private question"}]


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_count_requests_tokens_cost_and_errors(gateway, upstream):
    before = samples(httpx.get(f"{gateway.url}/metrics").text)
    upstream.reply_fixture("anthropic", "messages_cache_usage.json")
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "claude-sonnet-4", "messages": HELLO}).status_code == 200
    upstream.reply_fixture("anthropic", "error_529_overloaded.json")
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "claude-sonnet-4", "messages": HELLO}).status_code == 503
    response = httpx.get(f"{gateway.url}/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = samples(response.text)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    deployment = "anthropic/claude-sonnet-4-20250514"
    assert delta("gaud_requests_total", alias="claude-sonnet-4", deployment=deployment, status="200") == 1
    assert delta("gaud_requests_total", alias="claude-sonnet-4", deployment=deployment, status="503") == 1
    assert delta("gaud_errors_total", kind="overloaded") == 1
    assert delta("gaud_tokens_total", user="local", model=deployment, type="cached") == 18000
    assert delta("gaud_cost_usd_total", user="local", model=deployment) > 0
    assert delta("gaud_overhead_seconds_count") == 1
    assert delta("gaud_upstream_latency_seconds_count", deployment=deployment) == 1
    assert after[("gaud_in_flight_requests", ())] == 0
    assert ("gaud_breaker_state", (("deployment", deployment),)) in after


def test_metrics_exposition_counts_and_inclusive_cumulative_buckets():
    deployment = "openai/gpt-4o"
    metrics = Metrics(lambda: {deployment: {"state": "open"}})
    ok = {"alias": "gpt-4o", "deployment": deployment, "status": 200, "user_name": "ann", "prompt_tokens": 7,
          "completion_tokens": 3, "cached_tokens": 0, "cost": 0.25, "stream": True, "ttft_ms": 250.0}
    metrics.record(ok, 0.5)  # overhead 0.0005 s and ttft 0.25 s: both exactly on a bucket bound
    metrics.record({**ok, "status": 503, "error_kind": "overloaded", "stream": False}, 2.0)
    metrics.record({"alias": None, "deployment": None, "status": 429}, None)
    metrics.cache.labels("hit").inc()
    metrics.cache.labels("hit").inc()
    metrics.cache.labels("miss")  # a label tuple is exposed at zero once created
    metrics.rate_limited.labels("key").inc()
    metrics.retries.labels(deployment).inc()
    metrics.fallbacks.labels(deployment).inc()
    for seconds in (0.05, 0.1, 0.3, 300, 301):
        metrics.upstream_latency.labels(deployment).observe(seconds)
    metrics.in_flight.inc()
    metrics.in_flight.inc()
    metrics.in_flight.dec()
    text = metrics.render().decode()
    got = samples(text)

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert value("gaud_requests_total", alias="gpt-4o", deployment=deployment, status="200") == 1
    assert value("gaud_requests_total", alias="gpt-4o", deployment=deployment, status="503") == 1
    assert value("gaud_requests_total", alias="", deployment="none", status="429") == 1
    assert value("gaud_errors_total", kind="overloaded") == 1
    assert value("gaud_tokens_total", user="ann", model=deployment, type="prompt") == 14
    assert value("gaud_tokens_total", user="ann", model=deployment, type="completion") == 6
    assert ("gaud_tokens_total", (("model", deployment), ("type", "cached"), ("user", "ann"))) not in got
    assert value("gaud_cost_usd_total", user="ann", model=deployment) == 0.5
    assert value("gaud_cache_lookups_total", result="hit") == 2
    assert value("gaud_cache_lookups_total", result="miss") == 0
    assert value("gaud_rate_limit_refusals_total", scope="key") == 1
    assert value("gaud_retries_total", deployment=deployment) == 1
    assert value("gaud_fallbacks_total", deployment=deployment) == 1
    assert value("gaud_in_flight_requests") == 1
    assert value("gaud_breaker_state", deployment=deployment) == 2
    assert ("gaud_requests_created", (("alias", "gpt-4o"), ("deployment", deployment), ("status", "200"))) in got

    # `le` is inclusive: 0.05 counts in le="0.05", 300 in le="300.0"; buckets are cumulative.
    latency = {le: value("gaud_upstream_latency_seconds_bucket", deployment=deployment, le=le)
               for le in ("0.05", "0.1", "0.25", "0.5", "1.0", "120.0", "300.0", "+Inf")}
    assert latency == {"0.05": 1, "0.1": 2, "0.25": 2, "0.5": 3, "1.0": 3, "120.0": 3, "300.0": 4, "+Inf": 5}
    assert value("gaud_upstream_latency_seconds_count", deployment=deployment) == 5
    assert abs(value("gaud_upstream_latency_seconds_sum", deployment=deployment) - 601.45) < 1e-9
    overhead = {le: value("gaud_overhead_seconds_bucket", le=le) for le in ("0.00025", "0.0005", "0.001", "0.0025", "+Inf")}
    assert overhead == {"0.00025": 0, "0.0005": 1, "0.001": 1, "0.0025": 2, "+Inf": 2}
    assert value("gaud_overhead_seconds_count") == 2
    assert abs(value("gaud_overhead_seconds_sum") - 0.0025) < 1e-12
    assert value("gaud_time_to_first_token_seconds_bucket", deployment=deployment, le="0.1") == 0
    assert value("gaud_time_to_first_token_seconds_bucket", deployment=deployment, le="0.25") == 1
    assert value("gaud_time_to_first_token_seconds_sum", deployment=deployment) == 0.25
    for line in ("# TYPE gaud_requests_total counter", "# TYPE gaud_requests_created gauge",
                 "# TYPE gaud_upstream_latency_seconds histogram", "# TYPE gaud_in_flight_requests gauge",
                 'gaud_overhead_seconds_bucket{le="+Inf"} 2.0', "gaud_overhead_seconds_count 2.0"):
        assert line in text.splitlines(), line


def test_one_json_log_line_per_request_without_contents_or_secrets(gateway, upstream):
    upstream.reply_fixture("gemini", "generate_text.json")
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "gemini-2.5-flash", "messages": HELLO},
                          headers={"x-request-id": "trace-observability-1"})
    assert response.status_code == 200
    logs = gateway.logs_with("trace-observability-1")
    lines = [json.loads(raw) for raw in logs.splitlines() if raw.startswith("{")]
    mine = [entry for entry in lines if entry.get("request_id") == "trace-observability-1"]
    assert len(mine) == 1
    line = mine[0]
    assert line["logger"] == "gaud.request" and line["level"] == "info"
    for field in ("user_name", "alias", "deployment", "attempts", "status", "prompt_tokens", "completion_tokens",
                  "cost", "latency_ms", "overhead_ms"):
        assert field in line, field
    assert line["deployment"] == "gemini/gemini-2.5-flash" and line["status"] == 200
    assert "a very private question" not in logs
    for secret in TEST_SECRETS.values():
        assert secret not in logs


def test_uvicorns_own_lines_use_the_gateways_log_format(gateway):
    """With JSON logs, uvicorn's start-up lines are JSON too, not its own `INFO:     ...` text."""
    logs = gateway.logs_with("Application startup complete")
    assert not [line for line in logs.splitlines() if line.startswith(("INFO:", "WARNING:", "ERROR:"))]
    started = [json.loads(line) for line in logs.splitlines() if line.startswith("{") and "Application startup complete" in line]
    assert started and started[0]["logger"] == "uvicorn.error" and started[0]["level"] == "info"
