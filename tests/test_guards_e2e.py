"""Rate limits and the response cache through a running gateway."""

from __future__ import annotations

import httpx
import pytest

from engine.accounts.store import Store

from .conftest import provider_env, spec_tree, start_gateway

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def guarded(upstream, tmp_path):
    tree = spec_tree(tmp_path, retry="false", fallback="false")
    env = {
        **provider_env(upstream.url),
        "GAUD_SPECS_DIR": str(tree),
        "GAUD_AUTH_ENABLED": "false",
        "GAUD_RATELIMITS_KEY_RPM": "3",
        "GAUD_DATABASE_URL": f"sqlite:///{tmp_path / 'g.db'}",
    }
    running = start_gateway(env, tmp_path / "gw.log")
    yield running
    running.process.terminate()
    running.process.wait(10)


def test_key_rate_limit_refuses_with_openai_headers(guarded, upstream):
    for _ in range(3):
        upstream.reply_fixture("anthropic", "messages_text.json")
    statuses = []
    for _ in range(4):
        response = httpx.post(f"{guarded.url}/v1/chat/completions", json={"model": "claude-sonnet-4", "messages": HELLO})
        statuses.append(response.status_code)
    assert statuses == [200, 200, 200, 429]
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["x-ratelimit-limit-requests"] == "3"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert response.headers["x-ratelimit-reset-requests"]
    assert len(upstream.requests) == 3  # the refused request never reached the upstream


def test_cache_hit_miss_and_scope(guarded, upstream):
    upstream.reply_fixture("anthropic", "messages_text.json")
    body = {"model": "claude-sonnet-4", "messages": HELLO, "temperature": 0}
    first = httpx.post(f"{guarded.url}/v1/chat/completions", json=body, headers={"x-gaud-cache": "on"})
    assert first.headers["x-gaud-cache"] == "miss"
    # Same request with irrelevant differences: user, field order, stream_options.
    again = httpx.post(f"{guarded.url}/v1/chat/completions", json={"temperature": 0, **body, "user": "x"},
                       headers={"cache-control": "max-age=60"})
    assert again.status_code == 200
    assert again.headers["x-gaud-cache"] == "hit"
    assert again.headers["x-gaud-cost"] == "0.00000000"
    assert again.json() == first.json()
    assert len(upstream.requests) == 1
    # A different temperature is a different key; no opt-in means no caching at all.
    upstream.reply_fixture("anthropic", "messages_text.json")
    other = httpx.post(f"{guarded.url}/v1/chat/completions", json={**body, "temperature": 0.5}, headers={"x-gaud-cache": "on"})
    assert other.headers["x-gaud-cache"] == "miss"
    assert len(upstream.requests) == 2


def test_cache_hits_are_audited_at_zero_cost(upstream, tmp_path):
    tree = spec_tree(tmp_path, retry="false")
    db = tmp_path / "c.db"
    env = {**provider_env(upstream.url), "GAUD_SPECS_DIR": str(tree), "GAUD_AUTH_ENABLED": "false",
           "GAUD_DATABASE_URL": f"sqlite:///{db}"}
    running = start_gateway(env, tmp_path / "gw.log")
    try:
        upstream.reply_fixture("gemini", "generate_text.json")
        body = {"model": "gemini-2.5-flash", "messages": HELLO, "cache": {"ttl": 60}}
        assert httpx.post(f"{running.url}/v1/chat/completions", json=body).headers["x-gaud-cache"] == "miss"
        assert httpx.post(f"{running.url}/v1/chat/completions", json=body).headers["x-gaud-cache"] == "hit"
    finally:
        running.process.terminate()
        assert running.process.wait(10) == 0
    records = Store(f"sqlite:///{db}").audit_records()
    assert [r["cache_hit"] for r in records] == [False, True]
    assert records[0]["cost"] > 0 and records[1]["cost"] == 0
    assert "cache" not in upstream.requests[0].body  # gateway-only field, never sent upstream


def test_streams_are_not_cached(guarded, upstream):
    upstream.reply_fixture("anthropic", "stream_text.sse")
    response = httpx.post(f"{guarded.url}/v1/chat/completions",
                          json={"model": "claude-sonnet-4", "messages": HELLO, "stream": True}, headers={"x-gaud-cache": "on"})
    assert response.status_code == 200
    assert "x-gaud-cache" not in response.headers
