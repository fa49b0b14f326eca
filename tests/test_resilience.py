"""Retries, backoff, fallback, circuit breaking and all_failed against a fault-injecting fake
upstream, through the in-process Gateway with an injectable clock and sleep (no real waiting)."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest
import yaml

from engine import load_catalog
from engine.errors import GatewayError
from engine.pipeline.gateway import Gateway
from engine.pipeline.upstream import Upstream

from .conftest import ROOT, free_port, provider_env
from .spec_trees import copy_models

HELLO = [{"role": "user", "content": "Hello"}]

ROUTES = {
    "defaults": {
        "retry": 'error.kind in ["rate_limit", "timeout", "overloaded", "upstream_5xx", "connection"] && attempt <= 3',
        "fallback": 'error.kind in ["rate_limit", "timeout", "overloaded", "upstream_5xx", "connection", "context_window_exceeded", "content_filter"]',
        "backoff": {"initial": 1.0, "multiplier": 2.0, "max": 8.0, "jitter": 0.0, "max_retry_after": 30},
        "breaker": {"failures": 4, "cooldown": 10},
    },
    "aliases": {
        "chain": {
            "candidates": [
                {"provider": "anthropic", "model": "claude-sonnet-4-20250514"},
                {"provider": "gemini", "model": "gemini-2.5-flash"},
                {"provider": "openai", "model": "gpt-4o"},
            ]
        },
        "no-retry": {
            "retry": "false",
            "candidates": [
                {"provider": "anthropic", "model": "claude-sonnet-4-20250514"},
                {"provider": "gemini", "model": "gemini-2.5-flash"},
            ],
        },
        "slow": {
            "retry": "false",
            "candidates": [
                {"provider": "anthropic", "model": "claude-sonnet-4-20250514", "timeout": 0.3},
                {"provider": "gemini", "model": "gemini-2.5-flash"},
            ],
        },
        "strict": {
            "retry": 'error.kind == "invalid_output" && attempt <= 2',
            "candidates": [{"provider": "openai", "model": "gpt-4o"}],
        },
        "dead-first": {
            "retry": 'error.kind == "connection" && attempt <= 1',
            "candidates": [
                {"provider": "anthropic", "model": "claude-sonnet-4-20250514", "api_base": "http://127.0.0.1:DEAD"},
                {"provider": "gemini", "model": "gemini-2.5-flash"},
            ],
        },
    },
}


def served(result) -> tuple[str, str]:
    return result.headers["x-gaud-deployment"], result.headers["x-gaud-attempts"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(ROOT / "providers.d", tmp_path / "providers.d")
    shutil.copytree(ROOT / "pricing.d", tmp_path / "pricing.d")
    copy_models(tmp_path)
    routes = json.loads(json.dumps(ROUTES).replace("DEAD", str(free_port())))
    (tmp_path / "routes.yaml").write_text(yaml.safe_dump(routes))
    return tmp_path


@pytest.fixture
def run(tree, upstream):
    """run(body) -> (result or error, clock); one in-process gateway per test."""
    catalog = load_catalog(tree, environ=provider_env(upstream.url))
    catalog.raise_for_problems()
    clock = FakeClock()
    gateway = Gateway(catalog, Upstream(), sleep=clock.sleep, clock=clock, rng=random.Random(7))

    def call(body, stream=False):
        async def go():
            try:
                if stream:
                    result = await gateway.chat_stream(body)
                    pieces = [p async for p in result.body]
                    return result, b"".join(pieces)
                return await gateway.chat(body), None
            finally:
                await gateway.upstream.close()

        try:
            return asyncio.run(go())
        except GatewayError as error:
            return error, None

    call.clock = clock
    call.gateway = gateway
    return call


def test_retries_with_exponential_backoff_then_succeeds(run, upstream):
    for _ in range(3):
        upstream.reply_fixture("anthropic", "error_529_overloaded.json")
    upstream.reply_fixture("anthropic", "messages_text.json")
    result, _ = run({"model": "chain", "messages": HELLO})
    assert served(result) == ("anthropic/claude-sonnet-4-20250514", "4")
    assert run.clock.sleeps == [1.0, 2.0, 4.0]
    assert len(upstream.requests) == 4


def test_backoff_is_capped_and_jittered():
    from engine.spec.routes import Backoff

    backoff = Backoff(initial=1, multiplier=2, max=8, jitter=0.2)
    rng = random.Random(1)
    delays = [backoff.delay(n, None, rng) for n in range(1, 7)]
    for n, delay in enumerate(delays, 1):
        nominal = min(8, 2 ** (n - 1))
        assert nominal * 0.8 <= delay <= nominal * 1.2
    assert max(delays) <= 9.6


def test_retry_after_is_honoured(run, upstream):
    upstream.reply_fixture("anthropic", "error_429_rate_limit.json")  # retry-after: 17
    upstream.reply_fixture("anthropic", "messages_text.json")
    result, _ = run({"model": "chain", "messages": HELLO})
    assert run.clock.sleeps == [17.0]
    assert result.headers["x-gaud-attempts"] == "2"


def test_a_retry_delay_in_the_error_body_is_honoured(run, upstream):
    """Gemini says how long to wait in the body (google.rpc.RetryInfo `retryDelay: 21s`), not in a
    header: the spec's `errors.retry_after_from` finds it."""
    upstream.reply_fixture("gemini", "error_429_resource_exhausted.json")
    upstream.reply_fixture("gemini", "generate_text.json")
    result, _ = run({"model": "gemini/gemini-2.5-flash", "messages": HELLO})
    assert run.clock.sleeps == [21.0]
    assert served(result) == ("gemini/gemini-2.5-flash", "2")


@pytest.mark.parametrize(("value", "seconds"), [
    (21, 21.0), (1.5, 1.5), ("21s", 21.0), ("1.5s", 1.5), ("500ms", 0.5), ("2m", 120.0), (" 3s ", 3.0),
    ("soon", None), (True, None), (-1, None), (None, None), ({"seconds": 3}, None),
])
def test_delays_in_error_bodies(value, seconds):
    from engine.spec.provider import parse_duration

    assert parse_duration(value) == seconds


def test_retry_after_too_long_falls_back_instead(run, upstream):
    upstream.reply_fixture("anthropic", "error_429_rate_limit.json", headers={"retry-after": "120"})
    upstream.reply_fixture("gemini", "generate_text.json")
    result, _ = run({"model": "chain", "messages": HELLO})
    assert run.clock.sleeps == []
    assert result.headers["x-gaud-deployment"] == "gemini/gemini-2.5-flash"


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_retried_then_falls_back_in_order(run, upstream, status):
    for _ in range(4):
        upstream.reply(status=status, json={"error": {"type": "api_error", "message": "boom"}})
    upstream.reply_fixture("gemini", "generate_text.json")
    result, _ = run({"model": "chain", "messages": HELLO})
    assert served(result) == ("gemini/gemini-2.5-flash", "5")
    assert [r.path for r in upstream.requests] == ["/v1/messages"] * 4 + ["/v1beta/models/gemini-2.5-flash:generateContent"]
    assert run.clock.sleeps == [1.0, 2.0, 4.0]


def test_all_failed_lists_every_deployment(run, upstream):
    upstream.reply_fixture("anthropic", "error_529_overloaded.json")
    upstream.reply_fixture("gemini", "error_503_unavailable.json")
    error, _ = run({"model": "no-retry", "messages": HELLO})
    assert error.kind == "all_failed"
    body = error.to_openai()["error"]
    assert body["code"] == "all_failed" and body["type"] == "upstream_error"
    assert error.status == 503  # the status of the last error
    assert [(f["deployment"], f["kind"], f["attempts"]) for f in body["failures"]] == [
        ("anthropic/claude-sonnet-4-20250514", "overloaded", 1),
        ("gemini/gemini-2.5-flash", "overloaded", 1),
    ]
    assert "anthropic/claude-sonnet-4-20250514" in body["message"] and "gemini/gemini-2.5-flash" in body["message"]


def test_client_errors_are_neither_retried_nor_fallen_back(run, upstream):
    upstream.reply_fixture("anthropic", "error_400_invalid_request.json")
    error, _ = run({"model": "chain", "messages": HELLO})
    assert error.kind == "invalid_request" and error.status == 400 and error.attempts == 1
    assert len(upstream.requests) == 1


def test_context_window_error_falls_back_without_retry(run, upstream):
    upstream.reply(status=400, json={"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 210000 tokens > 200000 maximum"}})
    upstream.reply_fixture("gemini", "generate_text.json")
    result, _ = run({"model": "chain", "messages": HELLO})
    assert result.headers["x-gaud-deployment"] == "gemini/gemini-2.5-flash"
    assert run.clock.sleeps == []


def test_connect_refused_is_a_connection_error_then_fallback(run, upstream):
    upstream.reply_fixture("gemini", "generate_text.json")
    result, _ = run({"model": "dead-first", "messages": HELLO})
    assert served(result) == ("gemini/gemini-2.5-flash", "3")
    assert run.clock.sleeps == [1.0]


def test_read_timeout_carries_its_duration(run, upstream):
    upstream.reply_fixture("anthropic", "messages_text.json", delay=2.0)
    upstream.reply_fixture("gemini", "error_503_unavailable.json")
    error, _ = run({"model": "slow", "messages": HELLO})
    first = error.failures[0]
    assert first["kind"] == "timeout"
    assert "0." in first["message"] and " s" in first["message"]


def test_breaker_opens_skips_and_half_open_probe_closes_it(run, upstream):
    clock = run.clock
    breaker = run.gateway.router.breakers["anthropic/claude-sonnet-4-20250514"]
    for _ in range(4):
        upstream.reply_fixture("anthropic", "error_529_overloaded.json")
    upstream.reply_fixture("gemini", "generate_text.json")
    result, _ = run({"model": "chain", "messages": HELLO})
    # Four consecutive failures opened it; the request fell back.
    assert breaker.state == "open"
    assert result.headers["x-gaud-deployment"] == "gemini/gemini-2.5-flash"
    assert clock.sleeps == [1.0, 2.0, 4.0]

    upstream.clear()
    upstream.reply_fixture("gemini", "generate_text.json")
    result, _ = run({"model": "chain", "messages": HELLO})
    assert [r.path for r in upstream.requests] == ["/v1beta/models/gemini-2.5-flash:generateContent"]
    assert served(result) == ("gemini/gemini-2.5-flash", "1")

    clock.now += 10  # cool-down over: half-open, one probe goes through
    assert breaker.snapshot()["state"] == "half_open"
    upstream.clear()
    upstream.reply_fixture("anthropic", "messages_text.json")
    result, _ = run({"model": "chain", "messages": HELLO})
    assert result.headers["x-gaud-deployment"] == "anthropic/claude-sonnet-4-20250514"
    assert breaker.state == "closed"


def test_failed_probe_reopens_breaker():
    from engine.pipeline.breaker import Breaker

    now = [0.0]
    breaker = Breaker(failures_to_open=2, cooldown=5, clock=lambda: now[0])
    breaker.record_failure()
    assert breaker.allow() and breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 5.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()


def test_stream_failing_before_first_byte_is_retried_and_falls_back(run, upstream):
    # An error event right after HTTP 200: nothing reached the client, so it falls back.
    frames = [b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n']
    upstream.reply(frames=frames, content_type="text/event-stream")
    upstream.reply_fixture("gemini", "stream_text.sse")
    result, body = run({"model": "no-retry", "messages": HELLO, "stream": True}, stream=True)
    assert result.headers["x-gaud-deployment"] == "gemini/gemini-2.5-flash"
    assert body.endswith(b"data: [DONE]\n\n") and b"Lichens" in body
    assert len(upstream.requests) == 2


def test_a_stream_of_an_error_event_only_is_no_reply(run, upstream):
    """What gemini makes of an Anthropic error frame: no text, no finish reason. It used to pass
    as an empty, complete reply; it is an incomplete stream (this tree does not fall back on it)."""
    frames = [b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n']
    upstream.reply_fixture("anthropic", "error_529_overloaded.json")
    upstream.reply(frames=frames, content_type="text/event-stream")
    error, _ = run({"model": "no-retry", "messages": HELLO, "stream": True}, stream=True)
    assert (error.kind, error.status) == ("incomplete_stream", 502)
    assert [r.path.split("/")[-1] for r in upstream.requests] == ["messages", "gemini-2.5-flash:streamGenerateContent"]


def test_stream_failing_after_bytes_is_not_retried(run, upstream):
    upstream.reply_fixture("anthropic", "stream_error_overloaded.sse")
    upstream.reply_fixture("gemini", "stream_text.sse")
    result, body = run({"model": "chain", "messages": HELLO, "stream": True}, stream=True)
    assert len(upstream.requests) == 1
    assert b'"code":"overloaded"' in body
    assert result.headers["x-gaud-deployment"] == "anthropic/claude-sonnet-4-20250514"


def test_stream_reset_after_bytes_ends_with_error_event(run, upstream):
    upstream.reply_fixture("anthropic", "stream_text.sse", reset_after=4)
    _, body = run({"model": "chain", "messages": HELLO, "stream": True}, stream=True)
    assert len(upstream.requests) == 1
    assert b'"code":"connection"' in body


def test_retry_rule_can_act_on_a_non_conforming_structured_reply(run, upstream):
    def reply(content: str) -> dict:
        return {"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}}

    upstream.reply(json=reply('{"harbour": 7}'))
    upstream.reply(json=reply('{"harbour": "Brest"}'))
    schema = {"type": "object", "properties": {"harbour": {"type": "string"}}, "required": ["harbour"]}
    body = {"model": "strict", "messages": HELLO,
            "response_format": {"type": "json_schema", "json_schema": {"name": "t", "strict": True, "schema": schema}}}
    result, _ = run(body)
    assert served(result) == ("openai/gpt-4o", "2")
    assert result.completion["choices"][0]["message"]["content"] == '{"harbour": "Brest"}'


def test_a_deployment_without_its_own_timeout_keeps_the_upstream_read_timeout(upstream):
    """aiohttp takes `timeout=None` as no timeout at all: a route without `timeout` must still
    get the session's read timeout, not wait for ever."""
    import asyncio

    from engine.errors import UpstreamTimeout
    from engine.pipeline.translate import UpstreamRequest

    upstream.reply(json={"ok": True}, delay=3.0)
    request = UpstreamRequest("POST", f"{upstream.url}/v1/chat/completions", {}, {"model": "m"}, False)

    async def send() -> None:
        client = Upstream(read_timeout=0.3)
        try:
            await client.send(request, timeout=None)
        finally:
            await client.close()

    with pytest.raises(UpstreamTimeout):
        asyncio.run(asyncio.wait_for(send(), 2.5))
