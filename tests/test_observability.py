"""Metrics in Prometheus format and one JSON log line per request, without secrets or contents."""

from __future__ import annotations

import json

import httpx
from prometheus_client.parser import text_string_to_metric_families

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


def test_one_json_log_line_per_request_without_contents_or_secrets(gateway, upstream):
    upstream.reply_fixture("gemini", "generate_text.json")
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "gemini-2.5-flash", "messages": HELLO},
                          headers={"x-request-id": "trace-observability-1"})
    assert response.status_code == 200
    logs = gateway.logs_with("trace-observability-1")
    lines = [json.loads(l) for l in logs.splitlines() if l.startswith("{")]
    mine = [l for l in lines if l.get("request_id") == "trace-observability-1"]
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
