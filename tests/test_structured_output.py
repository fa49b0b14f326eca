"""Structured output: `response_format` json_schema / json_object per provider spec, and strict
validation of the reply (a non-conforming reply is an `invalid_output` error)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from pydantic import BaseModel

from .oracles import oracle_check
from .streams import assembled, raw_stream

HELLO = [{"role": "user", "content": "Tide at Brest?"}]


class Tide(BaseModel):
    harbour: str
    high_water: str


SCHEMA = Tide.model_json_schema()
GOOD = {"harbour": "Brest", "high_water": "06:12"}
BAD = {"harbour": "Brest"}  # high_water missing


def anthropic_reply(args: dict) -> dict:
    return {
        "id": "msg_structured", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
        "content": [{"type": "tool_use", "id": "toolu_s", "name": "json_output", "input": args}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 50, "output_tokens": 20},
    }


def gemini_reply(args: dict) -> dict:
    return {
        "candidates": [{"content": {"parts": [{"text": json.dumps(args)}], "role": "model"}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 50, "candidatesTokenCount": 20, "totalTokenCount": 70},
        "modelVersion": "gemini-2.5-flash", "responseId": "structured",
    }


def openai_reply(args: dict) -> dict:
    return {
        "id": "chatcmpl-structured", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": json.dumps(args), "refusal": None},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70},
    }


CASES = [
    ("claude-sonnet-4", anthropic_reply),
    ("gemini-2.5-flash", gemini_reply),
    ("gpt-4o", openai_reply),
]


@pytest.mark.parametrize(("model", "reply"), CASES)
def test_parse_with_sdk_gives_a_validated_object(client, upstream, model, reply):
    upstream.reply(json=reply(GOOD))
    completion = client.chat.completions.parse(model=model, messages=HELLO, response_format=Tide)
    message = completion.choices[0].message
    assert message.parsed == Tide(**GOOD)
    assert completion.choices[0].finish_reason == "stop"
    assert not message.tool_calls
    sent = upstream.last().body
    if model.startswith("claude"):
        oracle_check.assert_anthropic_request(sent)
        assert sent["tool_choice"] == {"type": "tool", "name": "json_output"}
        assert sent["tools"] == [{"name": "json_output", "description": "Respond with a JSON object that matches this schema.",
                                  "input_schema": sent["tools"][0]["input_schema"]}]
        assert sent["tools"][0]["input_schema"]["required"] == ["harbour", "high_water"]
    elif model.startswith("gemini"):
        oracle_check.assert_gemini_request(sent)
        assert sent["generationConfig"]["responseMimeType"] == "application/json"
        assert sent["generationConfig"]["responseJsonSchema"]["properties"].keys() == {"harbour", "high_water"}
    else:
        assert sent["response_format"]["type"] == "json_schema"
        assert sent["response_format"]["json_schema"]["strict"] is True


@pytest.mark.parametrize(("model", "reply"), CASES)
def test_non_conforming_reply_is_invalid_output(client, upstream, gateway, model, reply):
    upstream.reply(json=reply(BAD))
    body = {
        "model": model,
        "messages": HELLO,
        "response_format": {"type": "json_schema", "json_schema": {"name": "tide", "strict": True, "schema": SCHEMA}},
    }
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "invalid_output"
    assert "high_water" in error["message"]


def test_non_strict_schema_is_not_enforced(upstream, gateway):
    upstream.reply(json=gemini_reply(BAD))
    body = {"model": "gemini-2.5-flash", "messages": HELLO,
            "response_format": {"type": "json_schema", "json_schema": {"name": "tide", "schema": SCHEMA}}}
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == BAD


def test_json_object_to_anthropic_uses_an_open_schema(client, upstream):
    upstream.reply(json=anthropic_reply({"any": "thing"}))
    completion = client.chat.completions.create(model="claude-sonnet-4", messages=HELLO, response_format={"type": "json_object"})
    assert json.loads(completion.choices[0].message.content) == {"any": "thing"}
    assert upstream.last().body["tools"][0]["input_schema"] == {"type": "object", "properties": {}}


def test_structured_output_streams_as_content(upstream, gateway):
    frames = [
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_s","type":"message","role":"assistant","model":"m","content":[],"stop_reason":null,"usage":{"input_tokens":5,"output_tokens":1}}}\n\n',
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_s","name":"json_output","input":{}}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\\"harbour\\": \\"Br"}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"est\\", \\"high_water\\": \\"06:12\\"}"}}\n\n',
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":9}}\n\n',
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
    ]
    upstream.reply(frames=frames, content_type="text/event-stream")
    objects, _ = raw_stream(gateway.url, {"model": "claude-sonnet-4", "messages": HELLO,
                                          "response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMA}}})
    result = assembled(objects)
    assert json.loads(result["content"]) == GOOD
    assert result["tool_calls"] == [] and result["finish_reason"] == "stop"


def test_invalid_schema_is_refused_before_any_upstream_call(client, upstream):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gpt-4o", messages=HELLO,
            response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": {"type": "nonsense"}}},
        )
    assert info.value.body["param"] == "response_format.json_schema.schema"
    assert upstream.requests == []
