"""Prompt caching expressed in the specs (issue 11, item 5).

Anthropic: a client's `cache_control` on system, message and tool parts reaches the upstream body;
cache reads and writes come back in usage and are priced as such. Gemini: a `cached_content`
reference (a gateway extra field) becomes `cachedContent`. OpenAI-shaped upstreams never see it.
All in process: spec -> upstream body -> (recorded reply) -> OpenAI output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine import build_request, completion_from_reply
from engine.pipeline.pricing import cost_of, price_for
from engine.spec.loader import Catalog

from .conftest import checked_catalog, one_target
from .oracles import oracle_check

ROOT = Path(__file__).resolve().parent.parent
REPLIES = Path(__file__).resolve().parent / "providers"
EPHEMERAL = {"type": "ephemeral"}
ENVIRON = {"ANTHROPIC_API_KEY": "sk-ant-test", "GEMINI_API_KEY": "gemini-test", "OPENAI_API_KEY": "sk-test"}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_tide_table",
        "description": "Tide table for a harbour",
        "parameters": {"type": "object", "properties": {"harbour": {"type": "string"}}, "required": ["harbour"]},
    },
}


@pytest.fixture(scope="module")
def cat() -> Catalog:
    return checked_catalog(ENVIRON)


target = one_target


def anthropic_body(cat: Catalog, request: dict[str, Any]) -> dict[str, Any]:
    model = "anthropic/claude-sonnet-4-20250514"
    body = build_request(target(cat, model), {"model": model, **request}, stream=False).body
    oracle_check.assert_anthropic_request(body)
    return body


def reply(provider: str, name: str) -> dict[str, Any]:
    return json.loads((REPLIES / provider / "replies" / name).read_text())


# ------------------------------------------------------------------------------------------ Anthropic
def test_cache_control_on_system_parts_makes_system_a_list_of_blocks(cat: Catalog) -> None:
    body = anthropic_body(cat, {
        "messages": [
            {"role": "system", "content": [
                {"type": "text", "text": "You answer from the harbour handbook below.", "cache_control": EPHEMERAL},
                {"type": "text", "text": "Keep answers short."},
            ]},
            {"role": "developer", "content": "Cite the section."},
            {"role": "user", "content": "Where are the drills?"},
        ],
    })
    assert body["system"] == [
        {"type": "text", "text": "You answer from the harbour handbook below.", "cache_control": EPHEMERAL},
        {"type": "text", "text": "Keep answers short."},
        {"type": "text", "text": "Cite the section."},
    ]
    # The scratch value the system blocks were rendered into is gone: messages are the real turns.
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Where are the drills?"}]}]


def test_system_without_cache_control_stays_a_string(cat: Catalog) -> None:
    body = anthropic_body(cat, {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "developer", "content": "Cite the section."},
            {"role": "user", "content": "Hi"},
        ],
    })
    assert body["system"] == "Be brief.\n\nCite the section."


def test_no_system_message_writes_no_system(cat: Catalog) -> None:
    body = anthropic_body(cat, {"messages": [{"role": "user", "content": "Hi"}]})
    assert "system" not in body
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]


def test_cache_control_on_message_parts_and_tools_passes_through(cat: Catalog) -> None:
    one_hour = {"type": "ephemeral", "ttl": "1h"}
    body = anthropic_body(cat, {
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<handbook>... 40 pages ...</handbook>", "cache_control": one_hour},
                {"type": "text", "text": "Which section covers drills?"},
            ]},
            {"role": "assistant", "content": [{"type": "text", "text": "Section 4.", "cache_control": EPHEMERAL}]},
            {"role": "user", "content": "And the tides?"},
        ],
        "tools": [{**TOOL, "cache_control": EPHEMERAL}],
    })
    user, assistant, last = body["messages"]
    assert user["content"] == [
        {"type": "text", "text": "<handbook>... 40 pages ...</handbook>", "cache_control": one_hour},
        {"type": "text", "text": "Which section covers drills?"},
    ]
    assert assistant["content"] == [{"type": "text", "text": "Section 4.", "cache_control": EPHEMERAL}]
    assert last["content"] == [{"type": "text", "text": "And the tides?"}]
    assert body["tools"][0]["cache_control"] == EPHEMERAL
    assert body["tools"][0]["name"] == "get_tide_table"


def test_without_cache_control_nothing_is_added(cat: Catalog) -> None:
    body = anthropic_body(cat, {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "tools": [TOOL]})
    assert "cache_control" not in json.dumps(body)


def test_cache_usage_is_reported_and_priced(cat: Catalog) -> None:
    model = "anthropic/claude-sonnet-4-20250514"
    out = completion_from_reply(target(cat, model), reply("anthropic", "messages_cache_usage.json"), requested_model=model)
    oracle_check.assert_openai(out, "CreateChatCompletionResponse")
    usage = out["usage"]
    # input_tokens excludes the cache: prompt = 21 uncached + 18000 read + 2048 written.
    assert usage["prompt_tokens"] == 21 + 18000 + 2048
    assert usage["prompt_tokens_details"] == {"cached_tokens": 18000, "cache_write_tokens": 2048}
    assert usage["total_tokens"] == usage["prompt_tokens"] + 15
    price = price_for(cat, "anthropic", "claude-sonnet-4-20250514")
    assert price is not None
    expected = (21 * 3.00 + 18000 * 0.30 + 2048 * 3.75 + 15 * 15.00) / 1_000_000
    assert cost_of(price, usage) == pytest.approx(expected)
    # A cache read costs a tenth of an uncached token.
    assert cost_of(price, usage) < cost_of(price, {"prompt_tokens": usage["prompt_tokens"], "completion_tokens": 15})


# ------------------------------------------------------------------------------------------ Gemini
def test_gemini_cached_content_reference_is_passed_on(cat: Catalog) -> None:
    model = "gemini/gemini-2.5-flash"
    request = {
        "model": model,
        "messages": [{"role": "user", "content": "Summarise chapter 2 of the cached handbook."}],
        "cached_content": "cachedContents/handbook-v3",
    }
    body = build_request(target(cat, model), request, stream=False).body
    oracle_check.assert_gemini_request(body)
    assert body["cachedContent"] == "cachedContents/handbook-v3"
    assert "cached_content" not in body
    assert "cachedContent" not in build_request(target(cat, model), {**request, "cached_content": None}, stream=False).body


def test_gemini_cached_tokens_are_reported_and_priced(cat: Catalog) -> None:
    model = "gemini/gemini-2.5-pro"
    raw = reply("gemini", "generate_cached_usage.json")
    out = completion_from_reply(target(cat, model), raw, requested_model=model)
    oracle_check.assert_openai(out, "CreateChatCompletionResponse")
    cached = raw["usageMetadata"]["cachedContentTokenCount"]
    assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == cached
    price = price_for(cat, "gemini", "gemini-2.5-pro")
    assert price is not None
    uncached = out["usage"]["prompt_tokens"] - cached
    expected = (uncached * price.input + cached * price.cached_input + out["usage"]["completion_tokens"] * price.output) / 1_000_000
    assert cost_of(price, out["usage"]) == pytest.approx(expected)


def test_openai_shaped_upstreams_do_not_receive_the_gemini_field(cat: Catalog) -> None:
    for model in ("openai/gpt-4o", "anthropic/claude-sonnet-4-20250514"):
        body = build_request(
            target(cat, model),
            {"model": model, "messages": [{"role": "user", "content": "Hi"}], "cached_content": "cachedContents/x"},
            stream=False,
        ).body
        assert "cached_content" not in body and "cachedContent" not in body


def test_a_mark_on_a_later_system_message_keeps_every_system_text_as_a_block(cat: Catalog) -> None:
    body = anthropic_body(cat, {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "developer", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "Cite.", "cache_control": EPHEMERAL}]},
        ],
    })
    assert body["system"] == [{"type": "text", "text": "Be brief."},
                              {"type": "text", "text": "Cite.", "cache_control": EPHEMERAL}]
