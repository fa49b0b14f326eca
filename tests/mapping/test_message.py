"""engine/mapping/message.py: provider parts -> one OpenAI assistant message (`parts_to_message`),
the part classifier, and tool-call ids (`new_call_id`, `encode_carry`)."""

from __future__ import annotations

import itertools
import json
import re

from engine.mapping import compile_classifier, encode_carry, new_call_id, split_call_id
from engine.mapping.message import compile_parts_to_message


def to_message(rule: dict, parts, src=None, ctx: dict | None = None) -> dict:
    return compile_parts_to_message(rule)(parts, src, {} if ctx is None else ctx)


def numbered_ids():
    """A `new_call_id` stand-in giving call_1, call_2, ..."""
    numbers = itertools.count(1)
    return lambda prefix="call_": f"{prefix}{next(numbers)}"


# ------------------------------------------------------------------------------------- ids
def test_new_call_ids_are_prefixed_and_unique():
    ids = {new_call_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", i) for i in ids)
    assert new_call_id("toolu_").startswith("toolu_")


def test_encode_carry_packs_json_behind_the_separator():
    assert encode_carry("call_1", {}, "~") == "call_1"
    packed = encode_carry("call_1", {"sig": "abc", "n": [1, 2]}, "~")
    plain, _, tail = packed.partition("~")
    assert plain == "call_1" and tail and not tail.endswith("=")
    assert re.fullmatch(r"[A-Za-z0-9_-]+", tail)  # base64url: safe in any JSON string or URL
    assert split_call_id(packed, "~") == ("call_1", {"sig": "abc", "n": [1, 2]})
    assert split_call_id(encode_carry("c", {"k": "v"}, "|"), "|") == ("c", {"k": "v"})


# ----------------------------------------------------------------------------- classifier
def test_a_classifier_by_value_maps_cases_and_ignores_the_rest():
    classify = compile_classifier({"by": "/type", "cases": {"text": "text", "thinking": "reasoning",
                                                            "redacted_thinking": "_ignore"}})
    assert classify({"type": "text"}, {}) == "text"
    assert classify({"type": "thinking"}, {}) == "reasoning"
    assert classify({"type": "redacted_thinking"}, {}) is None
    assert classify({"type": "server_tool_use"}, {}) is None  # no _default: ignored
    assert classify({"type": ["x"]}, {}) is None
    assert classify("not a part", {}) is None


def test_a_classifier_by_value_falls_back_to_its_default():
    classify = compile_classifier({"by": "/type", "cases": {"text": "text", "_default": "unsupported"}})
    assert classify({"type": "document"}, {}) == "unsupported"
    assert classify({}, {}) == "unsupported"
    assert classify({"type": {"nested": 1}}, {}) == "unsupported"


def test_a_classifier_by_conditions_takes_the_first_match():
    # As gemini.yaml: a thought part has text too, so its test comes first.
    classify = compile_classifier([
        {"kind": "reasoning", "when": {"eq": ["/thought", True]}},
        {"kind": "tool_call", "when": {"has": "/functionCall"}},
        {"kind": "text", "when": {"has": "/text"}},
    ])
    assert classify({"text": "hmm", "thought": True}, {}) == "reasoning"
    assert classify({"text": "hi", "thought": 1}, {}) == "text"
    assert classify({"functionCall": {"name": "f"}}, {}) == "tool_call"
    assert classify({"inlineData": {}}, {}) is None


def test_a_classifier_entry_without_when_matches_anything_and_may_ignore():
    classify = compile_classifier([{"kind": "_ignore", "when": {"has": "/skip"}}, {"kind": "text"}])
    assert classify({"skip": 1}, {}) is None
    assert classify({}, {}) == "text"


# ------------------------------------------------------------------------ parts_to_message
ANTHROPIC = {
    "classify": {"by": "/type", "cases": {"text": "text", "thinking": "reasoning", "tool_use": "tool_call",
                                          "_default": "_ignore"}},
    "fields": {"text": {"text": "/text"}, "reasoning": {"text": "/thinking"},
               "tool_call": {"id": "/id", "name": "/name", "args": "/input"}},
    "arguments_encoding": "object",
    "content_tool": "json_output",
    "id": {"carry_sep": "~", "carry_preceding": {"thinking": {"kind": "reasoning", "from": "/thinking"},
                                                 "signature": {"kind": "reasoning", "from": "/signature"}}},
}

GEMINI = {
    "classify": [{"kind": "reasoning", "when": {"eq": ["/thought", True]}},
                 {"kind": "tool_call", "when": {"has": "/functionCall"}},
                 {"kind": "text", "when": {"has": "/text"}}],
    "fields": {"text": {"text": "/text"}, "reasoning": {"text": "/text"},
               "tool_call": {"name": "/functionCall/name", "args": "/functionCall/args"}},
    "id": {"synth_prefix": "call_", "carry_sep": "~", "carry": {"sig": "/thoughtSignature"}},
}


def test_text_parts_join_into_content():
    message = to_message(ANTHROPIC, [{"type": "text", "text": "Hello"}, {"type": "image"}, {"type": "text", "text": ", you"}])
    assert message == {"role": "assistant", "content": "Hello, you", "refusal": None}


def test_no_parts_make_an_empty_message():
    for parts in ([], None, "not a list"):
        assert to_message(ANTHROPIC, parts) == {"role": "assistant", "content": None, "refusal": None}


def test_a_thinking_block_carries_into_the_id_of_the_first_call_after_it_only():
    parts = [
        {"type": "thinking", "thinking": "Look it up.", "signature": "sig=="},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
    ]
    message = to_message(ANTHROPIC, parts)
    assert message["reasoning_content"] == "Look it up."
    assert message["content"] is None
    first, second = message["tool_calls"]
    assert split_call_id(first["id"], "~") == ("toolu_1", {"thinking": "Look it up.", "signature": "sig=="})
    assert second["id"] == "toolu_2"
    assert first["type"] == "function"
    assert first["function"] == {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}
    assert json.loads(second["function"]["arguments"]) == {}


def test_the_content_tool_call_becomes_the_content():
    parts = [{"type": "tool_use", "id": "toolu_1", "name": "json_output", "input": {"answer": 42}}]
    message = to_message(ANTHROPIC, parts)
    assert json.loads(message["content"]) == {"answer": 42}
    assert "tool_calls" not in message


def test_gemini_parts_get_synthesised_ids_carrying_their_signature():
    parts = [
        {"text": "Let me think.", "thought": True},
        {"text": "Calling."},
        {"functionCall": {"name": "get_weather", "args": {"city": "Zürich"}}, "thoughtSignature": "c2ln"},
        {"functionCall": {"name": "noop"}},
    ]
    message = to_message(GEMINI, parts, ctx={"new_call_id": numbered_ids()})
    assert message["reasoning_content"] == "Let me think."
    assert message["content"] == "Calling."
    first, second = message["tool_calls"]
    assert split_call_id(first["id"], "~") == ("call_1", {"sig": "c2ln"})
    assert second["id"] == "call_2"
    assert json.loads(first["function"]["arguments"]) == {"city": "Zürich"}
    assert "Zürich" in first["function"]["arguments"]  # not escaped to ASCII
    assert second["function"]["arguments"] == "{}"


def test_ids_are_synthesised_with_a_random_suffix_by_default():
    message = to_message(GEMINI, [{"functionCall": {"name": "f", "args": {}}}])
    assert re.fullmatch(r"call_[0-9a-f]{24}", message["tool_calls"][0]["id"])


def test_string_encoded_arguments_are_passed_through():
    rule = {"classify": {"by": "/type", "cases": {"function": "tool_call"}}, "arguments_encoding": "string",
            "fields": {"tool_call": {"id": "/id", "name": "/name", "arguments": "/arguments"}}}
    message = to_message(rule, [{"type": "function", "id": "c1", "name": "f", "arguments": '{"a":1}'},
                                {"type": "function", "id": "c2", "name": "g", "arguments": {"not": "a string"}}])
    assert [c["function"]["arguments"] for c in message["tool_calls"]] == ['{"a":1}', "{}"]


def test_refusals_and_parts_from_elsewhere_in_the_source():
    rule = {"classify": {"by": "/type", "cases": {"text": "text", "refusal": "refusal"}},
            "fields": {"text": {"text": "/text"}, "refusal": {"text": "/refusal"}},
            "also_from": ["/extra"]}
    message = to_message(rule, [{"type": "refusal", "refusal": "No."}],
                         src={"extra": [{"type": "text", "text": "More"}]})
    assert message == {"role": "assistant", "content": "More", "refusal": "No."}


def test_fields_may_list_several_sources():
    rule = {"classify": {"by": "/type", "cases": {"text": "text"}}, "fields": {"text": {"text": ["/text", "/content"]}}}
    assert to_message(rule, [{"type": "text", "content": "b"}, {"type": "text", "text": 5}])["content"] == "b"
