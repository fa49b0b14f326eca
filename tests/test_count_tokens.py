"""count_tokens asks the provider's counting endpoint where the spec declares one (issue 23 item 4):
Anthropic's POST /v1/messages/count_tokens, Gemini's models/{model}:countTokens. The local estimate
answers only when there is none or the call fails, and `x-gaud-token-count` says which."""

from __future__ import annotations

import anthropic
import httpx
import pytest

TOOLS = [{"name": "get_tide_table", "description": "Tide times",
          "input_schema": {"type": "object", "properties": {"harbour": {"type": "string"}}}}]
PROMPT = [{"role": "user", "content": "Hello " * 200}]


@pytest.fixture
def sdk(gateway):  # type: ignore[no-untyped-def]
    return anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0, timeout=20)


def count(gateway, model: str, **extra) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(f"{gateway.url}/v1/messages/count_tokens", timeout=20,
                      json={"model": model, "messages": PROMPT, **extra})


def estimate(gateway) -> int:  # type: ignore[no-untyped-def]
    """The local estimate for PROMPT, from a model whose spec has no counting endpoint."""
    reply = count(gateway, "gpt-4o")
    assert reply.headers["x-gaud-token-count"] == "estimate"
    return int(reply.json()["input_tokens"])


def test_anthropic_counts_with_its_endpoint(sdk, upstream):
    upstream.reply(json={"input_tokens": 1234})
    raw = sdk.messages.with_raw_response.count_tokens(
        model="claude-sonnet-4", messages=PROMPT, system="Be brief.", tools=TOOLS,
        thinking={"type": "enabled", "budget_tokens": 2048})
    assert raw.parse().input_tokens == 1234
    assert raw.headers["x-gaud-token-count"] == "provider"
    sent = upstream.last()
    assert (sent.method, sent.path) == ("POST", "/v1/messages/count_tokens")
    assert sent.headers["x-api-key"] and sent.headers["anthropic-version"]
    body = sent.body
    assert body["model"] == "claude-sonnet-4-20250514"
    assert body["system"] == "Be brief." and body["tools"][0]["name"] == "get_tide_table"
    assert body["messages"] == PROMPT  # the same format: the client's messages as sent (docs/ingress.md)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    # What the counting endpoint refuses is not sent.
    assert not {"max_tokens", "stream", "metadata", "temperature", "top_p"} & set(body)


def test_gemini_counts_with_its_endpoint(gateway, upstream):
    upstream.reply(json={"totalTokens": 77, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 77}]})
    reply = count(gateway, "gemini-2.5-flash", system="Be brief.")
    assert reply.status_code == 200 and reply.json() == {"input_tokens": 77}
    assert reply.headers["x-gaud-token-count"] == "provider"
    sent = upstream.last()
    assert sent.path == "/v1beta/models/gemini-2.5-flash:countTokens"
    request = sent.body["generateContentRequest"]
    assert request["model"] == "models/gemini-2.5-flash"
    assert request["contents"][0]["parts"][0]["text"].startswith("Hello")
    assert request["systemInstruction"]["parts"][0]["text"] == "Be brief."


def test_no_counting_endpoint_estimates_without_a_call(gateway, upstream):
    assert estimate(gateway) > 100
    assert not upstream.requests


@pytest.mark.parametrize("failure", [
    {"status": 500, "json": {"error": {"type": "api_error", "message": "boom"}}},
    {"status": 429, "json": {"error": {"type": "rate_limit_error", "message": "slow down"}}},
    {"status": 200, "json": {"input_tokens": "many"}},
    {"status": 200, "json": {"input_tokens": -3}},
    {"status": 200, "json": {"count": 5}},
    {"status": 200, "body": b"<html>not json</html>", "content_type": "text/html"},
])
def test_a_failed_count_falls_back_to_the_estimate(gateway, upstream, failure):
    expected = estimate(gateway)
    upstream.reply(**failure)
    reply = count(gateway, "claude-sonnet-4")
    assert reply.status_code == 200
    assert reply.headers["x-gaud-token-count"] == "estimate"
    assert reply.json() == {"input_tokens": expected}
    assert upstream.last().path == "/v1/messages/count_tokens"  # it was asked


def test_bad_requests_and_unknown_models(gateway, upstream):
    bad = httpx.post(f"{gateway.url}/v1/messages/count_tokens", json={"model": "claude-sonnet-4", "messages": 3}, timeout=20)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    unknown = count(gateway, "no-such-model")
    assert unknown.status_code == 200 and unknown.headers["x-gaud-token-count"] == "estimate"
    assert not upstream.requests
