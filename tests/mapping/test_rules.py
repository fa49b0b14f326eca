"""engine/mapping/rules.py: one rule's value (`compile_rule_value`) and rule lists (`compile_rules`)."""

from __future__ import annotations

import pytest

from engine.errors import InvalidRequest
from engine.mapping import RULE_KEYS, compile_rule_value, compile_rules
from engine.mapping.rules import interpret_rules
from engine.pointer import MISSING


def test_rule_keys_are_the_documented_common_keys():
    assert {"to", "from", "default", "const", "template", "when", "op"} <= RULE_KEYS
    assert "table" not in RULE_KEYS  # an op's own parameters are not common keys


# ------------------------------------------------------------------------------- one value
def test_const_wins_over_from_and_is_a_fresh_copy():
    value_of = compile_rule_value({"const": {"include_usage": True}, "from": "/a"})
    first = value_of({"a": 1}, {})
    assert first == {"include_usage": True}
    first["include_usage"] = False
    assert value_of({"a": 1}, {}) == {"include_usage": True}


def test_without_from_or_const_the_value_is_the_whole_source():
    assert compile_rule_value({})({"a": 1}, {}) == {"a": 1}
    assert compile_rule_value({"template": {"n": "/a"}})({"a": 1}, {}) == {"n": 1}


def test_default_fills_in_a_missing_value_only():
    value_of = compile_rule_value({"from": ["/max_completion_tokens", "/max_tokens"], "default": 4096})
    assert value_of({"max_tokens": 100}, {}) == 100
    assert value_of({"max_completion_tokens": 0}, {}) == 0
    assert value_of({"max_tokens": None}, {}) == 4096
    defaults = compile_rule_value({"from": "/absent", "default": {"k": []}})
    defaults({}, {})["k"].append(1)
    assert defaults({}, {}) == {"k": []}  # a default object is copied too


def test_when_is_checked_on_the_source_not_on_the_picked_value():
    value_of = compile_rule_value({"from": "/temperature", "when": {"not_has": "@out/thinking"}})
    assert value_of({"temperature": 0.5}, {"out": {}}) == 0.5
    assert value_of({"temperature": 0.5}, {"out": {"thinking": {}}}) is MISSING
    assert value_of({}, {"out": {}}) is MISSING
    with_default = compile_rule_value({"from": "/absent", "default": 1, "when": {"eq": ["@stream", True]}})
    assert with_default({}, {"stream": True}) == 1
    assert with_default({}, {"stream": False}) is MISSING


def test_the_template_renders_before_the_op_applies():
    value_of = compile_rule_value({"from": "/tool", "template": {"name": "/n", "x": "@model"}, "op": "json_encode"})
    assert value_of({"tool": {"n": "f"}}, {"model": "m"}) == '{"name":"f","x":"m"}'


def test_an_op_is_not_applied_to_a_missing_rendering():
    value_of = compile_rule_value({"from": "/obj", "template": "/absent", "op": "json_encode"})
    assert value_of({"obj": {"k": 1}}, {}) is MISSING


def test_each_reads_template_as_its_per_item_parameter():
    value_of = compile_rule_value({"from": "/stop", "op": "each", "template": {"s": "@value"}})
    assert value_of({"stop": ["a", "b"]}, {}) == [{"s": "a"}, {"s": "b"}]


def test_errors_from_ops_propagate():
    value_of = compile_rule_value({"from": "/args", "op": "json_decode"})
    with pytest.raises(InvalidRequest, match="expected a JSON string"):
        value_of({"args": "{not json"}, {})


# ----------------------------------------------------------------------------- rule lists
def test_rules_write_at_their_pointers_creating_objects_and_lists():
    run = compile_rules([
        {"to": "/choices/0/message/content", "from": "/text"},
        {"to": "/choices/0/finish_reason", "from": "/reason"},
        {"to": "/generationConfig/stopSequences", "from": "/stop", "op": "as_list"},
        {"to": "/model", "from": "@model"},
    ])
    assert run({"text": "hi", "reason": "stop", "stop": "END"}, {"model": "m"}) == {
        "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
        "generationConfig": {"stopSequences": ["END"]},
        "model": "m",
    }


def test_a_missing_value_writes_nothing():
    run = compile_rules([{"to": "/a", "from": "/absent"}, {"to": "/b/c", "from": "/none"}])
    assert run({"none": None}, {}) == {}


def test_to_root_merges_an_object_and_ignores_anything_else():
    run = compile_rules([
        {"to": "/keep", "const": 1},
        {"to": "", "from": "/usage"},
        {"to": "", "from": "/scalar"},
    ])
    assert run({"usage": {"prompt_tokens": 3, "keep": 2}, "scalar": 5}, {}) == {"keep": 2, "prompt_tokens": 3}


def test_a_later_rule_overwrites_an_earlier_one():
    run = compile_rules([{"to": "/x", "const": 1}, {"to": "/x", "from": "/y"}])
    assert run({"y": 2}, {}) == {"x": 2}
    assert run({}, {}) == {"x": 1}


def test_max_tokens_follows_the_thinking_decision_as_in_the_anthropic_spec():
    run = compile_rules([
        {"to": "/thinking", "from": "/reasoning_effort", "op": "table",
         "table": {"low": {"type": "enabled", "budget_tokens": 1024}, "_default": "_omit"}},
        {"to": "/max_tokens", "from": ["/max_completion_tokens", "/max_tokens"], "default": 8192,
         "when": {"has": "@out/thinking"}},
        {"to": "/max_tokens", "from": ["/max_completion_tokens", "/max_tokens"], "default": 4096,
         "when": {"not_has": "@out/thinking"}},
        {"to": "/temperature", "from": "/temperature", "op": "clamp", "lo": 0, "hi": 1,
         "when": {"not_has": "@out/thinking"}},
    ])
    assert run({"reasoning_effort": "low", "temperature": 1.5}, {}) == {
        "thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 8192}
    assert run({"reasoning_effort": "xhigh", "temperature": 1.5}, {}) == {"max_tokens": 4096, "temperature": 1}
    assert run({"max_tokens": 10}, {}) == {"max_tokens": 10}


def test_the_context_out_is_the_document_being_written_and_is_restored_afterwards():
    run = compile_rules([{"to": "/a", "const": 1}, {"to": "/b", "const": 2, "when": {"eq": ["@out/a", 1]}}])
    ctx: dict = {"model": "m"}
    assert run({}, ctx) == {"a": 1, "b": 2}
    assert "out" not in ctx
    outer = {"outer": True}
    ctx = {"out": outer}
    run({}, ctx)
    assert ctx["out"] is outer


def test_the_context_is_restored_when_a_rule_fails():
    run = compile_rules([{"to": "/a", "const": 1}, {"to": "/x", "from": "/args", "op": "json_decode"}])
    ctx: dict = {}
    with pytest.raises(InvalidRequest):
        run({"args": "nope"}, ctx)
    assert "out" not in ctx


def test_each_run_builds_a_new_document():
    run = compile_rules([{"to": "/options", "const": {"include_usage": True}}])
    first = run({}, {})
    first["options"]["include_usage"] = False
    assert run({}, {}) == {"options": {"include_usage": True}}


def test_sources_that_are_not_objects_are_mapped_too():
    run = compile_rules([{"to": "/first", "from": "/0"}, {"to": "/all", "from": "@value"}, {"to": "/c", "const": "k"}])
    assert run(["a", "b"], {}) == {"first": "a", "all": ["a", "b"], "c": "k"}
    assert run("text", {}) == {"all": "text", "c": "k"}
    assert run(None, {}) == {"c": "k"}


def test_an_empty_rule_list_maps_to_an_empty_document():
    assert compile_rules([])({"a": 1}, {}) == {}


def test_compiled_and_interpreted_rule_lists_agree_on_a_realistic_request_map():
    rules = [
        {"to": "/model", "from": "@model"},
        {"to": "/stream", "const": True, "when": {"eq": ["@stream", True]}},
        {"to": "/stop_sequences", "from": "/stop", "op": "as_list", "drop_blank": True},
        {"to": "/metadata/user_id", "from": "/user"},
        {"to": "/tools", "from": "/tools", "op": "each", "when_item": {"eq": ["/type", "function"]},
         "template": {"name": "/function/name",
                      "input_schema": {"op": "object_schema", "from": "/function/parameters", "default": {}}}},
        {"to": "/tool_choice", "from": "/tool_choice", "op": "table", "when": {"has": "/tools"},
         "table": {"auto": {"type": "auto"}, "required": {"type": "any"}, "_default": "_omit"}},
        {"to": "/tool_choice/disable_parallel_tool_use", "const": True,
         "when": [{"eq": ["/parallel_tool_calls", False]}, {"has": "@out/tool_choice"}]},
    ]
    requests = [
        {},
        {"stop": [" ", "END"], "user": "u1"},
        {"tools": [{"type": "function", "function": {"name": "f"}}, {"type": "web"}], "tool_choice": "required",
         "parallel_tool_calls": False},
        {"tools": "not a list", "tool_choice": "auto", "parallel_tool_calls": 0},
    ]
    for request in requests:
        for stream in (True, False):
            assert compile_rules(rules)(request, {"model": "m", "stream": stream}) == \
                interpret_rules(rules)(request, {"model": "m", "stream": stream}), (request, stream)
    out = compile_rules(rules)(requests[2], {"model": "m", "stream": False})
    assert out["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


def test_a_malformed_pointer_is_rejected_when_compiling():
    with pytest.raises(ValueError, match="must start with '/'"):
        compile_rules([{"to": "x", "const": 1}])
    with pytest.raises(ValueError, match="must start with '/'"):
        compile_rule_value({"from": "x"})
