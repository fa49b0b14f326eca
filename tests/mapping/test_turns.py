"""engine/mapping/turns.py: OpenAI messages -> a provider's turns (`messages_to_turns`), system text
(`collect_text`), and the carried ids of tool calls (`split_call_id`)."""

from __future__ import annotations

import base64
import json

import pytest

from engine.errors import InvalidRequest
from engine.mapping import encode_carry, split_call_id
from engine.mapping.turns import (
    compile_collect_text,
    compile_messages_to_turns,
    decode_carry,
)
from engine.pointer import MISSING

# As anthropic.yaml: system dropped (collected apart), tool results inside the next user turn.
ANTHROPIC = {
    "roles": {"system": "_drop", "developer": "_drop", "user": "user", "assistant": "assistant", "tool": "user",
              "_default": "user"},
    "turn": {"role": "@role"},
    "merge_same_role": True,
    "drop_empty_turns": True,
    "call_carry_sep": "~",
    "parts": {
        "text": {"into": "content", "template": {"type": "text", "text": "@text", "cache_control": "@part/cache_control"}},
        "image_data": {"into": "content",
                       "template": {"type": "image", "source": {"type": "base64", "media_type": "@media_type",
                                                                "data": "@data"}}},
        "image_url": {"into": "content", "template": {"type": "image", "source": {"type": "url", "url": "@url"}}},
        "reasoning": "_drop",
        "tool_call": [
            {"into": "content", "prepend": True, "when": {"has": "@carry/signature"},
             "template": {"type": "thinking", "thinking": "@carry/thinking", "signature": "@carry/signature"}},
            {"into": "content", "template": {"type": "tool_use", "id": "@id", "name": "@name", "input": "@args"}},
        ],
        "tool_result": {"into": "content", "template": {"type": "tool_result", "tool_use_id": "@id", "content": "@text"}},
    },
}


def turns(messages, rule=ANTHROPIC, ctx: dict | None = None):
    return compile_messages_to_turns(rule)(messages, None, {} if ctx is None else ctx)


def call(call_id: str = "call_1", name: str = "get_weather", arguments: str = '{"city": "Paris"}') -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# ------------------------------------------------------------------------------- carried ids
def test_split_call_id_unpacks_what_encode_carry_packs():
    carried = encode_carry("toolu_1", {"signature": "c2ln", "thinking": "hmm ~ ok"}, "~")
    assert carried.startswith("toolu_1~") and "=" not in carried
    assert split_call_id(carried, "~") == ("toolu_1", {"signature": "c2ln", "thinking": "hmm ~ ok"})


@pytest.mark.parametrize(("call_id", "sep"), [("call_1", "~"), ("call~1", None), ("call~1", "")])
def test_an_id_without_a_carry_is_returned_as_is(call_id, sep):
    assert split_call_id(call_id, sep) == (call_id, {})


def test_a_carry_that_does_not_decode_is_dropped():
    assert split_call_id("call_1~!!!not-base64", "~") == ("call_1", {})
    packed_list = base64.urlsafe_b64encode(json.dumps([1, 2]).encode()).decode().rstrip("=")
    assert decode_carry(packed_list) == {}  # only an object is a carry
    assert decode_carry(base64.urlsafe_b64encode(b"not json").decode()) == {}


# -------------------------------------------------------------------------- messages_to_turns
def test_a_conversation_with_a_tool_call_becomes_anthropic_turns():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call()]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "user", "content": [{"type": "text", "text": "Thanks", "cache_control": {"type": "ephemeral"}}]},
    ]
    assert turns(messages) == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        # The tool result (role tool -> user) merges with the next user turn.
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                                     {"type": "text", "text": "Thanks", "cache_control": {"type": "ephemeral"}}]},
    ]


def test_a_carried_signature_comes_back_as_a_thinking_block_before_the_call():
    carried = encode_carry("toolu_9", {"thinking": "Look it up.", "signature": "sig=="}, "~")
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Checking.", "reasoning_content": "Look it up.", "tool_calls": [call(carried)]},
        {"role": "tool", "tool_call_id": carried, "content": "18C"},
    ]
    out = turns(messages)
    assert out[1]["content"] == [
        {"type": "thinking", "thinking": "Look it up.", "signature": "sig=="},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    assert out[2]["content"] == [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "18C"}]


def test_images_are_split_into_their_fields():
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/PNG;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg?size=2"}},
        {"type": "image_url", "image_url": "https://example.com/dog.jpg"},
    ]}]
    assert turns(messages)[0]["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg?size=2"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/dog.jpg"}},
    ]


def test_image_fields_include_format_and_detail():
    rule = {"roles": {"user": "user"},
            "parts": {"image_data": {"template": {"f": "@format", "m": "@media_type", "d": "@detail", "u": "@url"}}}}
    url = "data:image/jpeg;name=a.jpg;base64,/9j/4AAQ"
    out = turns([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url, "detail": "low"}}]}], rule)
    assert out[0]["content"] == [{"f": "jpeg", "m": "image/jpeg", "d": "low", "u": url}]


def test_join_scalar_and_merge_modes():
    rule = {
        "roles": {"user": "user", "assistant": "model"},
        "role_key": "speaker",
        "turn": {"speaker": "@role"},
        "join_sep": " | ",
        "parts": {
            "text": [{"into": "text", "mode": "join", "template": "@text"},
                     {"into": "last", "mode": "scalar", "template": "@text"}],
            "tool_call": {"into": ".", "template": {"call": "@name"}},
        },
    }
    out = turns([
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "c", "tool_calls": [call()]},
    ], rule)
    assert out == [{"speaker": "user", "text": "a | b", "last": "b"},
                   {"speaker": "model", "text": "c", "last": "c", "call": "get_weather"}]


def test_same_role_turns_merge_only_when_asked():
    rule = {"roles": {"user": "user", "system": "user"}, "parts": {"text": {"into": "parts", "template": "@text"}}}
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert turns(messages, rule) == [{"role": "user", "parts": ["s"]}, {"role": "user", "parts": ["u"]}]
    merged = turns(messages, {**rule, "merge_same_role": True})
    assert merged == [{"role": "user", "parts": ["s", "u"]}]


def test_empty_turns_are_dropped_only_when_asked():
    rule = {"roles": {"user": "user", "assistant": "assistant"}, "parts": {"text": {"template": "@text"}}}
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]
    assert turns(messages, rule) == [{"role": "user", "content": ["hi"]}, {"role": "assistant"}]
    assert turns(messages, {**rule, "drop_empty_turns": True}) == [{"role": "user", "content": ["hi"]}]


def test_a_dropped_assistant_message_still_names_its_calls():
    rule = {"roles": {"user": "user", "tool": "user", "assistant": "_drop"},
            "parts": {"text": {"template": "@text"}, "tool_result": {"template": {"r": "@text", "of": "@call/name"}}}}
    out = turns([{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [call()]},
                 {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "18"},
                                                                        {"type": "text", "text": "C"}]}], rule)
    assert out == [{"role": "user", "content": ["q"]}, {"role": "user", "content": [{"r": "18C", "of": "get_weather"}]}]


def test_a_role_without_an_entry_uses_default_or_is_dropped():
    rule = {"roles": {"user": "user"}, "parts": {"text": {"template": "@text"}}}
    assert turns([{"role": "developer", "content": "d"}, {"role": "user", "content": "u"}], rule) == [
        {"role": "user", "content": ["u"]}]
    assert turns([{"role": "developer", "content": "d"}], {**rule, "roles": {"_default": "user"}}) == [
        {"role": "user", "content": ["d"]}]


def test_part_specs_may_be_conditional():
    rule = {"roles": {"user": "user"}, "parts": {"text": [
        {"when": {"has": "@part/cache_control"}, "template": {"cached": "@text"}},
        {"when": {"not_has": "@part/cache_control"}, "template": {"plain": "@text"}},
    ]}}
    out = turns([{"role": "user", "content": [{"type": "text", "text": "a", "cache_control": {}},
                                              {"type": "text", "text": "b"}]}], rule)
    assert out == [{"role": "user", "content": [{"cached": "a"}, {"plain": "b"}]}]


def test_an_unsupported_part_is_rejected_or_skipped():
    rule = {"roles": {"user": "user"}, "parts": {"text": {"template": "@text"}}}
    image = [{"role": "user", "content": [{"type": "text", "text": "look"},
                                          {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}]
    with pytest.raises(InvalidRequest, match="image url content is not supported by acme") as failure:
        turns(image, rule, ctx={"provider": "acme"})
    assert failure.value.param == "messages[0].content"
    assert turns(image, {**rule, "on_missing_part": "ignore"}) == [{"role": "user", "content": ["look"]}]
    audio = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]
    with pytest.raises(InvalidRequest, match="input audio content is not supported by this provider"):
        turns(audio, rule)


@pytest.mark.parametrize(("messages", "message", "param"), [
    ([], "messages must be a non-empty list", "messages"),
    ("hi", "messages must be a non-empty list", "messages"),
    (["hi"], "messages[0] must be an object", "messages[0]"),
    ([{"role": "robot", "content": [{"type": "text", "text": "x"}]}], "role must be one of", "messages[0].role"),
    ([{"role": "user", "content": None}], "content is required for role 'user'", "messages[0].content"),
    ([{"role": "user", "content": 5}], "must be a string, a list of content parts or null", "messages[0].content"),
    ([{"role": "user", "content": [{"text": "no type"}]}], "must be an object with a 'type'", "messages[0].content[0]"),
    ([{"role": "user", "content": [{"type": "text", "text": 1}]}], "text must be a string", "messages[0].content[0].text"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "url must be a string",
     "messages[0].content[0].image_url.url"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}],
     "http(s) URL or a base64 data URI", "messages[0].content[0].image_url.url"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"}}]}],
     "empty base64 data", "messages[0].content[0].image_url.url"),
    ([{"role": "tool", "content": "x"}], "tool_call_id is required", "messages[0].tool_call_id"),
    ([{"role": "tool", "tool_call_id": "call_9", "content": "x"}], "answers no tool call", "messages[0].tool_call_id"),
    ([{"role": "assistant", "tool_calls": {"id": "x"}}], "tool_calls must be a list", "messages[0].tool_calls"),
    ([{"role": "assistant", "tool_calls": [{"id": "c", "function": {"arguments": "{}"}}]}],
     "function.name is required", "messages[0].tool_calls[0].function.name"),
    ([{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}], "id is required",
     "messages[0].tool_calls[0].id"),
    ([{"role": "assistant", "tool_calls": [call(arguments={"city": "x"})]}], "must be a JSON string",
     "messages[0].tool_calls[0].function.arguments"),
    ([{"role": "assistant", "tool_calls": [call(arguments="{city")]}], "is not valid JSON",
     "messages[0].tool_calls[0].function.arguments"),
    ([{"role": "assistant", "tool_calls": [call(arguments="[1]")]}], "must encode a JSON object",
     "messages[0].tool_calls[0].function.arguments"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [call()]},
      {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "image_url"}]}], "image_url.url must be a string",
     "messages[2].content[0].image_url.url"),
])
def test_invalid_messages_are_rejected_with_the_offending_param(messages, message, param):
    with pytest.raises(InvalidRequest) as failure:
        turns(messages)
    assert message in failure.value.message
    assert failure.value.param == param
    assert failure.value.status == 400


def test_tool_call_arguments_may_be_blank():
    out = turns([{"role": "assistant", "content": None, "tool_calls": [call(arguments=" ")]}])
    assert out == [{"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather",
                                                      "input": {}}]}]


def test_a_refusal_part_is_sent_back_as_text():
    out = turns([{"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]}])
    assert out == [{"role": "assistant", "content": [{"type": "text", "text": "I can't."}]}]


# ------------------------------------------------------------------------------- collect_text
def collect(rule: dict, messages, ctx: dict | None = None):
    return compile_collect_text(rule)(messages, {"messages": messages}, {} if ctx is None else ctx)


def test_collect_text_joins_system_and_developer_text():
    messages = [{"role": "system", "content": "A"}, {"role": "user", "content": "u"},
                {"role": "developer", "content": [{"type": "text", "text": "B"}, {"type": "text", "text": "C"}]},
                {"role": "system", "content": ""}]
    assert collect({}, messages) == "A\n\nBC"
    assert collect({"sep": " "}, messages) == "A BC"
    assert collect({"roles": ["user"]}, messages) == "u"


def test_collect_text_renders_its_template_with_the_text():
    rule = {"template": {"parts": [{"text": "@text"}]}}
    assert collect(rule, [{"role": "system", "content": "Be brief."}]) == {"parts": [{"text": "Be brief."}]}


def test_collect_text_is_missing_without_text():
    assert collect({}, [{"role": "user", "content": "u"}]) is MISSING
    assert collect({}, "not a list") is MISSING
    assert collect({}, [{"role": "system", "content": None}]) is MISSING


def test_collect_text_keeps_parts_apart_when_one_is_marked():
    rule = {"keep_parts": {"when": {"has": "@part/cache_control"},
                           "template": {"type": "text", "text": "@text", "cache_control": "@part/cache_control"}}}
    marked = [{"role": "system", "content": "Intro."},
              {"role": "system", "content": [{"type": "text", "text": "Long doc", "cache_control": {"type": "ephemeral"}}]}]
    assert collect(rule, marked) == [
        {"type": "text", "text": "Intro."},
        {"type": "text", "text": "Long doc", "cache_control": {"type": "ephemeral"}},
    ]
    plain = [{"role": "system", "content": "Intro."}, {"role": "system", "content": [{"type": "text", "text": "Doc"}]}]
    assert collect(rule, plain) == "Intro.\n\nDoc"


def test_collect_text_rejects_system_parts_that_are_not_text():
    with pytest.raises(InvalidRequest, match="must be a text part") as failure:
        collect({}, [{"role": "user", "content": "u"}, {"role": "system", "content": [{"type": "image_url"}]}])
    assert failure.value.param == "messages[1].content[0]"
    with pytest.raises(InvalidRequest, match="must be a string or a list of content parts"):
        collect({}, [{"role": "system", "content": 42}])
