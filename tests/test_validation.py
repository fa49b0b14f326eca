"""Malformed and hostile requests: each a precise 4xx, none reaches the upstream, none a 500."""

from __future__ import annotations

import base64

import httpx
import pytest

from engine.errors import InvalidRequest
from engine.pipeline.validation import Limits, validate_request

from .conftest import MAX_BODY_BYTES

U = {"role": "user", "content": "hi"}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
CALL = {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


def deep(n: int) -> dict:
    node: dict = {"type": "object"}
    for _ in range(n):
        node = {"type": "object", "properties": {"x": node}}
    return node


def req(**fields):
    return {"model": "gpt-4o", "messages": [U], **fields}


HOSTILE = [
    # (name, body, status, param)
    ("model missing", {"messages": [U]}, 400, "model"),
    ("model wrong type", {"model": 42, "messages": [U]}, 400, "model"),
    ("model unknown", req(model="gpt-9000"), 404, "model"),
    ("messages missing", {"model": "gpt-4o"}, 400, "messages"),
    ("messages not a list", req(messages={"role": "user"}), 400, "messages"),
    ("messages empty", req(messages=[]), 400, "messages"),
    ("message not an object", req(messages=["hi"]), 400, "messages[0]"),
    ("role unknown", req(messages=[{"role": "root", "content": "x"}]), 400, "messages[0].role"),
    ("role missing", req(messages=[{"content": "x"}]), 400, "messages[0].role"),
    ("role a list", req(messages=[{"role": ["user"], "content": "x"}]), 400, "messages[0].role"),
    ("role an object", req(messages=[{"role": {"user": 1}, "content": "x"}]), 400, "messages[0].role"),
    ("content number", req(messages=[{"role": "user", "content": 5}]), 400, "messages[0].content"),
    ("content object", req(messages=[{"role": "user", "content": {"text": "x"}}]), 400, "messages[0].content"),
    ("content null for user", req(messages=[{"role": "user", "content": None}]), 400, "messages[0].content"),
    ("part without type", req(messages=[{"role": "user", "content": [{"text": "x"}]}]), 400, "messages[0].content[0]"),
    ("text part not string", req(messages=[{"role": "user", "content": [{"type": "text", "text": 1}]}]), 400, "messages[0].content[0].text"),
    ("image url not a url", req(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "cat.png"}}]}]), 400, "messages[0].content[0].image_url.url"),
    ("image url javascript", req(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "javascript:alert(1)"}}]}]), 400, "messages[0].content[0].image_url.url"),
    ("image bad base64", req(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@@"}}]}]), 400, "messages[0].content"),
    ("image base64 wrong length", req(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,abcde"}}]}]), 400, "messages[0].content"),
    ("image empty data", req(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"}}]}]), 400, "messages[0].content[0].image_url.url"),
    ("too many images", req(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}] * 101}]), 400, "messages"),
    ("NUL byte in text", req(messages=[{"role": "user", "content": "a\u0000b"}]), 400, "messages[0].content"),
    ("escape char in part", req(messages=[{"role": "user", "content": [{"type": "text", "text": "a\u001bb"}]}]), 400, "messages[0].content[0].text"),
    ("huge string", req(messages=[{"role": "user", "content": "x" * (MAX_BODY_BYTES + 1)}]), 413, None),
    ("tool result without id", req(messages=[U, CALL, {"role": "tool", "content": "r"}]), 400, "messages[2].tool_call_id"),
    ("tool result for no call", req(messages=[U, {"role": "tool", "tool_call_id": "zz", "content": "r"}]), 400, "messages[1].tool_call_id"),
    ("tool call bad json", req(messages=[U, {**CALL, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{x"}}]}]), 400, "messages[1].tool_calls[0].function.arguments"),
    ("tool call args array", req(messages=[U, {**CALL, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]), 400, "messages[1].tool_calls[0].function.arguments"),
    ("tool call without name", req(messages=[U, {**CALL, "tool_calls": [{"id": "c1", "type": "function", "function": {"arguments": "{}"}}]}]), 400, "messages[1].tool_calls[0].function.name"),
    ("tool calls not a list", req(messages=[U, {**CALL, "tool_calls": {"id": "c1"}}]), 400, "messages[1].tool_calls"),
    ("tools not a list", req(tools={"type": "function"}), 400, "tools"),
    ("tool without function", req(tools=[{"type": "function"}]), 400, "tools[0].function"),
    ("tool bad name", req(tools=[{"type": "function", "function": {"name": "rm -rf /"}}]), 400, "tools[0].function.name"),
    ("tool duplicate name", req(tools=[TOOL, TOOL]), 400, "tools[1].function.name"),
    ("tool schema invalid", req(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": 12}}}]), 400, "tools[0].function.parameters"),
    ("tool schema not object", req(tools=[{"type": "function", "function": {"name": "f", "parameters": "object"}}]), 400, "tools[0].function.parameters"),
    ("tool schema nested too deep", req(tools=[{"type": "function", "function": {"name": "f", "parameters": deep(80)}}]), 400, "tools[0].function.parameters"),
    ("tool_choice unknown function", req(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "g"}}), 400, "tool_choice"),
    ("tool_choice bad string", req(tool_choice="always"), 400, "tool_choice"),
    ("temperature too high", req(temperature=3), 400, "temperature"),
    ("temperature string", req(temperature="hot"), 400, "temperature"),
    ("top_p negative", req(top_p=-0.1), 400, "top_p"),
    ("max_tokens zero", req(max_tokens=0), 400, "max_tokens"),
    ("max_tokens float", req(max_tokens=1.5), 400, "max_tokens"),
    ("max_tokens over model limit", req(max_tokens=10**7), 400, "max_tokens"),
    ("n too large", req(n=1000), 400, "n"),
    ("stream not bool", req(stream="yes"), 400, "stream"),
    ("stop too many", req(stop=["a"] * 17), 400, "stop"),
    ("stop wrong type", req(stop=5), 400, "stop"),
    ("reasoning effort unknown", req(reasoning_effort="extreme"), 400, "reasoning_effort"),
    ("response_format unknown", req(response_format={"type": "yaml"}), 400, "response_format.type"),
    ("json_schema without name", req(response_format={"type": "json_schema", "json_schema": {"schema": {}}}), 400, "response_format.json_schema.name"),
    ("context window exceeded", {"model": "gpt-4-turbo", "messages": [{"role": "user", "content": "word " * 140_000}]}, 400, "messages"),
]


@pytest.mark.parametrize(("name", "body", "status", "param"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_request(gateway, upstream, name, body, status, param):
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    assert upstream.requests == [], "a refused request must not reach the upstream"


def test_at_least_forty_cases():
    assert len(HOSTILE) >= 40


def test_deep_nesting_is_refused_not_crashing(gateway, upstream):
    body = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = httpx.post(f"{gateway.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert upstream.requests == []


def test_invalid_utf8_is_refused(gateway, upstream):
    body = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "\xff\xfe"}]}'
    response = httpx.post(f"{gateway.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_control_characters_are_stripped_by_default():
    body = {"model": "m", "messages": [{"role": "user", "content": "a\u0000b\u001bc\td\ne"},
                                       {"role": "user", "content": [{"type": "text", "text": "x\u0007y"}]}]}
    cleaned = validate_request(body)
    assert cleaned["messages"][0]["content"] == "abc\td\ne"
    assert cleaned["messages"][1]["content"][0]["text"] == "xy"
    assert body["messages"][0]["content"] == "a\u0000b\u001bc\td\ne"  # the caller's body is untouched
    with pytest.raises(InvalidRequest):
        validate_request(body, Limits(control_chars="refuse"))


def test_size_limits_are_configurable():
    with pytest.raises(InvalidRequest) as info:
        validate_request({"model": "m", "messages": [U] * 3}, Limits(max_messages=2))
    assert info.value.param == "messages"
    with pytest.raises(InvalidRequest) as info:
        validate_request({"model": "m", "messages": [{"role": "user", "content": "x" * 11}]}, Limits(max_message_chars=10))
    assert info.value.param == "messages[0].content"
