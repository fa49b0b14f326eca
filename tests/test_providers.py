"""Per-provider, fixture-driven, non-streaming translation tests.

Data-driven part: tests/providers/<name>/cases.yaml lists cases. For each case:
  OpenAI request  -> upstream body: snapshot, the provider's request oracle, `expect_upstream`;
  recorded reply  -> OpenAI response: snapshot, OpenAI JSON Schema + SDK oracles, `expect_response`;
  error fixtures  -> error kind and OpenAI-style error (status/headers from tests/oracles/manifest.json).
Targeted tests below cover what a case list cannot: the thinking-signature round trips, finish-reason
tables, bad input to the translator and unknown models. `test_every_bullet_is_covered` checks that each
bullet of the issue has at least one test per provider.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine import (
    build_request,
    completion_from_reply,
    error_from_reply,
    resolve_model,
)
from engine.errors import GatewayError, InvalidRequest, NotFound
from engine.pipeline.validation import validate_request
from engine.spec.loader import Catalog
from engine.spec.models import Target

from .conftest import checked_catalog, one_target
from .oracles import oracle_check

ROOT = Path(__file__).resolve().parent.parent
PROVIDERS_DIR = Path(__file__).resolve().parent / "providers"
MANIFEST = {f["file"]: f for f in json.loads((PROVIDERS_DIR.parent / "oracles" / "manifest.json").read_text())["fixtures"]}
PROVIDERS = ("anthropic", "gemini", "openai", "copilot")
ENVIRON = {
    "ANTHROPIC_API_KEY": "sk-ant-test",
    "GEMINI_API_KEY": "gemini-test",
    "OPENAI_API_KEY": "sk-openai-test",
    "COPILOT_API_TOKEN": "copilot-test",
}
ABSENT = "~absent"

# The bullets, as tags used by `covers:` in cases.yaml and by the targeted tests here.
BULLETS = {
    "system", "alternation",                                          # system extraction, same-role merge
    "images_data", "images_url",                                      # multi-part content
    "tools", "tool_choice", "parallel_tool_calls", "tool_history", "tool_call_reply",
    "stop", "max_tokens", "sampling",
    "finish_reason", "usage_cached",
    "reasoning_reply", "reasoning_effort", "thinking_roundtrip",
    "errors", "invalid_input", "unknown_model",
}
NOT_APPLICABLE = {
    # Gemini reads only inline bytes: http(s) image URLs are fetched and inlined by the gateway
    # (spec `inline_image_urls: true`), a step built separately; test it there.
    "gemini": {"images_url"},
    # OpenAI-shaped upstreams carry no thinking signatures: nothing to round-trip.
    "openai": {"thinking_roundtrip"},
    "copilot": {"thinking_roundtrip"},
}
# Tags covered by the targeted tests of this module (all providers unless noted).
TARGETED = {
    "anthropic": {"errors", "invalid_input", "unknown_model", "finish_reason", "thinking_roundtrip", "tool_history"},
    "gemini": {"errors", "invalid_input", "unknown_model", "finish_reason", "thinking_roundtrip", "tool_history"},
    "openai": {"errors", "invalid_input", "unknown_model", "finish_reason"},
    "copilot": {"errors", "invalid_input", "unknown_model", "finish_reason"},
}


def load_cases(provider: str) -> dict[str, Any]:
    return yaml.safe_load((PROVIDERS_DIR / provider / "cases.yaml").read_text())


CASES = {p: load_cases(p) for p in PROVIDERS}


def case_params() -> list[Any]:
    return [pytest.param(p, c, id=f"{p}-{c['name']}") for p in PROVIDERS for c in CASES[p]["cases"]]


def error_params() -> list[Any]:
    return [pytest.param(p, e, id=f"{p}-{e['file']}") for p in PROVIDERS for e in CASES[p].get("errors", [])]


# ------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def cat() -> Catalog:
    return checked_catalog(ENVIRON)


target_for = one_target


def counter_ids() -> Callable[[str], str]:
    counter = itertools.count(1)
    return lambda prefix: f"{prefix}{next(counter):04d}"


def reply_json(provider: str, name: str) -> Any:
    return json.loads((PROVIDERS_DIR / provider / "replies" / name).read_text())


_MISSING = object()


def at(doc: Any, pointer: str) -> Any:
    """RFC 6901 lookup (independent of engine.pointer); _MISSING when absent."""
    if pointer == "":
        return doc
    for escaped in pointer[1:].split("/"):
        token = escaped.replace("~1", "/").replace("~0", "~")
        if isinstance(doc, list):
            if not token.isdigit() or int(token) >= len(doc):
                return _MISSING
            doc = doc[int(token)]
        elif isinstance(doc, dict):
            if token not in doc:
                return _MISSING
            doc = doc[token]
        else:
            return _MISSING
    return doc


def check_expectations(doc: Any, expected: dict[str, Any] | None, what: str) -> None:
    for pointer, value in (expected or {}).items():
        got = at(doc, pointer)
        if value == ABSENT:
            assert got is _MISSING, f"{what}{pointer} should be absent, got {got!r}"
        else:
            assert got is not _MISSING, f"{what}{pointer} is missing in {json.dumps(doc)[:2000]}"
            assert got == value, f"{what}{pointer}: expected {value!r}, got {got!r}"
            assert type(got) is type(value), f"{what}{pointer}: expected type {type(value).__name__}, got {type(got).__name__}"


def assert_upstream_valid(provider: str, body: dict[str, Any]) -> None:
    json.dumps(body)  # must be plain JSON
    if provider == "anthropic":
        # The installed anthropic SDK's MessageCreateParams no longer lists temperature/top_p (newer
        # Claude models reject them), while the spec's Claude 4 models accept them (0..1 each). Check
        # them here and hand the rest to the oracle.
        sampling = {k: body[k] for k in ("temperature", "top_p") if k in body}
        for value in sampling.values():
            assert isinstance(value, (int, float)) and 0 <= value <= 1
        oracle_check.assert_anthropic_request({k: v for k, v in body.items() if k not in sampling})
    elif provider == "gemini":
        oracle_check.assert_gemini_request(body)
    else:
        oracle_check.assert_openai(body, "CreateChatCompletionRequest")


def assert_response_valid(out: dict[str, Any]) -> None:
    json.dumps(out)
    oracle_check.assert_openai(out, "CreateChatCompletionResponse")
    oracle_check.assert_openai_sdk(out)
    assert out["object"] == "chat.completion"
    assert isinstance(out["created"], int) and out["created"] > 0
    for choice in out["choices"]:
        assert set(choice) >= {"index", "message", "finish_reason", "logprobs"}
        assert choice["message"]["role"] == "assistant"
        assert "refusal" in choice["message"] and "content" in choice["message"]
        for call in choice["message"].get("tool_calls", []):
            assert isinstance(json.loads(call["function"]["arguments"]), dict)
    usage = out.get("usage")
    if usage is not None:
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def stable(out: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """The response with the clock-dependent `created` pinned (when the reply had none)."""
    out = copy.deepcopy(out)
    if "created" not in raw:
        out["created"] = "<now>"
    return out


def translate(cat: Catalog, provider: str, request: dict[str, Any]) -> tuple[Target, Any]:
    model = request.get("model") or CASES[provider]["model"]
    target = target_for(cat, model)
    assert target.provider.name == provider
    upstream = build_request(target, {**request, "model": model}, stream=False)
    assert upstream.method == "POST" and upstream.stream is False
    assert_upstream_valid(provider, upstream.body)
    return target, upstream


def reply_to_openai(cat: Catalog, provider: str, raw: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    model = model or CASES[provider]["model"]
    out = completion_from_reply(target_for(cat, model), copy.deepcopy(raw), requested_model=model, new_call_id=counter_ids())
    assert_response_valid(out)
    return out


# ------------------------------------------------------------------------------------------ cases
@pytest.mark.parametrize(("provider", "case"), case_params())
def test_case(cat: Catalog, snapshot: Any, provider: str, case: dict[str, Any]) -> None:
    assert set(case["covers"]) <= BULLETS, f"unknown bullet tags {set(case['covers']) - BULLETS}"
    assert "request" in case or "reply" in case or "reply_inline" in case
    recorded: dict[str, Any] = {}
    if "request" in case:
        _, upstream = translate(cat, provider, case["request"])
        check_expectations(upstream.body, case.get("expect_upstream"), "upstream")
        recorded["upstream"] = {"url": upstream.url, "body": upstream.body}
    else:
        assert "expect_upstream" not in case
    if "reply" in case or "reply_inline" in case:
        raw = reply_json(provider, case["reply"]) if "reply" in case else case["reply_inline"]
        out = reply_to_openai(cat, provider, raw, case.get("request", {}).get("model"))
        check_expectations(out, case.get("expect_response"), "response")
        recorded["response"] = stable(out, raw)
    else:
        assert "expect_response" not in case
    assert recorded == snapshot


@pytest.mark.parametrize(("provider", "entry"), error_params())
def test_error_fixture(cat: Catalog, snapshot: Any, provider: str, entry: dict[str, Any]) -> None:
    manifest = MANIFEST[f"{provider}/{entry['file']}"]
    payload = (PROVIDERS_DIR / provider / "replies" / entry["file"]).read_bytes()
    target = target_for(cat, CASES[provider]["model"])
    err = error_from_reply(target, manifest["status"], payload, manifest["headers"])
    assert isinstance(err, GatewayError)
    assert err.kind == entry["kind"]
    assert err.status == entry["status"]
    assert err.upstream_status == manifest["status"]
    assert err.retry_after == entry.get("retry_after")
    body = err.to_openai()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == entry["type"]
    assert body["error"]["code"] == entry["code"]
    upstream_message = json.loads(payload)["error"]["message"]
    assert upstream_message in body["error"]["message"]
    assert {"kind": err.kind, "status": err.status, "retry_after": err.retry_after, **body} == snapshot


def test_every_bullet_is_covered() -> None:
    for provider in PROVIDERS:
        covered = set(TARGETED[provider])
        for case in CASES[provider]["cases"]:
            covered |= set(case["covers"])
        if CASES[provider].get("errors"):
            covered.add("errors")
        missing = BULLETS - NOT_APPLICABLE.get(provider, set()) - covered
        assert not missing, f"{provider}: no test for {sorted(missing)}"


def test_every_error_fixture_is_used() -> None:
    for provider in PROVIDERS:
        files = {p.name for p in (PROVIDERS_DIR / provider / "replies").glob("error_*.json")}
        used = {e["file"] for e in CASES[provider].get("errors", [])}
        assert files == used, provider


# ------------------------------------------------------------------------------------------ finish-reason tables
FINISH_TABLES = {
    # provider: (reply file, pointer of the raw finish reason, {raw: OpenAI})
    "anthropic": ("messages_text.json", ("stop_reason",), {
        "end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
        "refusal": "content_filter", "pause_turn": "stop", "model_context_window_exceeded": "length",
        "something_new": "stop", None: "stop",
    }),
    "gemini": ("generate_text.json", ("candidates", 0, "finishReason"), {
        "STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
        "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
        "IMAGE_SAFETY": "content_filter", "FINISH_REASON_SOMETHING_NEW": "stop",
    }),
    "openai": ("chat_completion_text.json", ("choices", 0, "finish_reason"), {
        "stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter",
        "function_call": "tool_calls",
    }),
    "copilot": ("chat_completion_text.json", ("choices", 0, "finish_reason"), {
        "stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter",
    }),
}


@pytest.mark.parametrize(
    ("provider", "raw_reason", "expected"),
    [pytest.param(p, r, e, id=f"{p}-{r}") for p, (_, _, table) in FINISH_TABLES.items() for r, e in table.items()],
)
def test_finish_reason_table(cat: Catalog, provider: str, raw_reason: Any, expected: str) -> None:
    file, path, _ = FINISH_TABLES[provider]
    raw = reply_json(provider, file)
    holder = raw
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = raw_reason
    out = reply_to_openai(cat, provider, raw)
    if expected == "tool_calls" and not out["choices"][0]["message"].get("tool_calls"):
        # A tool-use finish with no tool call left in the message (e.g. the forced structured-output
        # tool turned into content) is reported as `stop`: clients look for the calls otherwise.
        expected = "stop"
    assert out["choices"][0]["finish_reason"] == expected


@pytest.mark.parametrize("block_reason", ["SAFETY", "BLOCKLIST", "PROHIBITED_CONTENT", "OTHER", "IMAGE_SAFETY"])
def test_gemini_prompt_blocked_is_content_filter(cat: Catalog, block_reason: str) -> None:
    raw = reply_json("gemini", "generate_prompt_blocked.json")
    raw["promptFeedback"]["blockReason"] = block_reason
    out = reply_to_openai(cat, "gemini", raw)
    assert out["choices"][0]["finish_reason"] == "content_filter"
    assert out["choices"][0]["message"]["content"] is None


# ------------------------------------------------------------------------------------------ thinking round trips
TIDE_TOOL = {
    "type": "function",
    "function": {
        "name": "get_tide_table",
        "parameters": {"type": "object", "properties": {"harbour": {"type": "string"}}, "required": ["harbour"]},
    },
}


def test_anthropic_thinking_signature_round_trip(cat: Catalog, snapshot: Any) -> None:
    """A thinking block before tool_use travels in the tool call id and comes back first in the assistant turn."""
    thinking_block = reply_json("anthropic", "messages_thinking.json")["content"][0]
    raw = reply_json("anthropic", "messages_tool_use_parallel.json")
    raw["content"] = [thinking_block, *raw["content"]]  # thinking, text, tool_use, tool_use
    out = reply_to_openai(cat, "anthropic", raw)
    message = out["choices"][0]["message"]
    assert message["reasoning_content"] == thinking_block["thinking"]
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    first, second = message["tool_calls"]
    assert first["id"].startswith("toolu_01HarbourLookupAAAAAAAAA~")  # carries thinking + signature
    assert second["id"] == "toolu_01HarbourLookupBBBBBBBBB"  # a thinking block is carried by the first call only

    # The client sends the assistant message back (as the OpenAI SDK would) with the tool results.
    history = [
        {"role": "user", "content": "Tides in Brest and Saint-Malo?"},
        {"role": "assistant", "content": message["content"], "reasoning_content": message["reasoning_content"],
         "tool_calls": message["tool_calls"]},
        {"role": "tool", "tool_call_id": first["id"], "content": '{"high":"06:12"}'},
        {"role": "tool", "tool_call_id": second["id"], "content": '{"high":"06:40"}'},
    ]
    _, upstream = translate(cat, "anthropic", {"messages": history, "tools": [TIDE_TOOL], "reasoning_effort": "medium"})
    body = upstream.body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assistant = body["messages"][1]
    assert assistant["role"] == "assistant"
    assert assistant["content"][0] == {
        "type": "thinking", "thinking": thinking_block["thinking"], "signature": thinking_block["signature"],
    }
    assert [b["type"] for b in assistant["content"]] == ["thinking", "text", "tool_use", "tool_use"]
    assert [b["id"] for b in assistant["content"][2:]] == ["toolu_01HarbourLookupAAAAAAAAA", "toolu_01HarbourLookupBBBBBBBBB"]
    assert [b["tool_use_id"] for b in body["messages"][2]["content"]] == [
        "toolu_01HarbourLookupAAAAAAAAA", "toolu_01HarbourLookupBBBBBBBBB",
    ]
    assert {"response": stable(out, raw), "next_upstream": body} == snapshot


def test_gemini_thought_signature_round_trip(cat: Catalog, snapshot: Any) -> None:
    """A functionCall's thoughtSignature travels in the tool call id and is sent back on that part."""
    raw = reply_json("gemini", "generate_function_call_with_signature.json")
    signature = raw["candidates"][0]["content"]["parts"][0]["thoughtSignature"]
    out = reply_to_openai(cat, "gemini", raw)
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert out["usage"] == {
        "prompt_tokens": 80, "completion_tokens": 67, "total_tokens": 147,
        "completion_tokens_details": {"reasoning_tokens": 55},
    }
    (call,) = out["choices"][0]["message"]["tool_calls"]
    assert call["id"].startswith("call_0001~")
    assert json.loads(call["function"]["arguments"]) == {"harbour": "Brest"}

    history = [
        {"role": "user", "content": "Tide in Brest?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": '{"high":"06:12"}'},
    ]
    _, upstream = translate(cat, "gemini", {"messages": history, "tools": [TIDE_TOOL], "reasoning_effort": "low"})
    body = upstream.body
    assert body["contents"][1] == {
        "role": "model",
        "parts": [{"functionCall": {"name": "get_tide_table", "args": {"harbour": "Brest"}}, "thoughtSignature": signature}],
    }
    assert body["contents"][2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "get_tide_table", "response": {"high": "06:12"}}}],
    }
    assert body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 1024, "includeThoughts": True}
    assert {"response": stable(out, raw), "next_upstream": body} == snapshot


def test_gemini_parallel_calls_only_the_signed_one_carries(cat: Catalog) -> None:
    raw = reply_json("gemini", "generate_function_calls_parallel.json")
    raw["candidates"][0]["content"]["parts"][0]["thoughtSignature"] = "c2lnLWZpcnN0"
    out = reply_to_openai(cat, "gemini", raw)
    calls = out["choices"][0]["message"]["tool_calls"]
    assert calls[0]["id"].startswith("call_0001~") and calls[1]["id"] == "call_0002"
    history = [
        {"role": "user", "content": "Tides?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "06:12"},
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": "06:40"},
    ]
    _, upstream = translate(cat, "gemini", {"messages": history, "tools": [TIDE_TOOL]})
    parts = upstream.body["contents"][1]["parts"]
    assert parts[0]["thoughtSignature"] == "c2lnLWZpcnN0" and "thoughtSignature" not in parts[1]
    assert [p["functionResponse"]["response"] for p in upstream.body["contents"][2]["parts"]] == [
        {"result": "06:12"}, {"result": "06:40"},
    ]


def test_anthropic_reply_tool_ids_without_thinking_are_unchanged(cat: Catalog) -> None:
    out = reply_to_openai(cat, "anthropic", reply_json("anthropic", "messages_tool_use_parallel.json"))
    assert [c["id"] for c in out["choices"][0]["message"]["tool_calls"]] == [
        "toolu_01HarbourLookupAAAAAAAAA", "toolu_01HarbourLookupBBBBBBBBB",
    ]


# ------------------------------------------------------------------------------------------ bad input, unknown model
USER_TEXT = {"role": "user", "content": "hi"}
INVALID_INPUTS = [
    # (id, messages, param named in the error)
    ("content_not_string_or_list", [{"role": "user", "content": 42}], "messages[0].content"),
    ("content_dict", [{"role": "user", "content": {"type": "text", "text": "hi"}}], "messages[0].content"),
    ("part_without_type", [{"role": "user", "content": [{"text": "hi"}]}], "messages[0].content[0]"),
    ("text_part_not_string", [{"role": "user", "content": [{"type": "text", "text": 7}]}], "messages[0].content[0].text"),
    (
        "tool_content_wrong_type",
        [USER_TEXT, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
         {"role": "tool", "tool_call_id": "c1", "content": 3}],
        "messages[2].content",
    ),
    ("tool_result_for_no_call", [USER_TEXT, {"role": "tool", "tool_call_id": "zzz", "content": "r"}], "messages[1].tool_call_id"),
    (
        "tool_call_arguments_invalid_json",
        [USER_TEXT, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}],
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        "tool_call_arguments_not_a_string",
        [USER_TEXT, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}],
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        "image_url_not_url_or_data_uri",
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "shore.png"}}]}],
        "messages[0].content[0].image_url.url",
    ),
    (
        "image_url_ftp",
        [{"role": "user", "content": [{"type": "text", "text": "x"},
                                      {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}]}],
        "messages[0].content[1].image_url.url",
    ),
    ("role_unknown", [{"role": "robot", "content": "hi"}], "messages[0].role"),
]
@pytest.mark.parametrize(
    ("provider", "messages", "param"),
    [pytest.param(p, m, param, id=f"{p}-{name}") for p in PROVIDERS for name, m, param in INVALID_INPUTS],
)
def test_bad_input_is_invalid_request(cat: Catalog, provider: str, messages: list[Any], param: str) -> None:
    target = target_for(cat, CASES[provider]["model"])
    with pytest.raises(InvalidRequest) as info:
        build_request(target, validate_request({"model": CASES[provider]["model"], "messages": messages}), stream=False)
    err = info.value
    assert err.status == 400
    assert err.param == param
    assert err.to_openai()["error"]["type"] == "invalid_request_error"
    assert err.to_openai()["error"]["param"] == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({}, "messages"),
        ({"messages": [USER_TEXT], "max_tokens": 0}, "max_tokens"),
        ({"messages": [USER_TEXT], "temperature": "hot"}, "temperature"),
        ({"messages": [USER_TEXT], "tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
    ],
    ids=["empty_messages", "no_messages", "max_tokens_zero", "temperature_string", "tool_without_name"],
)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_bad_request_basics_are_invalid_request(cat: Catalog, provider: str, body: dict[str, Any], param: str) -> None:
    target = target_for(cat, CASES[provider]["model"])
    with pytest.raises(InvalidRequest) as info:
        build_request(target, validate_request({"model": CASES[provider]["model"], **body}), stream=False)
    assert info.value.status == 400 and info.value.param == param


@pytest.mark.parametrize("provider", PROVIDERS)
def test_unknown_model_is_not_found(cat: Catalog, provider: str) -> None:
    with pytest.raises(NotFound) as info:
        resolve_model(cat, f"no-such-{provider}-model")
    err = info.value
    assert err.status == 404 and err.code == "model_not_found" and err.param == "model"
    assert err.to_openai()["error"]["type"] == "invalid_request_error"
    # The provider's own models resolve to it (qualified, and by their alias or id).
    assert resolve_model(cat, CASES[provider]["model"])[0].provider.name == provider


def test_empty_model_is_not_found(cat: Catalog) -> None:
    with pytest.raises(NotFound) as info:
        resolve_model(cat, "")
    assert info.value.code == "model_not_found"


# ------------------------------------------------------------------------------------------ URLs and headers
@pytest.mark.parametrize(
    ("model", "url", "header_names"),
    [
        ("anthropic/claude-sonnet-4-20250514", "https://api.anthropic.com/v1/messages", {"x-api-key", "anthropic-version"}),
        ("gemini/gemini-2.5-flash", "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent",
         {"x-goog-api-key"}),
        ("openai/gpt-4o", "https://api.openai.com/v1/chat/completions", {"Authorization"}),
        ("copilot/gpt-4o", "https://api.githubcopilot.com/chat/completions",
         {"Authorization", "Copilot-Integration-Id", "Editor-Version", "Editor-Plugin-Version", "User-Agent", "Openai-Intent"}),
    ],
)
def test_url_and_headers(cat: Catalog, model: str, url: str, header_names: set[str]) -> None:
    upstream = build_request(target_for(cat, model), {"model": model, "messages": [USER_TEXT]}, stream=False)
    assert upstream.url == url
    assert set(upstream.headers) == header_names
