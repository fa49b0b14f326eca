"""Providers added as spec files only (issue 11, item 6), checked in process.

For each new spec: one OpenAI request -> the upstream body it must become, and one upstream reply
-> an OpenAI chat.completion the OpenAI schema accepts. The two wire formats with their own stream
framing (Ollama's NDJSON, Cohere's SSE keyed by `type`) are also driven frame by frame through the
compiled StreamSpec, bytes split at awkward places, as the gateway reads them. The recordings in
tests/providers/<name>/recordings/ cover more exchanges per spec.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine import (
    build_request,
    completion_from_reply,
    error_from_reply,
    load_catalog,
    resolve_model,
)
from engine.cli.commands import main
from engine.errors import InvalidRequest
from engine.pipeline.pricing import price_for
from engine.spec.loader import Catalog
from engine.streaming import StreamFailure, StreamState

from .conftest import checked_catalog, one_target
from .oracles import oracle_check

ROOT = Path(__file__).resolve().parent.parent
NEW = ("deepseek", "groq", "mistral", "openrouter", "ollama-openai", "ollama", "cohere")
ENVIRON = {
    "DEEPSEEK_API_KEY": "sk-deepseek-test",
    "GROQ_API_KEY": "gsk-test",
    "MISTRAL_API_KEY": "mistral-test",
    "OPENROUTER_API_KEY": "sk-or-test",
    "COHERE_API_KEY": "cohere-test",
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Oslo?"},
    {
        "role": "assistant",
        "content": None,
        "reasoning_content": "I need the weather tool.",
        "tool_calls": [{"id": "call_oslo1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}],
    },
    {"role": "tool", "tool_call_id": "call_oslo1", "content": "-3°C, snow"},
]


@pytest.fixture(scope="module")
def cat() -> Catalog:
    return checked_catalog(ENVIRON)


target = one_target


def upstream_body(cat: Catalog, model: str, request: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    sent = build_request(target(cat, model), {"model": model, **request}, stream=stream)
    json.dumps(sent.body)
    return sent.body


def counter() -> Callable[[str], str]:
    numbers = itertools.count(1)
    return lambda prefix: f"{prefix}{next(numbers)}"


def openai_reply(cat: Catalog, model: str, raw: dict[str, Any]) -> dict[str, Any]:
    out = completion_from_reply(target(cat, model), raw, requested_model=model, new_call_id=counter())
    oracle_check.assert_openai(out, "CreateChatCompletionResponse")
    oracle_check.assert_openai_sdk(out)
    return out


def stream_deltas(cat: Catalog, model: str, raw: bytes, cut: int) -> tuple[list[Any], StreamState]:
    """Feed the upstream bytes in pieces of `cut` bytes through the spec's framer and event table."""
    spec = target(cat, model).provider.stream
    framer = spec.new_framer()
    state = StreamState(new_call_id=counter())
    deltas: list[Any] = []
    for start in range(0, len(raw), cut):
        for event, data in framer.feed(raw[start:start + cut]):
            deltas.extend(spec.handle(event, data, state))
    for event, data in framer.close():
        deltas.extend(spec.handle(event, data, state))
    return deltas, state


def text_of(deltas: list[Any], kind: str = "text") -> str:
    return "".join(d[1] for d in deltas if d[0] == kind)


# ------------------------------------------------------------------------------------------ the catalog
def test_every_new_spec_loads_with_prices_or_free_models(cat: Catalog) -> None:
    for name in NEW:
        spec = cat.providers[name]
        assert spec.models, name
        for model in spec.models.values():
            assert model.free or price_for(cat, name, model.id) is not None, f"{name}/{model.id}"
    assert all(m.free for m in cat.providers["ollama"].models.values())
    assert all(m.free for m in cat.providers["ollama-openai"].models.values())


def test_ollama_needs_no_key_and_others_do() -> None:
    bare = load_catalog(ROOT, environ={})
    assert bare.providers["ollama"].headers_for("llama3.2", None) == {}
    assert bare.providers["ollama-openai"].headers_for("llama3.2", None) == {}
    assert "Authorization" not in bare.providers["deepseek"].headers_for("deepseek-chat", None)


def test_bare_ids_served_by_both_ollama_specs_resolve_through_an_alias(cat: Catalog) -> None:
    targets = resolve_model(cat, "llama3.2")
    assert [t.name for t in targets] == ["ollama/llama3.2", "ollama-openai/llama3.2"]
    assert resolve_model(cat, "deepseek-chat")[0].name == "deepseek/deepseek-chat"
    assert resolve_model(cat, "mistral-large-latest")[0].name == "mistral/mistral-large-latest"  # a model of its own, sent as asked
    assert resolve_model(cat, "groq/openai/gpt-oss-120b")[0].model == "openai/gpt-oss-120b"


def test_validate_command_is_clean() -> None:
    result = CliRunner().invoke(main, ["validate", str(ROOT)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: ")


# ------------------------------------------------------------------------------------------ DeepSeek
def test_deepseek_request_and_reasoner_reply(cat: Catalog) -> None:
    body = upstream_body(cat, "deepseek/deepseek-reasoner", {"messages": HISTORY, "tools": [WEATHER], "max_completion_tokens": 2048})
    assert body["model"] == "deepseek-reasoner"
    assert body["max_tokens"] == 2048 and "max_completion_tokens" not in body
    # Thinking mode with tool calls wants the earlier reasoning back: passed through unchanged.
    assert body["messages"][2]["reasoning_content"] == "I need the weather tool."
    assert build_request(target(cat, "deepseek/deepseek-chat"), {"model": "x", "messages": HISTORY}, stream=False).url == (
        "https://api.deepseek.com/chat/completions"
    )
    out = openai_reply(cat, "deepseek/deepseek-reasoner", {
        "id": "d1", "object": "chat.completion", "created": 1761998400, "model": "deepseek-reasoner",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": "It is -3°C.", "reasoning_content": "Read the tool result."}}],
        "usage": {"prompt_tokens": 90, "completion_tokens": 20, "total_tokens": 110,
                  "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 26},
    })
    assert out["choices"][0]["message"]["reasoning_content"] == "Read the tool result."
    assert out["usage"] == {"prompt_tokens": 90, "completion_tokens": 20, "total_tokens": 110,
                            "prompt_tokens_details": {"cached_tokens": 64}}


# ------------------------------------------------------------------------------------------ Groq
def test_groq_request_drops_echoed_reasoning_and_reply_maps_reasoning(cat: Catalog) -> None:
    body = upstream_body(cat, "groq/openai/gpt-oss-120b", {"messages": HISTORY, "tools": [WEATHER]}, stream=True)
    assert body["model"] == "openai/gpt-oss-120b"
    assert all("reasoning_content" not in m for m in body["messages"])
    assert body["messages"][2]["tool_calls"][0]["id"] == "call_oslo1"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    with pytest.raises(InvalidRequest):
        upstream_body(cat, "groq/llama-3.1-8b-instant", {"messages": HISTORY, "n": 2})
    out = openai_reply(cat, "groq/openai/gpt-oss-120b", {
        "id": "chatcmpl-g1", "object": "chat.completion", "created": 1761998400, "model": "openai/gpt-oss-120b",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": "Cold.", "reasoning": "The tool said -3°C."}}],
        "usage": {"queue_time": 0.02, "prompt_tokens": 80, "prompt_time": 0.01, "completion_tokens": 9,
                  "completion_time": 0.02, "total_tokens": 89, "total_time": 0.03},
        "x_groq": {"id": "req_01abc"},
    })
    assert out["choices"][0]["message"]["reasoning_content"] == "The tool said -3°C."
    assert out["usage"] == {"prompt_tokens": 80, "completion_tokens": 9, "total_tokens": 89}
    assert "x_groq" not in out
    err = error_from_reply(target(cat, "groq/llama-3.1-8b-instant"), 429,
                           b'{"error":{"message":"Rate limit reached","type":"tokens","code":"rate_limit_exceeded"}}',
                           {"retry-after": "7"})
    assert err.kind == "rate_limit" and err.retry_after == 7.0


# ------------------------------------------------------------------------------------------ Mistral
def test_mistral_request_is_built_field_by_field(cat: Catalog) -> None:
    body = upstream_body(cat, "mistral/mistral-small-latest", {
        "messages": HISTORY, "tools": [WEATHER], "tool_choice": "auto", "max_completion_tokens": 100, "seed": 9,
        "user": "u-1", "metadata": {"a": "b"}, "logprobs": True, "stream_options": {"include_usage": True},
    }, stream=True)
    assert set(body) == {"model", "messages", "max_tokens", "random_seed", "tools", "tool_choice", "stream"}
    assert body["model"] == "mistral-small-latest"
    assistant = body["messages"][2]
    assert "reasoning_content" not in assistant and "content" not in assistant
    assert body["messages"][3] == {"role": "tool", "content": "-3°C, snow", "tool_call_id": "call_oslo1"}


def test_mistral_replies_plain_and_magistral_chunks(cat: Catalog) -> None:
    plain = openai_reply(cat, "mistral/mistral-large-latest", {
        "id": "m1", "object": "chat.completion", "created": 1761998400, "model": "mistral-large-2411",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "", "prefix": False,
            "tool_calls": [{"id": "Ab3dE6gH9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62},
    })
    assert plain["choices"][0]["message"]["tool_calls"][0]["id"] == "Ab3dE6gH9"
    assert plain["choices"][0]["finish_reason"] == "tool_calls"
    magistral = openai_reply(cat, "mistral/magistral-medium-latest", {
        "id": "m2", "object": "chat.completion", "created": 1761998400, "model": "magistral-medium-2509",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "tool_calls": None, "content": [
            {"type": "thinking", "thinking": [{"type": "text", "text": "2 + 2 = 4."}]},
            {"type": "text", "text": "4"}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18},
    })
    message = magistral["choices"][0]["message"]
    assert (message["content"], message["reasoning_content"]) == ("4", "2 + 2 = 4.")
    assert "tool_calls" not in message


# ------------------------------------------------------------------------------------------ OpenRouter
def test_openrouter_headers_request_and_reply(cat: Catalog) -> None:
    signed = load_catalog(ROOT, environ={**ENVIRON, "OPENROUTER_SITE_URL": "https://gaud.example", "OPENROUTER_APP_NAME": "Gaud"})
    sent = build_request(target(signed, "openrouter/anthropic/claude-sonnet-4"),
                         {"model": "x", "messages": HISTORY, "max_tokens": 300}, stream=False)
    assert sent.url == "https://openrouter.ai/api/v1/chat/completions"
    assert sent.headers["HTTP-Referer"] == "https://gaud.example" and sent.headers["X-Title"] == "Gaud"
    assert "HTTP-Referer" not in build_request(target(cat, "openrouter/openai/gpt-4o"), {"model": "x", "messages": HISTORY}, stream=False).headers
    assert sent.body["model"] == "anthropic/claude-sonnet-4" and sent.body["max_tokens"] == 300
    out = openai_reply(cat, "openrouter/anthropic/claude-sonnet-4", {
        "id": "gen-1", "provider": "Anthropic", "model": "anthropic/claude-sonnet-4", "object": "chat.completion",
        "created": 1761998400,
        "choices": [{"index": 0, "finish_reason": "stop", "native_finish_reason": "end_turn", "logprobs": None,
                     "message": {"role": "assistant", "content": "Cold.", "refusal": None, "reasoning": "Tool: -3°C."}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105, "cost": 0.0004,
                  "prompt_tokens_details": {"cached_tokens": 80}},
    })
    assert out["choices"][0]["message"]["reasoning_content"] == "Tool: -3°C."
    assert "cost" not in out["usage"] and out["usage"]["prompt_tokens_details"] == {"cached_tokens": 80}


# ------------------------------------------------------------------------------------------ Ollama, OpenAI-compatible
def test_ollama_openai_request_and_reply(cat: Catalog) -> None:
    body = upstream_body(cat, "ollama-openai/qwen3", {"messages": HISTORY, "max_completion_tokens": 64})
    assert body["max_tokens"] == 64 and "max_completion_tokens" not in body
    assert body["messages"][2]["reasoning"] == "I need the weather tool." and "reasoning_content" not in body["messages"][2]
    out = openai_reply(cat, "ollama-openai/qwen3", {
        "id": "chatcmpl-9", "object": "chat.completion", "created": 1761998400, "model": "qwen3", "system_fingerprint": "fp_ollama",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Cold.", "reasoning": "-3°C is cold."}}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49},
    })
    assert out["choices"][0]["message"]["reasoning_content"] == "-3°C is cold."


# ------------------------------------------------------------------------------------------ Ollama, native
def test_ollama_native_request_tools_both_ways(cat: Catalog) -> None:
    body = upstream_body(cat, "ollama/llama3.2", {
        "messages": [*HISTORY, {"role": "user", "content": [
            {"type": "text", "text": "And this picture?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}],
        "tools": [WEATHER], "response_format": {"type": "json_object"}, "reasoning_effort": "none", "max_tokens": 50,
    })
    assert body["stream"] is False and body["think"] is False and body["format"] == "json"
    assert body["options"] == {"num_predict": 50}
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "thinking": "I need the weather tool.",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "-3°C, snow", "tool_name": "get_weather"},
        {"role": "user", "content": "And this picture?", "images": ["iVBORw0KGgo="]},
    ]
    assert body["tools"] == [WEATHER]
    assert "tools" not in upstream_body(cat, "ollama/llama3.2", {"messages": HISTORY, "tools": [WEATHER], "tool_choice": "none"})


def test_ollama_native_reply_with_tool_calls_gets_ids(cat: Catalog) -> None:
    out = openai_reply(cat, "ollama/llama3.2", {
        "model": "llama3.2", "created_at": "2025-11-01T12:00:00Z",
        "message": {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Bergen"}}}]},
        "done": True, "done_reason": "stop", "prompt_eval_count": 120, "eval_count": 15,
    })
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Bergen"}'}}]
    assert out["usage"] == {"prompt_tokens": 120, "completion_tokens": 15, "total_tokens": 135}


NDJSON = b"".join(json.dumps(line, ensure_ascii=False).encode() + b"\n" for line in [
    {"model": "qwen3", "created_at": "t", "message": {"role": "assistant", "content": "", "thinking": "Look it up."}, "done": False},
    {"model": "qwen3", "created_at": "t", "message": {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Oslo"}}},
        {"function": {"index": 1, "name": "get_weather", "arguments": {"city": "Tromsø"}}}]}, "done": False},
    {"model": "qwen3", "created_at": "t", "message": {"role": "assistant", "content": "Asked."}, "done": False},
    {"model": "qwen3", "created_at": "t", "message": {"role": "assistant", "content": ""}, "done": True,
     "done_reason": "stop", "prompt_eval_count": 31, "eval_count": 22},
])


@pytest.mark.parametrize("cut", [1, 7, 64, len(NDJSON)])
def test_ollama_ndjson_stream(cat: Catalog, cut: int) -> None:
    spec = target(cat, "ollama/qwen3").provider
    deltas, state = stream_deltas(cat, "ollama/qwen3", NDJSON, cut)
    assert text_of(deltas, "reasoning") == "Look it up." and text_of(deltas) == "Asked."
    starts = [d for d in deltas if d[0] == "tool_start"]
    assert [(d[1], d[2], d[3]) for d in starts] == [(0, "call_1", "get_weather"), (1, "call_2", "get_weather")]
    assert [d[2] for d in deltas if d[0] == "tool_args"] == ['{"city":"Oslo"}', '{"city":"Tromsø"}']
    assert spec.finish_reason(state.raw_finish, state.has_tool_calls) == "tool_calls"
    assert spec.usage_of(state.raw_usage) == {"prompt_tokens": 31, "completion_tokens": 22, "total_tokens": 53}


def test_ollama_ndjson_error_line_fails_the_stream(cat: Catalog) -> None:
    raw = b'{"model":"qwen3","message":{"role":"assistant","content":"Once"},"done":false}\n{"error":"model runner crashed"}\n'
    with pytest.raises(StreamFailure) as failure:
        stream_deltas(cat, "ollama/qwen3", raw, 5)
    assert failure.value.message == "model runner crashed"


# ------------------------------------------------------------------------------------------ Cohere v2
def test_cohere_request(cat: Catalog) -> None:
    body = upstream_body(cat, "cohere/command-a-03-2025", {
        "messages": HISTORY, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "top_p": 0.8, "stop": ["END", " "], "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}},
    })
    assert body["messages"] == [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
        {"role": "assistant", "tool_plan": "I need the weather tool.", "tool_calls": [
            {"id": "call_oslo1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_oslo1", "content": "-3°C, snow"},
    ]
    assert body["tool_choice"] == "REQUIRED"
    assert body["p"] == 0.8 and body["stop_sequences"] == ["END"]
    assert body["response_format"] == {"type": "json_object", "json_schema": {"type": "object"}}
    assert body["tools"][0] == {"type": "function", "function": WEATHER["function"]}
    for choice, expected in (("auto", None), ("none", "NONE"), ("required", "REQUIRED")):
        sent = upstream_body(cat, "cohere/command-a-03-2025", {"messages": HISTORY, "tools": [WEATHER], "tool_choice": choice})
        assert sent.get("tool_choice") == expected


def test_cohere_reply(cat: Catalog) -> None:
    out = openai_reply(cat, "cohere/command-r-08-2024", {
        "id": "c1", "finish_reason": "TOOL_CALL",
        "message": {"role": "assistant", "tool_plan": "Check the weather first.", "tool_calls": [
            {"id": "get_weather_9x8y7z", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        "usage": {"billed_units": {"input_tokens": 30, "output_tokens": 12}, "tokens": {"input_tokens": 900, "output_tokens": 40}},
    })
    message = out["choices"][0]["message"]
    assert message["content"] is None and message["reasoning_content"] == "Check the weather first."
    assert message["tool_calls"][0]["id"] == "get_weather_9x8y7z"
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert out["usage"] == {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}


COHERE_SSE = "".join(f"event: {event}\ndata: {json.dumps(data)}\n\n" for event, data in [
    ("message-start", {"id": "c2", "type": "message-start", "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": []}}}),
    ("tool-plan-delta", {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "Two lookups."}}}),
    ("tool-call-start", {"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {
        "id": "get_weather_a1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}}}}),
    ("tool-call-delta", {"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {"function": {"arguments": '{"city":'}}}}}),
    ("tool-call-delta", {"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {"function": {"arguments": '"Oslo"}'}}}}}),
    ("tool-call-end", {"type": "tool-call-end", "index": 0}),
    ("tool-call-start", {"type": "tool-call-start", "index": 1, "delta": {"message": {"tool_calls": {
        "id": "get_weather_b2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Bergen"}'}}}}}),
    ("tool-call-end", {"type": "tool-call-end", "index": 1}),
    ("message-end", {"type": "message-end", "delta": {"finish_reason": "TOOL_CALL", "usage": {
        "billed_units": {"input_tokens": 21, "output_tokens": 19}, "tokens": {"input_tokens": 700, "output_tokens": 50}}}}),
]) + "data: [DONE]\n\n"


@pytest.mark.parametrize("cut", [1, 13, 200, len(COHERE_SSE)])
def test_cohere_sse_stream(cat: Catalog, cut: int) -> None:
    spec = target(cat, "cohere/command-a-03-2025").provider
    deltas, state = stream_deltas(cat, "cohere/command-a-03-2025", COHERE_SSE.encode(), cut)
    assert state.id == "c2" and state.done
    assert text_of(deltas, "reasoning") == "Two lookups." and text_of(deltas) == ""
    assert [(d[1], d[2], d[3]) for d in deltas if d[0] == "tool_start"] == [(0, "get_weather_a1", "get_weather"), (1, "get_weather_b2", "get_weather")]
    arguments: dict[int, str] = {}
    for d in deltas:
        if d[0] == "tool_args":
            arguments[d[1]] = arguments.get(d[1], "") + d[2]
    assert arguments == {0: '{"city":"Oslo"}', 1: '{"city":"Bergen"}'}
    assert spec.finish_reason(state.raw_finish, state.has_tool_calls) == "tool_calls"
    assert spec.usage_of(state.raw_usage) == {"prompt_tokens": 21, "completion_tokens": 19, "total_tokens": 40}


def test_cohere_text_stream(cat: Catalog) -> None:
    raw = (
        b'event: message-start\ndata: {"id":"c3","type":"message-start","delta":{"message":{"role":"assistant"}}}\n\n'
        b'event: content-start\ndata: {"type":"content-start","index":0,"delta":{"message":{"content":{"type":"text","text":""}}}}\n\n'
        b'event: content-delta\ndata: {"type":"content-delta","index":0,"delta":{"message":{"content":{"text":"Hei"}}}}\n\n'
        b'event: content-delta\ndata: {"type":"content-delta","index":0,"delta":{"message":{"content":{"text":" Oslo"}}}}\n\n'
        b'event: content-end\ndata: {"type":"content-end","index":0}\n\n'
        b'event: message-end\ndata: {"type":"message-end","delta":{"finish_reason":"MAX_TOKENS","usage":{"billed_units":{"input_tokens":3,"output_tokens":2}}}}\n\n'
    )
    spec = target(cat, "cohere/command-r7b-12-2024").provider
    deltas, state = stream_deltas(cat, "cohere/command-r7b-12-2024", raw, 9)
    assert text_of(deltas) == "Hei Oslo"
    assert spec.finish_reason(state.raw_finish, state.has_tool_calls) == "length"
