"""The Anthropic Messages API served by the gateway (ingress.d/anthropic-messages.yaml), end to end
with the official `anthropic` SDK, in front of fake Gemini, OpenAI and Anthropic upstreams."""

from __future__ import annotations

import hashlib
import json

import anthropic
import httpx
import pytest

from engine.spec.loader import load_catalog

from .conftest import ROOT
from .oracles import oracle_check

HELLO = [{"role": "user", "content": "Hello"}]
TOOLS = [{
    "name": "get_tide_table",
    "description": "Tide times for a harbour",
    "input_schema": {"type": "object", "properties": {"harbour": {"type": "string"}, "day": {"type": "string"}}},
}]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


@pytest.fixture
def sdk(gateway):  # type: ignore[no-untyped-def]
    return anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0, timeout=20)


def _message(raw: dict) -> dict:
    oracle_check.assert_anthropic_response(raw)
    return raw


def _events(text: str) -> list[tuple[str | None, dict]]:
    """Every SSE event of a reply, each checked against the SDK's event types."""
    events = []
    for event, data in oracle_check.iter_sse(text):
        payload = json.loads(data)
        oracle_check.assert_anthropic_stream_event(payload)
        assert event == payload["type"]
        events.append((event, payload))
    return events


# -- non-stream ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "provider", "fixture", "path"), [
    ("gpt-4o", "openai", "chat_completion_text.json", "/v1/chat/completions"),
    ("gemini-2.5-flash", "gemini", "generate_text.json", "/v1beta/models/gemini-2.5-flash:generateContent"),
    ("claude-sonnet-4", "anthropic", "messages_text.json", "/v1/messages"),
])
def test_non_stream_text(sdk, upstream, gateway, model, provider, fixture, path):
    upstream.reply_fixture(provider, fixture)
    reply = sdk.messages.create(model=model, max_tokens=100, system="Be brief.", messages=HELLO)
    assert reply.type == "message" and reply.role == "assistant"
    assert reply.content[0].type == "text" and reply.content[0].text
    assert reply.stop_reason == "end_turn"
    assert reply.usage.output_tokens > 0
    assert upstream.last().path == path
    oracle_check.assert_anthropic_response(reply.model_dump())

    upstream.reply_fixture(provider, fixture)
    raw = httpx.post(f"{gateway.url}/v1/messages", json={"model": model, "max_tokens": 50, "messages": HELLO},
                     headers={"x-api-key": "k", "anthropic-version": "2023-06-01"}, timeout=20)
    assert raw.status_code == 200 and raw.headers["x-gaud-deployment"].startswith(f"{provider}/")
    _message(raw.json())


def test_canonical_request_sent_upstream(sdk, upstream):
    upstream.reply_fixture("openai", "chat_completion_text.json")
    sdk.messages.create(
        model="gpt-4o", max_tokens=77, system=[{"type": "text", "text": "Be brief."}], messages=HELLO,
        stop_sequences=["END"], metadata={"user_id": "u-1"}, extra_body={"temperature": 0.5},
    )
    body = upstream.last().body
    assert body["messages"][0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert body["messages"][1] == {"role": "user", "content": "Hello"}
    assert body["stop"] == ["END"] and body["temperature"] == 0.5 and body["user"] == "u-1"


def test_tools_round_trip(sdk, upstream):
    upstream.reply_fixture("openai", "chat_completion_tool_calls_parallel.json")
    reply = sdk.messages.create(model="gpt-4o", max_tokens=200, messages=HELLO, tools=TOOLS,
                                tool_choice={"type": "any", "disable_parallel_tool_use": False})
    assert reply.stop_reason == "tool_use"
    uses = [b for b in reply.content if b.type == "tool_use"]
    assert uses and all(isinstance(u.input, dict) for u in uses)
    sent = upstream.last().body
    assert sent["tool_choice"] == "required"
    assert sent["tools"][0]["function"]["name"] == "get_tide_table"

    upstream.reply_fixture("openai", "chat_completion_text.json")
    follow = sdk.messages.create(model="gpt-4o", max_tokens=200, tools=TOOLS, messages=[
        *HELLO,
        {"role": "assistant", "content": [b.model_dump() for b in reply.content]},
        {"role": "user", "content": [
            *({"type": "tool_result", "tool_use_id": u.id, "content": "High tide 06:12"} for u in uses),
            {"type": "text", "text": "And tomorrow?"},
        ]},
    ], tool_choice={"type": "tool", "name": "get_tide_table", "disable_parallel_tool_use": True})
    assert follow.content[0].type == "text"
    sent = upstream.last().body
    roles = [m["role"] for m in sent["messages"]]
    assert roles == ["user", "assistant", *["tool"] * len(uses), "user"]
    assert [m["tool_call_id"] for m in sent["messages"] if m["role"] == "tool"] == [u.id for u in uses]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_tide_table"}}
    assert sent["parallel_tool_calls"] is False


def test_tool_round_trip_to_gemini(sdk, upstream):
    upstream.reply_fixture("gemini", "generate_function_call_with_signature.json")
    reply = sdk.messages.create(model="gemini-2.5-flash", max_tokens=200, messages=HELLO, tools=TOOLS)
    use = next(b for b in reply.content if b.type == "tool_use")
    upstream.reply_fixture("gemini", "generate_text.json")
    sdk.messages.create(model="gemini-2.5-flash", max_tokens=200, tools=TOOLS, messages=[
        *HELLO,
        {"role": "assistant", "content": [b.model_dump() for b in reply.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "06:12"}]},
    ])
    contents = upstream.last().body["contents"]
    call = next(p for c in contents for p in c["parts"] if "functionCall" in p)
    # Gemini's thought signature rode in the tool_use id and came back to Gemini.
    assert call.get("thoughtSignature")
    assert any("functionResponse" in p for c in contents for p in c["parts"])


@pytest.mark.parametrize(("source", "url"), [
    ({"type": "base64", "media_type": "image/png", "data": PNG}, f"data:image/png;base64,{PNG}"),
    ({"type": "url", "url": "https://example.com/a.png"}, "https://example.com/a.png"),
])
def test_image_block(sdk, upstream, source, url):
    upstream.reply_fixture("openai", "chat_completion_text.json")
    sdk.messages.create(model="gpt-4o", max_tokens=50, messages=[{"role": "user", "content": [
        {"type": "image", "source": source}, {"type": "text", "text": "What is this?"}]}])
    content = upstream.last().body["messages"][0]["content"]
    assert content[0]["image_url"]["url"] == url
    assert content[1] == {"type": "text", "text": "What is this?"}


def test_image_base64_to_gemini(sdk, upstream):
    upstream.reply_fixture("gemini", "generate_text.json")
    sdk.messages.create(model="gemini-2.5-flash", max_tokens=50, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}])
    parts = upstream.last().body["contents"][0]["parts"]
    assert parts[0]["inlineData"] == {"mimeType": "image/png", "data": PNG}


def test_thinking_reply_from_anthropic_upstream(sdk, upstream):
    upstream.reply_fixture("anthropic", "messages_thinking.json")
    reply = sdk.messages.create(model="claude-sonnet-4", max_tokens=4000, messages=HELLO,
                                thinking={"type": "enabled", "budget_tokens": 2048})
    # Passed through (same format): the upstream's blocks as they came, redacted thinking included.
    assert [b.type for b in reply.content] == ["thinking", "redacted_thinking", "text"]
    assert reply.content[0].thinking.startswith("The user wants")
    assert upstream.last().body["thinking"] == {"type": "enabled", "budget_tokens": 2048}


def test_thinking_from_gemini(sdk, upstream):
    upstream.reply_fixture("gemini", "generate_thinking.json")
    reply = sdk.messages.create(model="gemini-2.5-flash", max_tokens=4000, messages=HELLO,
                                thinking={"type": "enabled", "budget_tokens": 1024})
    assert reply.content[0].type == "thinking" and reply.content[0].thinking
    assert reply.content[-1].type == "text"


def test_thinking_signature_reaches_an_anthropic_upstream(sdk, upstream):
    upstream.reply_fixture("anthropic", "messages_text.json")
    sdk.messages.create(model="claude-sonnet-4", max_tokens=4000, tools=TOOLS,
                        thinking={"type": "enabled", "budget_tokens": 1024}, messages=[
        *HELLO,
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Look it up.", "signature": "SIG-1"},
            {"type": "tool_use", "id": "toolu_01", "name": "get_tide_table", "input": {"harbour": "Brest"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "06:12"}]},
    ])
    sent = upstream.last().body
    oracle_check.assert_anthropic_request(sent)
    assert sent["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "Look it up.", "signature": "SIG-1"},
        {"type": "tool_use", "id": "toolu_01", "name": "get_tide_table", "input": {"harbour": "Brest"}},
    ]
    assert sent["messages"][2]["content"][0]["tool_use_id"] == "toolu_01"


# -- pass-through -------------------------------------------------------------------------------
def _normalised(body: dict) -> dict:
    """Documented differences of an Anthropic -> canonical -> Anthropic round trip: a string
    content becomes one text block, a string system prompt stays a string, and the end-user id
    arrives as its SHA-256 (the translated path cannot tell a client's id from an e-mail address)."""
    out = json.loads(json.dumps(body))
    for message in out["messages"]:
        if isinstance(message["content"], str):
            message["content"] = [{"type": "text", "text": message["content"]}]
    out.pop("model")
    user_id = out.get("metadata", {}).get("user_id")
    if isinstance(user_id, str) and len(user_id) != 64:
        out["metadata"]["user_id"] = hashlib.sha256(user_id.encode()).hexdigest()
    return out


def test_anthropic_request_to_anthropic_upstream_passes_through(sdk, upstream):
    client_body = {
        "model": "claude-sonnet-4",
        "max_tokens": 4096,
        "system": "You are terse.",
        "messages": [
            {"role": "user", "content": "Tide at Brest?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Need the table.", "signature": "SIG-2"},
                {"type": "tool_use", "id": "toolu_07", "name": "get_tide_table", "input": {"harbour": "Brest"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_07", "content": "High 06:12"},
                {"type": "text", "text": "Thanks", "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]},
        ],
        "tools": [{**TOOLS[0], "cache_control": {"type": "ephemeral"}}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-7"},
    }
    upstream.reply_fixture("anthropic", "messages_text.json")
    sdk.messages.create(**client_body)
    sent = upstream.last().body
    oracle_check.assert_anthropic_request(sent)
    assert sent["model"] == "claude-sonnet-4-20250514"
    assert _normalised(sent) == _normalised(client_body)


# -- streams ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "provider", "fixture"), [
    ("gpt-4o", "openai", "stream_include_usage.sse"),
    ("gemini-2.5-flash", "gemini", "stream_text.sse"),
    ("claude-sonnet-4", "anthropic", "stream_text.sse"),
])
def test_stream_text(sdk, upstream, gateway, model, provider, fixture):
    upstream.reply_fixture(provider, fixture)
    with httpx.stream("POST", f"{gateway.url}/v1/messages", timeout=20, json={
            "model": model, "max_tokens": 100, "messages": HELLO, "stream": True}) as raw:
        assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
        events = _events(raw.read().decode())
    names = [e for e, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert "content_block_start" in names and "content_block_stop" in names
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"

    upstream.reply_fixture(provider, fixture)
    with sdk.messages.stream(model=model, max_tokens=100, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text
    oracle_check.assert_anthropic_response(final.model_dump())


@pytest.mark.parametrize(("model", "provider", "fixture"), [
    ("gpt-4o", "openai", "stream_tool_calls.sse"),
    ("gemini-2.5-flash", "gemini", "stream_function_call.sse"),
    ("claude-sonnet-4", "anthropic", "stream_tool_use.sse"),
])
def test_stream_tool_use(sdk, upstream, model, provider, fixture):
    upstream.reply_fixture(provider, fixture)
    raw = sdk.messages.create(model=model, max_tokens=200, messages=HELLO, tools=TOOLS, stream=True)
    events = [e.model_dump() for e in raw]
    for event in events:
        oracle_check.assert_anthropic_stream_event(event)
    kinds = [(e["type"], (e.get("delta") or e.get("content_block") or {}).get("type")) for e in events]
    assert ("content_block_start", "tool_use") in kinds
    assert ("content_block_delta", "input_json_delta") in kinds
    assert events[-2]["delta"]["stop_reason"] == "tool_use"

    upstream.reply_fixture(provider, fixture)
    with sdk.messages.stream(model=model, max_tokens=200, messages=HELLO, tools=TOOLS) as stream:
        final = stream.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    assert uses and all(isinstance(u.input, dict) and u.input for u in uses)


@pytest.mark.parametrize(("model", "provider"), [("claude-sonnet-4", "anthropic"), ("gemini-2.5-flash", "gemini")])
def test_stream_thinking(sdk, upstream, gateway, model, provider):
    upstream.reply_fixture(provider, "stream_thinking.sse")
    with httpx.stream("POST", f"{gateway.url}/v1/messages", timeout=20, json={
            "model": model, "max_tokens": 4000, "messages": HELLO, "stream": True,
            "thinking": {"type": "enabled", "budget_tokens": 1024}}) as raw:
        events = [p for _, p in _events(raw.read().decode())]
    blocks = [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"]
    assert blocks[0] == "thinking" and "text" in blocks
    assert any(e["type"] == "content_block_delta" and e["delta"]["type"] == "thinking_delta" for e in events)

    upstream.reply_fixture(provider, "stream_thinking.sse")
    with sdk.messages.stream(model=model, max_tokens=4000, messages=HELLO,
                             thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        seen = [event.type for event in stream]
        final = stream.get_final_message()
    assert "thinking" in seen
    assert final.content[0].type == "thinking" and final.content[0].thinking
    oracle_check.assert_anthropic_response(final.model_dump())


def test_stream_signature_for_the_tool_call_after_thinking(gateway, upstream):
    """An Anthropic upstream's thinking + tool_use stream: the signature reaches the client."""
    frames = [
        {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
                                              "content": [], "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Look it up."}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "SIG-3"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_9", "name": "get_tide_table", "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"harbour\":\"Brest\"}"}},
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 20}},
        {"type": "message_stop"},
    ]
    upstream.reply(frames=[f"event: {f['type']}\ndata: {json.dumps(f)}\n\n".encode() for f in frames],
                   content_type="text/event-stream")
    with httpx.stream("POST", f"{gateway.url}/v1/messages", timeout=20, json={
            "model": "claude-sonnet-4", "max_tokens": 4000, "messages": HELLO, "stream": True, "tools": TOOLS,
            "thinking": {"type": "enabled", "budget_tokens": 1024}}) as raw:
        events = [p for _, p in _events(raw.read().decode())]
    deltas = [e["delta"] for e in events if e["type"] == "content_block_delta"]
    assert {"type": "signature_delta", "signature": "SIG-3"} in deltas
    start = next(e for e in events if e["type"] == "content_block_start" and e["content_block"]["type"] == "tool_use")
    assert start["content_block"]["id"] == "toolu_9"
    assert events[-1]["type"] == "message_stop" and events[-2]["usage"]["output_tokens"] == 20


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    {"model": "gpt-4o", "messages": HELLO},  # no max_tokens
    {"model": "gpt-4o", "max_tokens": "ten", "messages": HELLO},
    {"model": "gpt-4o", "max_tokens": 10, "messages": []},
    {"model": "gpt-4o", "max_tokens": 10, "messages": "hi"},
    {"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "robot", "content": "hi"}]},
    {"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
    {"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": [42]}]},
    {"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": 42}]},
    {"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user"}]},
    {"model": "gpt-4o", "max_tokens": 10, "messages": HELLO, "system": 7},
    {"model": "gpt-4o", "max_tokens": 10, "messages": HELLO, "temperature": "hot"},
    {"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "nope", "content": "x"}]}]},
    {"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png"}}]}]},
])
def test_bad_input_gets_the_anthropic_envelope(gateway, upstream, body):
    raw = httpx.post(f"{gateway.url}/v1/messages", json=body, timeout=20)
    assert raw.status_code == 400, raw.text
    payload = raw.json()
    assert payload["type"] == "error" and payload["error"]["type"] == "invalid_request_error"
    assert isinstance(payload["error"]["message"], str) and payload["error"]["message"]
    assert not upstream.requests


def test_other_methods_get_405(gateway):
    assert httpx.get(f"{gateway.url}/v1/messages").status_code == 405


def test_bad_json_and_unknown_model(gateway, upstream, sdk):
    raw = httpx.post(f"{gateway.url}/v1/messages", content=b"{nope", headers={"content-type": "application/json"})
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError) as caught:
        sdk.messages.create(model="no-such-model", max_tokens=10, messages=HELLO)
    assert caught.value.body["error"]["type"] == "not_found_error"


def test_upstream_errors_in_the_anthropic_envelope(sdk, upstream):
    upstream.reply_fixture("openai", "error_429_rate_limit.json")
    with pytest.raises(anthropic.RateLimitError) as caught:
        sdk.messages.create(model="gpt-4o", max_tokens=10, messages=HELLO)
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "rate_limit_error"


# -- count_tokens -------------------------------------------------------------------------------
def test_count_tokens(sdk, upstream, gateway):
    counted = sdk.messages.count_tokens(model="gpt-4o", messages=[{"role": "user", "content": "Hello " * 200}],
                                        system="Be brief.", tools=TOOLS)
    assert counted.input_tokens > 100
    assert not upstream.requests
    raw = httpx.post(f"{gateway.url}/v1/messages/count_tokens", json={"model": "gpt-4o", "messages": 3})
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"


# -- the spec -----------------------------------------------------------------------------------
def test_shipped_ingress_specs_validate():
    catalog = load_catalog(ROOT)
    assert not [p for p in catalog.problems if "ingress" in p.file]
    spec = catalog.ingress["anthropic-messages"]
    assert spec.routes == {"chat": "/v1/messages", "count_tokens": "/v1/messages/count_tokens"}


def test_a_broken_ingress_spec_is_reported(tmp_path):
    import shutil

    for folder in ("providers.d", "pricing.d", "models.d", "ingress.d"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    shutil.copy(ROOT / "routes.yaml", tmp_path / "routes.yaml")
    (tmp_path / "ingress.d" / "broken.yaml").write_text("routes: {chat: /v1/messages}\nrequest: {map: []}\n")
    problems = [str(p) for p in load_catalog(tmp_path).problems]
    assert any("broken.yaml" in p and "response" in p for p in problems), problems


def test_the_ingress_engine_names_no_format():
    for name in ("spec/ingress.py", "streaming/blocks.py", "mapping/client.py", "web/server.py", "spec/loader.py"):
        path = ROOT / "engine" / name
        text = path.read_text().lower()
        for word in ("anthropic", "claude", "gemini", "messages api"):
            assert word not in text, f"{path} names {word}"

