"""End to end: the official openai SDK against a running gateway whose upstreams are fakes."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import openai
import pytest

from .oracles import oracle_check
from .streams import assembled, assert_valid_chunks, raw_stream

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_tide_table",
            "description": "Tide times for a harbour",
            "parameters": {"type": "object", "properties": {"harbour": {"type": "string"}, "day": {"type": "string"}}},
        },
    }
]
HELLO = [{"role": "user", "content": "Hello"}]

NON_STREAM = [
    ("claude-sonnet-4", "anthropic", "messages_text.json", "/v1/messages"),
    ("gemini-2.5-flash", "gemini", "generate_text.json", "/v1beta/models/gemini-2.5-flash:generateContent"),
    ("copilot/gpt-4o", "copilot", "chat_completion_text.json", "/chat/completions"),
    ("gpt-4o", "openai", "chat_completion_text.json", "/v1/chat/completions"),
]


@pytest.mark.parametrize(("model", "provider", "fixture", "path"), NON_STREAM)
def test_non_stream_text(client, upstream, gateway, model, provider, fixture, path):
    upstream.reply_fixture(provider, fixture)
    raw = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": model, "messages": HELLO}, timeout=20)
    assert raw.status_code == 200
    body = raw.json()
    oracle_check.assert_openai(body, "CreateChatCompletionResponse")
    assert body["choices"][0]["message"]["content"]
    assert raw.headers["x-request-id"]
    assert raw.headers["x-gaud-deployment"].startswith(f"{provider}/")
    overhead = float(raw.headers["x-gaud-overhead-ms"])
    assert 0 <= overhead < raw.elapsed.total_seconds() * 1000
    assert upstream.last().path == path

    upstream.reply_fixture(provider, fixture)
    reply = client.chat.completions.create(model=model, messages=HELLO)
    assert reply.choices[0].message.content == body["choices"][0]["message"]["content"]
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens or provider == "gemini"


STREAMS = [
    ("claude-sonnet-4", "anthropic", "stream_text.sse"),
    ("gemini-2.5-flash", "gemini", "stream_text.sse"),
    ("copilot/gpt-4o", "copilot", "stream_text.sse"),
    ("gpt-4o", "openai", "stream_include_usage.sse"),
]


@pytest.mark.parametrize(("model", "provider", "fixture"), STREAMS)
def test_stream_text_with_usage(client, upstream, gateway, model, provider, fixture):
    upstream.reply_fixture(provider, fixture)
    objects, done = raw_stream(gateway.url, {"model": model, "messages": HELLO, "stream_options": {"include_usage": True}})
    assert done
    assert_valid_chunks(objects)
    assert objects[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in o["choices"][0]["delta"] for o in objects[1:] if o["choices"])
    assert len({o["id"] for o in objects}) == 1
    result = assembled(objects)
    assert result["content"] and result["finish_reason"] == "stop"
    assert objects[-1]["choices"] == [] and objects[-1]["usage"]["prompt_tokens"] > 0
    if provider in ("openai", "anthropic"):
        # The upstream was asked for usage whether or not the client asked for it.
        assert upstream.last().body.get("stream") is True
    # The same through the SDK, without include_usage: no usage chunk.
    upstream.reply_fixture(provider, fixture)
    chunks = list(client.chat.completions.create(model=model, messages=HELLO, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == result["content"]
    assert all(c.choices for c in chunks)


@pytest.mark.parametrize(
    ("model", "provider", "fixture", "expected_args"),
    [
        ("claude-sonnet-4", "anthropic", "stream_tool_use.sse", ["Brest", "Saint-Malo"]),
        ("gemini-2.5-flash", "gemini", "stream_function_call.sse", ["Brest", "Saint-Malo"]),
        ("copilot/gpt-4o", "copilot", "stream_tool_calls.sse", ["src/app.py", "tests/test_app.py"]),
        ("gpt-4o", "openai", "stream_tool_calls.sse", ["Brest", "Saint-Malo"]),
    ],
)
def test_stream_tool_calls_accumulate_to_valid_json(client, upstream, gateway, model, provider, fixture, expected_args):
    upstream.reply_fixture(provider, fixture)
    objects, done = raw_stream(gateway.url, {"model": model, "messages": HELLO, "tools": TOOLS})
    assert done
    assert_valid_chunks(objects)
    result = assembled(objects)
    assert result["finish_reason"] == "tool_calls"
    assert len(result["tool_calls"]) == 2
    ids = [c["id"] for c in result["tool_calls"]]
    assert all(ids) and len(set(ids)) == 2
    first_values = [next(iter(json.loads(c["arguments"]).values())) for c in result["tool_calls"]]
    assert first_values == expected_args
    # Every tool-call delta names the index of the call it belongs to, and ids appear once.
    id_chunks = [tc for o in objects for ch in o["choices"] for tc in ch["delta"].get("tool_calls") or [] if "id" in tc]
    assert [tc["index"] for tc in id_chunks] == [0, 1]


def test_non_stream_tool_calls_with_sdk(client, upstream):
    upstream.reply_fixture("anthropic", "messages_tool_use_parallel.json")
    reply = client.chat.completions.create(model="claude-sonnet-4", messages=HELLO, tools=TOOLS, tool_choice="auto")
    calls = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls"
    assert [json.loads(c.function.arguments)["harbour"] for c in calls] == ["Brest", "Saint-Malo"]
    sent = upstream.last().body
    assert sent["tools"][0]["input_schema"]["properties"]["harbour"] == {"type": "string"}
    assert sent["tool_choice"] == {"type": "auto"}


PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()


def test_image_data_uri_and_url_to_anthropic(client, upstream):
    upstream.reply_fixture("anthropic", "messages_text.json")
    client.chat.completions.create(
        model="claude-sonnet-4",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            }
        ],
    )
    blocks = upstream.last().body["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
    oracle_check.assert_anthropic_request(upstream.last().body)


def test_image_url_fetched_and_inlined_for_gemini(client, upstream):
    image = b"\x89PNG\r\n\x1a\nfake-image-bytes"
    upstream.reply(body=image, content_type="image/png")  # the image the gateway fetches first
    upstream.reply_fixture("gemini", "generate_text.json")
    client.chat.completions.create(
        model="gemini-2.5-flash",
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": f"{upstream.url}/cat.png"}},
        ]}],
    )
    fetch, generate = upstream.requests
    assert fetch.method == "GET" and fetch.path == "/cat.png"
    parts = generate.body["contents"][0]["parts"]
    assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(image).decode()}}
    oracle_check.assert_gemini_request(generate.body)


def test_stream_reports_overhead_to_first_byte(upstream, gateway):
    upstream.reply_fixture("anthropic", "stream_text.sse", delay=0.2)
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions",
                      json={"model": "claude-sonnet-4", "messages": HELLO, "stream": True}) as response:
        overhead = float(response.headers["x-gaud-overhead-ms"])
        response.read()
    # The upstream's 200 ms wait is not the gateway's overhead.
    assert 0 <= overhead < 200


def test_include_usage_reports_cached_tokens(upstream, gateway):
    upstream.reply_fixture("anthropic", "stream_cache_usage.sse")
    objects, _ = raw_stream(gateway.url, {"model": "claude-sonnet-4", "messages": HELLO, "stream_options": {"include_usage": True}})
    usage = objects[-1]["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] > 0
    assert usage["prompt_tokens"] > usage["prompt_tokens_details"]["cached_tokens"]


def test_reasoning_stream(upstream, gateway):
    upstream.reply_fixture("anthropic", "stream_thinking.sse")
    objects, _ = raw_stream(gateway.url, {"model": "claude-sonnet-4", "messages": HELLO, "reasoning_effort": "low"})
    assert_valid_chunks(objects)
    result = assembled(objects)
    assert result["reasoning"].startswith("Ten odd numbers")
    assert result["content"] == "The answer is 100."
    sent = upstream.last().body
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert "temperature" not in sent


def test_models_and_health(gateway):
    models = httpx.get(f"{gateway.url}/v1/models").json()
    ids = {m["id"] for m in models["data"]}
    assert {"claude-sonnet-4", "anthropic/claude-sonnet-4-20250514", "gemini/gemini-2.5-flash"} <= ids
    assert models["object"] == "list"
    assert httpx.get(f"{gateway.url}/health").json() == {"status": "ok"}
    health = httpx.get(f"{gateway.url}/health?detail=1").json()
    assert health["status"] == "ok"
    assert health["providers"]["anthropic"]["ready"] is True
    assert "breakers" in health


def test_sdk_models_list(client):
    assert any(m.id == "gpt-4o" for m in client.models.list())


def test_upstream_error_reaches_sdk_as_openai_error(client, upstream):
    upstream.reply_fixture("anthropic", "error_429_rate_limit.json")
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="claude-sonnet-4", messages=HELLO)
    assert info.value.response.headers["retry-after"] == "17"
    assert info.value.body["code"] == "rate_limit_exceeded"


def test_models_list_hides_providers_without_credentials_and_adds_upstream_lists(upstream, tmp_path):
    from .conftest import spec_tree, start_gateway

    tree = spec_tree(tmp_path)
    env = {"GEMINI_API_KEY": "g-key", "GEMINI_BASE_URL": upstream.url, "GAUD_SPECS_DIR": str(tree),
           "GAUD_AUTH_ENABLED": "false", "GAUD_MODELS_REFRESH_FROM_UPSTREAM": "true"}
    upstream.reply_fixture("gemini", "models_list.json")  # fetched once at start
    running = start_gateway(env, tmp_path / "gw.log")
    try:
        ids = {m["id"] for m in httpx.get(f"{running.url}/v1/models").json()["data"]}
    finally:
        running.process.terminate()
        running.process.wait(10)
    assert upstream.requests[0].path == "/v1beta/models"
    assert upstream.requests[0].headers["x-goog-api-key"] == "g-key"
    assert "fast" in ids and "gemini/gemini-2.5-flash" in ids
    # From the upstream's own list, names stripped of their "models/" prefix:
    listed = {f"gemini/{m['name'][len('models/'):]}" for m in json.loads(
        (Path(__file__).parent / "providers" / "gemini" / "replies" / "models_list.json").read_text())["models"]}
    assert listed <= ids
    # No credentials for the others: their models and aliases are not offered.
    assert not any(i.startswith(("anthropic/", "openai/", "copilot/")) for i in ids)
    assert "claude-sonnet-4" not in ids and "gpt-4o" not in ids
