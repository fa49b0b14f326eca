"""engine/mapping/client.py: a client format's turns -> canonical messages (`turns_to_messages`), a
canonical assistant message -> client parts (`message_to_parts`), and `split_carry`."""

from __future__ import annotations

import json

import pytest

from engine.errors import InvalidRequest
from engine.mapping import encode_carry, split_call_id
from engine.mapping.client import (
    compile_message_to_parts,
    compile_turns_to_messages,
    split_carry,
)

# As ingress.d/anthropic-messages.yaml.
MESSAGES = {
    "system_from": "/system",
    "system_template": {"role": "system", "content": "@value"},
    "roles": {"user": "user", "assistant": "assistant"},
    "classify": {"by": "/type", "cases": {"text": "text", "image": "image", "tool_use": "tool_call",
                                          "tool_result": "tool_result", "thinking": "reasoning",
                                          "redacted_thinking": "_ignore", "_default": "unsupported"}},
    "blocks": {
        "text": {"template": {"type": "text", "text": "/text", "cache_control": "/cache_control"}},
        "image": [
            {"when": {"eq": ["/source/type", "base64"]},
             "template": {"type": "image_url", "image_url": {"url": {"op": "concat", "pieces": [
                 "data:", "/source/media_type", ";base64,", "/source/data"]}}}},
            {"when": {"eq": ["/source/type", "url"]}, "template": {"type": "image_url", "image_url": {"url": "/source/url"}}},
        ],
        "tool_call": {"mode": "tool_calls", "template": {"id": "/id", "type": "function", "function": {
            "name": "/name", "arguments": {"op": "json_encode", "from": "/input", "default": {}}}}},
        "tool_result": {"mode": "message", "template": {"role": "tool", "tool_call_id": "/tool_use_id", "content": "/content"}},
        "reasoning": {"mode": "join", "into": "reasoning_content", "template": "/thinking"},
    },
    "carry": {"from": "reasoning", "to": "tool_call", "template": {"thinking": "/thinking", "signature": "/signature"},
              "id": "/id", "sep": "~", "refs": {"tool_result": "/tool_call_id"}},
}

# As ingress.d/openai-responses.yaml (input items).
RESPONSES = {
    "param": "input",
    "string_as": "user",
    "system_from": "/instructions",
    "roles": {"user": "user", "assistant": "assistant", "system": "system", "developer": "developer"},
    "merge_same_role": True,
    "classify": {"by": "/type", "cases": {"input_text": "text", "output_text": "text", "function_call": "tool_call",
                                          "function_call_output": "tool_result", "reasoning": "_ignore",
                                          "_default": "unsupported"}},
    "loose_items": {"tool_call": "assistant", "tool_result": "user"},
    "blocks": {
        "text": {"template": {"type": "text", "text": "/text"}},
        "tool_call": {"mode": "tool_calls", "template": {"id": "/call_id", "type": "function",
                                                         "function": {"name": "/name", "arguments": "/arguments"}}},
        "tool_result": {"mode": "message", "template": {"role": "tool", "tool_call_id": "/call_id", "content": "/output"}},
    },
}


def to_messages(rule: dict, turns, src: dict | None = None):
    body = {"messages": turns, **(src or {})}
    return compile_turns_to_messages(rule)(turns, body, {})


# ----------------------------------------------------------------------------- split_carry
def test_split_carry_takes_some_keys_and_repacks_the_rest():
    carried = encode_carry("toolu_1", {"signature": "s", "thinking": "t", "other": 1}, "~")
    plain, taken = split_carry(carried, "~", frozenset({"signature", "thinking"}))
    assert taken == {"signature": "s", "thinking": "t"}
    assert split_call_id(plain, "~") == ("toolu_1", {"other": 1})
    everything, _ = split_carry(carried, "~", frozenset({"signature", "thinking", "other"}))
    assert everything == "toolu_1"


def test_split_carry_leaves_ids_without_a_carry_alone():
    assert split_carry("toolu_1", "~", frozenset({"signature"})) == ("toolu_1", {})
    assert split_carry("a~b", None, frozenset({"signature"})) == ("a~b", {})


# ----------------------------------------------------------------------- turns_to_messages
def test_anthropic_turns_become_canonical_messages():
    turns = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
            {"type": "text", "text": "Thanks", "cache_control": {"type": "ephemeral"}},
        ]},
    ]
    assert to_messages(MESSAGES, turns, {"system": "Be brief."}) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Checking."}],
         "tool_calls": [{"id": "toolu_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        # A tool result is a message of its own, before the rest of its turn.
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "user", "content": [{"type": "text", "text": "Thanks", "cache_control": {"type": "ephemeral"}}]},
    ]


def test_images_render_by_their_source_type():
    turns = [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
        {"type": "image", "source": {"type": "file", "file_id": "f"}},  # neither: nothing rendered
    ]}]
    assert to_messages(MESSAGES, turns)[0]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    ]


def test_a_thinking_signature_rides_in_the_next_tool_call_id_and_its_result():
    turns = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Look it up.", "signature": "sig=="},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
            {"type": "tool_use", "id": "toolu_2", "name": "g"},
        ]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "a"},
                                     {"type": "tool_result", "tool_use_id": "toolu_2", "content": "b"}]},
    ]
    out = to_messages(MESSAGES, turns)
    assistant = out[1]
    assert assistant["reasoning_content"] == "Look it up."
    first, second = assistant["tool_calls"]
    assert split_call_id(first["id"], "~") == ("toolu_1", {"thinking": "Look it up.", "signature": "sig=="})
    assert second["id"] == "toolu_2"  # the carry goes to the first call only
    assert second["function"]["arguments"] == "{}"  # `input` absent: the default
    assert [m["tool_call_id"] for m in out[2:]] == [first["id"], "toolu_2"]


def test_reasoning_parts_join():
    rule = {**MESSAGES, "join_sep": "\n", "carry": None}
    out = to_messages(rule, [{"role": "assistant", "content": [{"type": "thinking", "thinking": "a"},
                                                               {"type": "thinking", "thinking": "b"}]}])
    assert out == [{"role": "assistant", "reasoning_content": "a\nb"}]


def test_a_system_list_or_nothing():
    blocks = [{"type": "text", "text": "Be brief."}]
    assert to_messages(MESSAGES, [{"role": "user", "content": "q"}], {"system": blocks})[0] == {
        "role": "system", "content": blocks}
    for empty in ("", [], None):
        assert to_messages(MESSAGES, [{"role": "user", "content": "q"}], {"system": empty})[0]["role"] == "user"


def test_responses_input_as_a_string_and_loose_items():
    assert to_messages(RESPONSES, "Hello", {"instructions": "Be brief."}) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        {"type": "reasoning", "summary": []},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "18C"},
        {"type": "function_call_output", "call_id": "c2", "output": "noon"},
    ]
    out = to_messages(RESPONSES, items)
    assert out[0] == {"role": "user", "content": [{"type": "text", "text": "Weather?"}]}
    # Loose calls become one-call assistant turns, merged into one message.
    assert out[1]["role"] == "assistant"
    assert [c["id"] for c in out[1]["tool_calls"]] == ["c1", "c2"]
    assert out[2:] == [{"role": "tool", "tool_call_id": "c1", "content": "18C"},
                       {"role": "tool", "tool_call_id": "c2", "content": "noon"}]


def test_same_role_messages_merge_their_content():
    out = to_messages(RESPONSES, [{"role": "user", "content": "a"},
                                  {"role": "user", "content": [{"type": "input_text", "text": "b"}]}])
    assert out == [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]


def test_unsupported_parts_are_rejected_or_skipped():
    turns = [{"role": "user", "content": [{"type": "document", "source": {}}, {"type": "text", "text": "hi"}]}]
    with pytest.raises(InvalidRequest, match="content of type 'document' is not supported") as failure:
        to_messages(MESSAGES, turns)
    assert failure.value.param == "messages[0].content[0]"
    lenient = {**MESSAGES, "on_missing_part": "ignore"}
    assert to_messages(lenient, turns) == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


def test_parts_the_classifier_ignores_are_dropped_not_refused():
    """`redacted_thinking: _ignore` drops the block; only kinds without blocks are refused."""
    turns = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "opaque"},
                                          {"type": "text", "text": "hello"}]},
    ]
    assert to_messages(MESSAGES, turns) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
    ]


@pytest.mark.parametrize(("turns", "src", "message", "param"), [
    ([], {}, "messages must be a non-empty list", "messages"),
    ({"role": "user"}, {}, "messages must be a non-empty list", "messages"),
    (["hi"], {}, "messages[0] must be an object", "messages[0]"),
    ([{"role": "system", "content": "x"}], {}, "messages[0].role must be one of user, assistant; got 'system'",
     "messages[0].role"),
    ([{"content": "x"}], {}, "messages[0].role must be one of", "messages[0].role"),
    ([{"role": "user"}], {}, "messages[0].content is required", "messages[0].content"),
    ([{"role": "user", "content": 3}], {}, "must be a string or a list of content blocks", "messages[0].content"),
    ([{"role": "user", "content": ["text"]}], {}, "messages[0].content[0] must be an object", "messages[0].content[0]"),
    ([{"role": "user", "content": "x"}], {"system": {"text": "x"}}, "system must be a string or a list", "system"),
])
def test_invalid_turns_are_rejected_with_the_offending_param(turns, src, message, param):
    with pytest.raises(InvalidRequest) as failure:
        to_messages(MESSAGES, turns, src)
    assert message in failure.value.message
    assert failure.value.param == param


def test_errors_name_the_client_param():
    with pytest.raises(InvalidRequest, match=r"input\[0\] must be an object") as failure:
        to_messages(RESPONSES, [1])
    assert failure.value.param == "input[0]"


def test_an_unknown_part_mode_is_rejected_at_compile_time():
    rule = {**MESSAGES, "blocks": {"text": {"mode": "append", "template": "/text"}}}
    with pytest.raises(ValueError, match="unknown part mode 'append'"):
        compile_turns_to_messages(rule)


# ------------------------------------------------------------------------ message_to_parts
TO_ANTHROPIC = {
    "blocks": {
        "reasoning": {"template": {"type": "thinking", "thinking": "@text", "signature": "@carry/signature"}},
        "text": {"template": {"type": "text", "text": "@text"}},
        "refusal": {"template": {"type": "text", "text": "@text"}},
        "tool_call": {"template": {"type": "tool_use", "id": "@id", "name": "@name", "input": "@args"}},
    },
    "carry": {"sep": "~", "to_reasoning": ["thinking", "signature"], "defaults": {"signature": ""}},
}


def to_parts(rule: dict, message):
    return compile_message_to_parts(rule)(message, None, {})


def test_a_message_becomes_reasoning_text_then_tool_calls():
    carried = encode_carry("toolu_1", {"thinking": "hmm", "signature": "sig=="}, "~")
    message = {"role": "assistant", "content": "Checking.", "reasoning_content": "hmm",
               "tool_calls": [{"id": carried, "type": "function",
                               "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                              {"id": "toolu_2", "type": "function", "function": {"name": "noop", "arguments": ""}}]}
    assert to_parts(TO_ANTHROPIC, message) == [
        {"type": "thinking", "thinking": "hmm", "signature": "sig=="},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "noop", "input": {}},
    ]


def test_carry_defaults_fill_in_for_reasoning_without_a_signature():
    parts = to_parts(TO_ANTHROPIC, {"role": "assistant", "content": None, "reasoning_content": "hmm"})
    assert parts == [{"type": "thinking", "thinking": "hmm", "signature": ""}]


def test_refusals_content_lists_and_empty_messages():
    assert to_parts(TO_ANTHROPIC, {"role": "assistant", "content": None, "refusal": "No."}) == [
        {"type": "text", "text": "No."}]
    listed = {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}, "junk"]}
    assert to_parts(TO_ANTHROPIC, listed) == [{"type": "text", "text": "ab"}]
    assert to_parts(TO_ANTHROPIC, {"role": "assistant", "content": ""}) == []
    assert to_parts(TO_ANTHROPIC, "not a message") == []


def test_arguments_that_are_not_json_are_kept_raw():
    message = {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}]}
    assert to_parts(TO_ANTHROPIC, message)[0]["input"] == {"_raw": "{oops"}


def test_tool_calls_render_the_arguments_string_too():
    rule = {"blocks": {"tool_call": {"template": {"type": "function_call", "call_id": "@id", "arguments": "@arguments",
                                                  "id": {"op": "concat", "pieces": ["fc_", "@id"]}}}}}
    message = {"role": "assistant", "tool_calls": [{"id": "call_1", "function": {"name": "f", "arguments": '{"a":1}'}}]}
    assert to_parts(rule, message) == [{"type": "function_call", "call_id": "call_1", "arguments": '{"a":1}',
                                        "id": "fc_call_1"}]
    assert json.loads(to_parts(rule, message)[0]["arguments"]) == {"a": 1}


def test_block_specs_may_be_conditional():
    rule = {"blocks": {"text": [{"when": {"eq": ["@text", "skip"]}, "template": {"skipped": True}},
                                {"template": {"t": "@text"}}]}}
    assert to_parts(rule, {"role": "assistant", "content": "skip"}) == [{"skipped": True}, {"t": "skip"}]
    assert to_parts(rule, {"role": "assistant", "content": "x"}) == [{"t": "x"}]
