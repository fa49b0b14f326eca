"""engine/mapping/ops.py: the closed catalogue of operations, each compiled from its rule and applied
to a picked value (`step(value, src, ctx)`)."""

from __future__ import annotations

import json

import pytest

from engine.errors import InvalidRequest
from engine.mapping import OPS
from engine.mapping.ops import compile_op
from engine.pointer import MISSING


def apply(rule: dict, value, src=None, ctx: dict | None = None):
    return compile_op(rule)(value, src, {} if ctx is None else ctx)


def test_the_catalogue_is_the_documented_one():
    assert set(OPS) == {
        "table", "each", "sum", "collect_text", "messages_to_turns", "parts_to_message", "json_encode",
        "json_decode", "as_list", "clamp", "object_schema", "omit_keys", "concat", "bucket",
        "turns_to_messages", "message_to_parts", "hash",
    }


def test_an_unknown_op_is_rejected_by_name():
    with pytest.raises((KeyError, ValueError), match="frobnicate"):
        compile_op({"op": "frobnicate"})


# ------------------------------------------------------------------------------------ table
TOOL_CHOICE = {"op": "table", "table": {
    "auto": {"type": "auto"},
    "required": {"type": "any"},
    "none": "_omit",
    "function": {"type": "tool", "name": "/function/name"},
    "_default": "_omit",
}}


@pytest.mark.parametrize(("value", "expected"), [
    ("auto", {"type": "auto"}),
    ("required", {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
    ("none", MISSING),  # _omit
    ("other", MISSING),  # the _default is _omit
    ({"no": "type"}, MISSING),
    (["unhashable"], MISSING),
])
def test_table_looks_a_value_up_and_renders_the_entry_against_it(value, expected):
    assert apply(TOOL_CHOICE, value) == expected


def test_table_falls_back_to_its_default_and_is_missing_without_one():
    with_default = {"op": "table", "table": {"STOP": "stop", "_default": "content_filter"}}
    assert apply(with_default, "STOP") == "stop"
    assert apply(with_default, "SAFETY") == "content_filter"
    assert apply(with_default, ["x"]) == "content_filter"
    assert apply({"op": "table", "table": {"a": 1}}, "b") is MISSING


def test_table_entries_are_fresh_each_time():
    first = apply(TOOL_CHOICE, "auto")
    first["type"] = "changed"
    assert apply(TOOL_CHOICE, "auto") == {"type": "auto"}


# ------------------------------------------------------------------------------------- each
def test_each_renders_every_item_and_drops_the_missing_ones():
    rule = {"op": "each", "template": {"name": "/function/name", "description": "/function/description"}}
    tools = [{"function": {"name": "a", "description": "A"}}, {"function": {"name": "b"}}, {"other": 1}]
    assert apply(rule, tools) == [{"name": "a", "description": "A"}, {"name": "b"}]


def test_each_keeps_only_items_meeting_when_item():
    rule = {"op": "each", "when_item": {"eq": ["/type", "function"]}, "template": "/function/name"}
    assert apply(rule, [{"type": "function", "function": {"name": "f"}}, {"type": "web_search"}]) == ["f"]
    assert apply(rule, [{"type": "web_search"}]) is MISSING


def test_each_without_template_copies_items_and_needs_a_list():
    assert apply({"op": "each"}, [1, None, 2]) == [1, 2]  # a null item is missing
    assert apply({"op": "each"}, "not a list") is MISSING
    assert apply({"op": "each"}, []) is MISSING


def test_each_wraps_the_list_as_gemini_declares_its_tools():
    rule = {"op": "each", "template": {"name": "/function/name"}, "wrap": [{"functionDeclarations": "@items"}]}
    ctx: dict = {}
    assert apply(rule, [{"function": {"name": "f"}}], ctx=ctx) == [{"functionDeclarations": [{"name": "f"}]}]
    assert "items" not in ctx  # @items lives only while wrapping


def test_each_with_map_runs_a_rule_list_per_item():
    rule = {"op": "each", "map": [{"to": "/embedding", "from": "/values"}, {"to": "/model", "from": "@model"}]}
    assert apply(rule, [{"values": [0.1]}, {"values": [0.2]}], ctx={"model": "m"}) == [
        {"embedding": [0.1], "model": "m"}, {"embedding": [0.2], "model": "m"}]


def test_each_renders_items_with_the_context():
    # As gemini.yaml's embeddings request: one request per input, with `@model`.
    rule = {"op": "each", "template": {"model": {"op": "concat", "pieces": ["models/", "@model"]},
                                       "content": {"parts": [{"text": "@value"}]}}}
    assert apply(rule, ["a", "b"], ctx={"model": "gemini-embedding-001"}) == [
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}},
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]}},
    ]


# -------------------------------------------------------------------------------------- sum
USAGE = {"input_tokens": 10, "cache_read_input_tokens": 5, "cache_creation_input_tokens": None, "ratio": 0.5}


@pytest.mark.parametrize(("rule", "expected"), [
    ({"of": ["/input_tokens", "/cache_read_input_tokens", "/cache_creation_input_tokens"]}, 15),
    ({"of": ["/input_tokens", "/ratio"]}, 10.5),
    ({"of": ["/input_tokens"], "minus": ["/cache_read_input_tokens"]}, 5),
    ({"of": ["/cache_read_input_tokens"], "minus": ["/input_tokens"]}, 0),  # never below zero
    ({"of": ["/input_tokens"], "minus": ["/absent"]}, 10),
    ({"of": ["/absent", "/cache_creation_input_tokens"]}, MISSING),  # no number at all
])
def test_sum_adds_numbers_at_pointers(rule, expected):
    assert apply({"op": "sum", **rule}, USAGE) == expected


def test_sum_ignores_values_that_are_not_numbers():
    assert apply({"op": "sum", "of": ["/a", "/b"]}, {"a": "12", "b": 3}) == 3
    assert apply({"op": "sum", "of": ["/a"]}, "not an object") is MISSING


# ----------------------------------------------------------------------------- json encode
def test_json_encode_is_compact_and_keeps_non_ascii():
    out = apply({"op": "json_encode"}, {"city": "Zürich", "n": [1, 2]})
    assert out == '{"city":"Zürich","n":[1,2]}'
    assert json.loads(out) == {"city": "Zürich", "n": [1, 2]}


@pytest.mark.parametrize(("rule", "value", "expected"), [
    ({}, '{"a": 1}', {"a": 1}),
    ({}, "[1, 2]", [1, 2]),
    ({}, {"already": "decoded"}, {"already": "decoded"}),
    ({}, 5, 5),
    ({"wrap": "result"}, '{"a": 1}', {"a": 1}),
    ({"wrap": "result"}, "[1]", {"result": [1]}),
    ({"wrap": "result"}, "42", {"result": 42}),
    ({"wrap": "result"}, "sunny and warm", {"result": "sunny and warm"}),
    ({"wrap": "result"}, 7, {"result": 7}),
    ({"wrap": "result"}, {"a": 1}, {"a": 1}),
])
def test_json_decode(rule, value, expected):
    assert apply({"op": "json_decode", **rule}, value) == expected


def test_json_decode_without_wrap_rejects_text_that_is_not_json():
    with pytest.raises(InvalidRequest, match="expected a JSON string, got 'not json") as failure:
        apply({"op": "json_decode"}, "not json" + "x" * 200)
    assert failure.value.status == 400
    assert len(failure.value.message) < 120  # the quoted text is cut short


# ------------------------------------------------------------------------------- as_list
@pytest.mark.parametrize(("rule", "value", "expected"), [
    ({}, "END", ["END"]),
    ({}, ["a", "b"], ["a", "b"]),
    ({}, [], MISSING),
    ({"drop_blank": True}, ["\n", " ", "STOP"], ["STOP"]),
    ({"drop_blank": True}, " ", MISSING),
    ({"drop_blank": True}, [1, ""], [1]),
    ({}, [" "], [" "]),
])
def test_as_list(rule, value, expected):
    assert apply({"op": "as_list", **rule}, value) == expected


# --------------------------------------------------------------------------------- clamp
@pytest.mark.parametrize(("value", "expected"), [(1.5, 1), (-0.1, 0), (0.7, 0.7), (True, True), ("hot", "hot")])
def test_clamp_bounds_numbers_and_passes_anything_else(value, expected):
    out = apply({"op": "clamp", "lo": 0, "hi": 1}, value)
    assert out == expected and type(out) is type(expected)


def test_clamp_with_one_bound():
    assert apply({"op": "clamp", "hi": 2}, -5) == -5
    assert apply({"op": "clamp", "lo": 1}, 100) == 100


# -------------------------------------------------------------------------- object_schema
@pytest.mark.parametrize(("value", "expected"), [
    (MISSING, {"type": "object", "properties": {}}),
    ({}, {"type": "object", "properties": {}}),
    ("junk", {"type": "object", "properties": {}}),
    ({"properties": {"a": {"type": "string"}}}, {"type": "object", "properties": {"a": {"type": "string"}}}),
    ({"type": "object", "required": ["a"]}, {"type": "object", "required": ["a"]}),
])
def test_object_schema(value, expected):
    assert apply({"op": "object_schema"}, value) == expected


# ------------------------------------------------------------------------------ omit_keys
def test_omit_keys_leaves_its_input_alone():
    body = {"id": "x", "usage": {"n": 1}, "choices": []}
    out = apply({"op": "omit_keys", "keys": ["usage", "absent"]}, body)
    assert out == {"id": "x", "choices": []}
    assert "usage" in body
    assert apply({"op": "omit_keys", "keys": ["a"]}, ["a"]) == ["a"]


# -------------------------------------------------------------------------------- concat
def test_concat_joins_pieces_and_is_missing_when_one_is():
    rule = {"op": "concat", "pieces": ["data:", "/source/media_type", ";base64,", "/source/data"]}
    image = {"source": {"media_type": "image/png", "data": "iVBOR"}}
    assert apply(rule, image) == "data:image/png;base64,iVBOR"
    assert apply(rule, {"source": {"media_type": "image/png"}}) is MISSING
    assert apply({"op": "concat", "pieces": ["n=", "/n", "@suffix"]}, {"n": 3}, ctx={"suffix": "!"}) == "n=3!"


# -------------------------------------------------------------------------------- bucket
BUDGETS = {"op": "bucket", "ranges": [[1024, "low"], [2048, "medium"]], "above": "high"}


@pytest.mark.parametrize(("value", "expected"), [
    (0, "low"), (1024, "low"), (1025, "medium"), (2048.0, "medium"), (2049, "high"),
    ("1024", MISSING), (True, MISSING), (None, MISSING),
])
def test_bucket_labels_a_number_by_the_first_range_it_fits(value, expected):
    assert apply(BUDGETS, value) == expected


def test_bucket_without_above_is_missing_past_the_last_range():
    assert apply({"op": "bucket", "ranges": [[10, "small"]]}, 11) is MISSING


# ------------------------------------------------------------ the message ops are dispatched
def test_the_message_ops_compile_through_the_catalogue():
    turns = apply({"op": "messages_to_turns", "roles": {"user": "user"}, "parts": {"text": {"template": "@text"}}},
                  [{"role": "user", "content": "hi"}])
    assert turns == [{"role": "user", "content": ["hi"]}]
    system = apply({"op": "collect_text"}, [{"role": "system", "content": "be brief"}])
    assert system == "be brief"
    message = apply({"op": "parts_to_message", "classify": {"by": "/type", "cases": {"text": "text"}},
                     "fields": {"text": {"text": "/text"}}}, [{"type": "text", "text": "hello"}])
    assert message["content"] == "hello"
    canonical = apply({"op": "turns_to_messages", "roles": {"user": "user"}, "classify": {"by": "/type", "cases": {}}},
                      [{"role": "user", "content": "hi"}])
    assert canonical == [{"role": "user", "content": "hi"}]
    parts = apply({"op": "message_to_parts", "blocks": {"text": {"template": {"type": "text", "text": "@text"}}}},
                  {"role": "assistant", "content": "hello"})
    assert parts == [{"type": "text", "text": "hello"}]
