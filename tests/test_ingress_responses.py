"""The OpenAI Responses API, stateless and non-streaming subset (ingress.d/openai-responses.yaml),
end to end with the official `openai` SDK in front of fake OpenAI, Gemini and Anthropic upstreams."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai.types.responses import Response

TOOLS = [{
    "type": "function",
    "name": "get_tide_table",
    "description": "Tide times for a harbour",
    "parameters": {"type": "object", "properties": {"harbour": {"type": "string"}}},
}]


@pytest.mark.parametrize(("model", "provider", "fixture"), [
    ("gpt-4o", "openai", "chat_completion_text.json"),
    ("gemini-2.5-flash", "gemini", "generate_text.json"),
    ("claude-sonnet-4", "anthropic", "messages_text.json"),
])
def test_text(client, upstream, gateway, model, provider, fixture):
    upstream.reply_fixture(provider, fixture)
    reply = client.responses.create(model=model, instructions="Be brief.", input="Hello", max_output_tokens=60)
    assert reply.output_text and reply.status == "completed"
    assert reply.usage.output_tokens > 0
    raw = httpx.post(f"{gateway.url}/v1/responses", json={"model": model, "input": "Hello"}, timeout=20)
    assert raw.status_code == 502  # no reply queued: the fake upstream answers 500
    assert raw.json()["error"]["message"]

    upstream.reply_fixture(provider, fixture)
    raw = httpx.post(f"{gateway.url}/v1/responses", json={"model": model, "input": "Hello"}, timeout=20)
    Response.model_validate(raw.json())


def test_tool_calls_round_trip(client, upstream):
    upstream.reply_fixture("openai", "chat_completion_tool_calls_parallel.json")
    reply = client.responses.create(model="gpt-4o", input="Tides?", tools=TOOLS, tool_choice="required",
                                    parallel_tool_calls=True)
    calls = [item for item in reply.output if item.type == "function_call"]
    assert len(calls) >= 2 and all(c.call_id and c.arguments for c in calls)
    assert upstream.last().body["tool_choice"] == "required"

    upstream.reply_fixture("openai", "chat_completion_text.json")
    follow = client.responses.create(model="gpt-4o", tools=TOOLS, input=[
        {"role": "user", "content": "Tides?"},
        *({"type": "function_call", "call_id": c.call_id, "name": c.name, "arguments": c.arguments} for c in calls),
        *({"type": "function_call_output", "call_id": c.call_id, "output": "06:12"} for c in calls),
        {"role": "user", "content": [{"type": "input_text", "text": "Thanks"},
                                     {"type": "input_image", "image_url": "https://example.com/a.png"}]},
    ], tool_choice={"type": "function", "name": "get_tide_table"})
    assert follow.output_text
    sent = upstream.last().body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", *["tool"] * len(calls), "user"]
    assert [c["id"] for c in sent[1]["tool_calls"]] == [c.call_id for c in calls]
    assert sent[-1]["content"][1]["image_url"]["url"] == "https://example.com/a.png"
    assert upstream.last().body["tool_choice"] == {"type": "function", "function": {"name": "get_tide_table"}}


def test_tool_call_from_gemini(client, upstream):
    upstream.reply_fixture("gemini", "generate_function_call_with_signature.json")
    reply = client.responses.create(model="gemini-2.5-flash", input="Tides?", tools=TOOLS)
    call = next(item for item in reply.output if item.type == "function_call")
    upstream.reply_fixture("gemini", "generate_text.json")
    client.responses.create(model="gemini-2.5-flash", tools=TOOLS, input=[
        {"role": "user", "content": "Tides?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "06:12"},
    ])
    parts = [p for c in upstream.last().body["contents"] for p in c["parts"]]
    assert any(p.get("thoughtSignature") for p in parts if "functionCall" in p)


def test_reasoning_and_length(client, upstream):
    upstream.reply_fixture("anthropic", "messages_thinking.json")
    reply = client.responses.create(model="claude-sonnet-4", input="Sum?", reasoning={"effort": "low"})
    assert reply.output[0].type == "reasoning" and reply.output[0].summary[0].text
    assert upstream.last().body["thinking"]["budget_tokens"] == 1024
    upstream.reply_fixture("openai", "chat_completion_length.json")
    cut = client.responses.create(model="gpt-4o", input="Long story", max_output_tokens=5)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize("body", [
    {"input": "hi"},
    {"model": "gpt-4o"},
    {"model": "gpt-4o", "input": 3},
    {"model": "gpt-4o", "input": []},
    {"model": "gpt-4o", "input": [{"role": "robot", "content": "x"}]},
    {"model": "gpt-4o", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
    {"model": "gpt-4o", "input": "hi", "previous_response_id": "resp_1"},
    {"model": "gpt-4o", "input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]},
])
def test_bad_input_gets_the_openai_envelope(gateway, upstream, body):
    raw = httpx.post(f"{gateway.url}/v1/responses", json=body, timeout=20)
    assert raw.status_code == 400, raw.text
    assert raw.json()["error"]["type"] == "invalid_request_error" and raw.json()["error"]["message"]
    assert not upstream.requests


def test_sdk_sees_typed_errors(client, upstream):
    upstream.reply_fixture("openai", "error_429_rate_limit.json")
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="gpt-4o", input="hi")


# -- streams ------------------------------------------------------------------------------------
def _raw_events(gateway, body):  # type: ignore[no-untyped-def]
    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    from .oracles import oracle_check

    adapter = TypeAdapter(ResponseStreamEvent)
    with httpx.stream("POST", f"{gateway.url}/v1/responses", json={**body, "stream": True}, timeout=20) as raw:
        assert raw.status_code == 200
        events = []
        for name, data in oracle_check.iter_sse(raw.read().decode()):
            event = json.loads(data)
            adapter.validate_python(event)
            assert name == event["type"]
            events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


@pytest.mark.parametrize(("model", "provider", "fixture"), [
    ("gpt-4o", "openai", "stream_include_usage.sse"),
    ("gemini-2.5-flash", "gemini", "stream_text.sse"),
    ("claude-sonnet-4", "anthropic", "stream_text.sse"),
])
def test_stream_text(client, upstream, gateway, model, provider, fixture):
    upstream.reply_fixture(provider, fixture)
    events = _raw_events(gateway, {"model": model, "input": "Hello"})
    types = [e["type"] for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert "response.output_text.delta" in types
    done = next(e for e in events if e["type"] == "response.output_text.done")
    final = events[-1]["response"]
    Response.model_validate(final)
    assert final["output"][0]["content"][0]["text"] == done["text"] and final["usage"]["output_tokens"] > 0

    upstream.reply_fixture(provider, fixture)
    with client.responses.stream(model=model, input="Hello") as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        reply = stream.get_final_response()
    assert deltas and reply.output_text == deltas


@pytest.mark.parametrize(("model", "provider", "fixture"), [
    ("gpt-4o", "openai", "stream_tool_calls.sse"),
    ("gemini-2.5-flash", "gemini", "stream_function_call.sse"),
    ("claude-sonnet-4", "anthropic", "stream_tool_use.sse"),
])
def test_stream_tool_calls(client, upstream, gateway, model, provider, fixture):
    upstream.reply_fixture(provider, fixture)
    events = _raw_events(gateway, {"model": model, "input": "Tides?", "tools": TOOLS})
    final = events[-1]["response"]
    calls = [item for item in final["output"] if item["type"] == "function_call"]
    assert calls and all(json.loads(c["arguments"]) for c in calls)
    args_done = [e["arguments"] for e in events if e["type"] == "response.function_call_arguments.done"]
    assert args_done == [c["arguments"] for c in calls]


def test_stream_reasoning(client, upstream, gateway):
    upstream.reply_fixture("anthropic", "stream_thinking.sse")
    events = _raw_events(gateway, {"model": "claude-sonnet-4", "input": "Sum?", "reasoning": {"effort": "low"}})
    assert "response.reasoning_summary_text.delta" in [e["type"] for e in events]
    assert events[-1]["response"]["output"][0]["type"] == "reasoning"
