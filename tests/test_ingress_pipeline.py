"""A client format's route is only a translation layer: auth, rate limits, cache, budgets and audit
apply to it unchanged (ingress.d/anthropic-messages.yaml through a running gateway)."""

from __future__ import annotations

import json
import signal

import anthropic
import httpx
import pytest

from engine.accounts.store import Store

from .conftest import provider_env, spec_tree, start_gateway
from .oracles import oracle_check

HELLO = [{"role": "user", "content": "Hello"}]
BODY = {"model": "gpt-4o", "max_tokens": 50, "messages": HELLO}


@pytest.fixture
def guarded(upstream, tmp_path):
    db = tmp_path / "g.db"
    store = Store(f"sqlite:///{db}")
    store.migrate()
    key, _ = store.create_key("ada")
    store.close()
    env = {
        **provider_env(upstream.url),
        "GAUD_SPECS_DIR": str(spec_tree(tmp_path, retry="false", fallback="false")),
        "GAUD_AUTH_ENABLED": "true",
        "GAUD_RATELIMITS_KEY_RPM": "3",
        "GAUD_DATABASE_URL": f"sqlite:///{db}",
    }
    running = start_gateway(env, tmp_path / "gw.log")
    running.key = key  # type: ignore[attr-defined]
    running.db = db  # type: ignore[attr-defined]
    yield running
    if running.process.poll() is None:
        running.process.send_signal(signal.SIGTERM)
    running.process.wait(20)


def test_auth_rate_limit_cache_and_audit(guarded, upstream):
    url = f"{guarded.url}/v1/messages"
    # No key / a wrong key: 401 in the client's envelope.
    missing = httpx.post(url, json=BODY)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    wrong = httpx.post(url, json=BODY, headers={"x-api-key": "sk-gaud-wrong"})
    assert wrong.status_code == 401 and wrong.json()["type"] == "error"

    # Both header conventions carry the gateway key; the SDK sends x-api-key.
    sdk = anthropic.Anthropic(base_url=guarded.url, api_key=guarded.key, max_retries=0, timeout=20)
    upstream.reply_fixture("openai", "chat_completion_text.json")
    assert sdk.messages.create(**BODY).content[0].text
    assert "x-api-key" not in {k.lower() for k in upstream.last().headers} or \
        upstream.last().headers.get("x-api-key") != guarded.key  # the gateway key never goes upstream
    upstream.reply_fixture("openai", "chat_completion_text.json")
    cached = {**BODY, "temperature": 0}
    first = httpx.post(url, json=cached, headers={"authorization": f"Bearer {guarded.key}", "x-gaud-cache": "on"})
    assert first.status_code == 200 and first.headers["x-gaud-cache"] == "miss"
    # The cache holds the canonical completion; a hit is mapped to the client format too.
    hit = httpx.post(url, json=cached, headers={"x-api-key": guarded.key, "x-gaud-cache": "on"})
    assert hit.headers["x-gaud-cache"] == "hit" and hit.json() == first.json()
    oracle_check.assert_anthropic_response(hit.json())
    # The key's rate limit (3 rpm) counts these requests like chat ones.
    limited = httpx.post(url, json=BODY, headers={"x-api-key": guarded.key})
    assert limited.status_code == 429 and limited.json()["error"]["type"] == "rate_limit_error"
    assert int(limited.headers["retry-after"]) >= 1
    assert len(upstream.requests) == 2

    guarded.process.send_signal(signal.SIGTERM)
    assert guarded.process.wait(20) == 0
    records = Store(f"sqlite:///{guarded.db}").audit_records()
    ok = [r for r in records if r["status"] == 200]
    assert len(ok) == 3 and all(r["user_name"] == "ada" for r in ok)
    assert ok[0]["deployment"].startswith("openai/") and ok[0]["cost"] > 0
    assert [r["cache_hit"] for r in ok] == [False, False, True]
    assert any(r["status"] == 429 for r in records)


def test_stream_errors(gateway, upstream):
    # Before the first byte: a JSON error in the envelope, with the client's status.
    upstream.reply_fixture("openai", "error_429_rate_limit.json")
    early = httpx.post(f"{gateway.url}/v1/messages", json={**BODY, "stream": True}, timeout=20)
    assert early.status_code == 429 and early.json()["error"]["type"] == "rate_limit_error"
    # Mid-stream: an `error` event, and no message_stop after it.
    upstream.reply_fixture("anthropic", "stream_error_overloaded.sse")
    with httpx.stream("POST", f"{gateway.url}/v1/messages", timeout=20, json={
            "model": "claude-sonnet-4", "max_tokens": 50, "messages": HELLO, "stream": True}) as raw:
        events = [(e, json.loads(d)) for e, d in oracle_check.iter_sse(raw.read().decode())]
    assert events[-1][0] == "error"
    assert events[-1][1]["type"] == "error" and events[-1][1]["error"]["type"] in ("overloaded_error", "api_error")
    assert "message_stop" not in [e for e, _ in events]
