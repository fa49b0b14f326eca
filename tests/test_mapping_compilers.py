"""The client-format compilers piece by piece: `turns_to_messages` (system message, the per-part loop,
carried ids) and `parts_to_message` (tool calls and the provider data they carry), on small rules.
The shipped ingress and provider specs exercise them end to end in test_ingress_*.py."""

from __future__ import annotations

from typing import Any

import pytest

from engine.errors import InvalidRequest
from engine.mapping.client import compile_turns_to_messages
from engine.mapping.message import compile_parts_to_message
from engine.mapping.turns import split_call_id

CTX: dict[str, Any] = {}

TURNS: dict[str, Any] = {
    "roles": {"user": "user", "assistant": "assistant"},
    "classify": {"by": "/type", "cases": {"text": "text", "think": "reasoning", "call": "tool_call",
                                          "result": "tool_result", "skip": "dropped", "_default": "unsupported"}},
    "blocks": {
        "text": {"template": {"type": "text", "text": "/text"}},
        "reasoning": {"mode": "join", "into": "reasoning_content", "template": "/thinking"},
        "tool_call": {"mode": "tool_calls", "template": {"id": "/id", "type": "function",
                                                         "function": {"name": "/name", "arguments": "{}"}}},
        "tool_result": {"mode": "message", "template": {"role": "tool", "tool_call_id": "/for", "content": "/out"}},
        "dropped": "_drop",
    },
}
CARRY = {"from": "reasoning", "to": "tool_call", "template": {"sig": "/sig"}, "id": "/id", "sep": "~",
         "refs": {"tool_result": "/tool_call_id"}}


def turns(rule: dict[str, Any], value: Any, src: Any = None) -> Any:
    return compile_turns_to_messages(rule)(value, src if src is not None else {}, CTX)


# -- the system message ---------------------------------------------------------------------------


def test_the_system_message_comes_first_and_blank_systems_add_none() -> None:
    rule = {**TURNS, "system_from": "/system"}
    hello = [{"role": "user", "content": "hi"}]
    assert turns(rule, hello, {"system": "Be brief."})[0] == {"role": "system", "content": "Be brief."}
    for blank in ({}, {"system": ""}, {"system": []}):
        assert turns(rule, hello, blank) == hello
    with pytest.raises(InvalidRequest, match="system must be a string"):
        turns(rule, hello, {"system": 3})
    assert turns(TURNS, hello, {"system": "ignored without system_from"}) == hello


# -- the per-part loop ----------------------------------------------------------------------------


def test_parts_go_to_content_join_tool_calls_or_a_message_before_the_turn() -> None:
    out = turns(TURNS, [{"role": "assistant", "content": [
        {"type": "think", "thinking": "a"}, {"type": "think", "thinking": "b"}, {"type": "text", "text": "t"},
        {"type": "call", "id": "c1", "name": "f"}, {"type": "skip"},
    ]}, {"role": "user", "content": [{"type": "result", "for": "c1", "out": "ok"}, {"type": "text", "text": "next"}]}])
    assert out == [
        {"role": "assistant", "reasoning_content": "ab", "content": [{"type": "text", "text": "t"}],
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "next"}]},
    ]


def turns_of(*parts: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(parts)}]


def test_parts_of_no_block_are_refused_unless_the_rule_says_otherwise() -> None:
    with pytest.raises(InvalidRequest, match=r"messages\[0\]\.content\[1\]: content of type 'video'") as caught:
        turns(TURNS, turns_of({"type": "text", "text": "x"}, {"type": "video"}))
    assert caught.value.param == "messages[0].content[1]"
    ignoring = {**TURNS, "classify": {"by": "/type", "cases": {"text": "text", "_default": "_ignore"}}}
    # A part the classifier calls `_ignore` is dropped, whatever `on_missing_part` says.
    assert turns(ignoring, turns_of({"type": "video"}, {"type": "text", "text": "x"})) == [
        {"role": "user", "content": [{"type": "text", "text": "x"}]}]
    lenient = {**ignoring, "on_missing_part": "skip"}
    assert turns(lenient, turns_of({"type": "video"}, {"type": "text", "text": "x"})) == [
        {"role": "user", "content": [{"type": "text", "text": "x"}]}]
    with pytest.raises(InvalidRequest, match=r"messages\[0\]\.content\[0\] must be an object"):
        turns(TURNS, turns_of("text"))


# -- carried ids ----------------------------------------------------------------------------------


def test_a_carry_rides_in_the_next_tool_call_id_and_references_follow() -> None:
    rule = {**TURNS, "carry": CARRY}
    out = turns(rule, [
        {"role": "assistant", "content": [{"type": "think", "thinking": "t", "sig": "S1"},
                                          {"type": "call", "id": "c1", "name": "f"},
                                          {"type": "call", "id": "c2", "name": "g"}]},
        {"role": "user", "content": [{"type": "result", "for": "c1", "out": "1"},
                                     {"type": "result", "for": "c2", "out": "2"}]},
    ])
    first, second = out[0]["tool_calls"]
    assert split_call_id(first["id"], "~") == ("c1", {"sig": "S1"})
    assert second["id"] == "c2"  # only the first call after the part carries it
    assert [m["tool_call_id"] for m in out[1:3]] == [first["id"], "c2"]


def test_a_carry_waits_for_a_tool_call_with_an_id() -> None:
    rule = {**TURNS, "carry": CARRY}
    out = turns(rule, [{"role": "assistant", "content": [
        {"type": "think", "thinking": "t", "sig": "S1"}, {"type": "call", "name": "no id"},
        {"type": "call", "id": "c1", "name": "f"},
    ]}])
    assert [split_call_id(c.get("id", ""), "~")[1] for c in out[0]["tool_calls"]] == [{}, {"sig": "S1"}]


# -- parts_to_message -----------------------------------------------------------------------------

PARTS: dict[str, Any] = {
    "classify": {"by": "/type", "cases": {"text": "text", "think": "reasoning", "use": "tool_call"}},
    "fields": {"text": {"text": "/text"}, "reasoning": {"text": "/thinking"},
               "tool_call": {"id": "/id", "name": "/name", "args": "/input", "arguments": "/raw"}},
    "id": {"carry_sep": "~", "carry": {"kind": "/kind"},
           "carry_preceding": {"signature": {"kind": "reasoning", "from": "/sig"}}},
}


def message(rule: dict[str, Any], parts: list[Any]) -> Any:
    return compile_parts_to_message(rule)(parts, {}, {"new_call_id": lambda prefix: f"{prefix}new"})


def test_tool_calls_carry_their_own_data_and_the_reasoning_before_the_first_of_them() -> None:
    out = message(PARTS, [
        {"type": "think", "thinking": "hm", "sig": "S"},
        {"type": "use", "id": "u1", "name": "f", "input": {"a": 1}, "kind": "k"},
        {"type": "use", "name": "g"},
    ])
    assert out["reasoning_content"] == "hm" and out["content"] is None
    first, second = out["tool_calls"]
    assert split_call_id(first["id"], "~") == ("u1", {"kind": "k", "signature": "S"})
    assert first["function"] == {"name": "f", "arguments": '{"a": 1}'}
    assert second["id"] == "call_new" and second["function"]["arguments"] == "{}"


def test_string_arguments_and_the_content_tool() -> None:
    rule = {**PARTS, "arguments_encoding": "string", "content_tool": "answer", "id": {"synth_prefix": "t_"}}
    out = message(rule, [{"type": "use", "name": "answer", "raw": '{"x": 1}'},
                         {"type": "use", "name": "f", "raw": 7}])
    assert out["content"] == '{"x": 1}'
    (call,) = out["tool_calls"]
    assert call["id"] == "t_new" and call["function"]["arguments"] == "{}"
