"""engine/mapping/templates.py: sources, `from` lists, templates and `when` conditions."""

from __future__ import annotations

import pytest

from engine.mapping import (
    compile_condition,
    compile_first_of,
    compile_source,
    compile_template,
)
from engine.mapping.templates import fresh
from engine.pointer import MISSING

DOC = {"a": 1, "zero": 0, "no": False, "empty": "", "none": None, "x/y": "slash", "t~": "tilde",
       "nested": {"list": [10, {"deep": "d"}]}}
CTX = {"model": "m-1", "stream": True, "info": {"limit": 5}, "null": None, "text": "hi", "scalar": 3}


# ---------------------------------------------------------------------------------- sources
@pytest.mark.parametrize(("source", "expected"), [
    ("/zero", 0),  # falsy values are present; only null and absence are missing
    ("/no", False),
    ("/empty", ""),
    ("/x~1y", "slash"),  # RFC 6901 escapes
    ("/t~0", "tilde"),
    ("/nested/list/0", 10),
    ("/nested/list/1/deep", "d"),
    ("@text", "hi"),
    ("@info/limit", 5),
])
def test_a_source_reads_the_document_or_the_context(source, expected):
    assert compile_source(source)(DOC, CTX) == expected


@pytest.mark.parametrize("source", ["/none", "/absent", "/nested/list/2", "/nested/list/1/absent", "/a/b",
                                    "@null", "@absent", "@info/absent", "@scalar/x", "@null/x"])
def test_an_absent_or_null_source_is_missing(source):
    assert compile_source(source)(DOC, CTX) is MISSING


def test_value_is_the_rendered_value_itself_and_null_is_missing():
    value = compile_source("@value")
    assert value({"k": 1}, {}) == {"k": 1}
    assert value(0, {}) == 0
    assert value(None, {}) is MISSING


def test_a_pointer_source_reads_into_lists_as_well_as_objects():
    assert compile_source("/1")(["a", "b"], {}) == "b"
    assert compile_source("/1/k")([{}, {"k": "v"}], {}) == "v"
    assert compile_source("/5")(["a"], {}) is MISSING


def test_a_source_that_is_not_a_pointer_is_rejected_at_compile_time():
    with pytest.raises(ValueError, match="must start with '/'"):
        compile_source("literal")


def test_first_of_takes_the_first_present_value():
    first = compile_first_of(["/none", "/absent", "/zero", "/a"])
    assert first(DOC, CTX) == 0  # 0 is present
    assert compile_first_of(["/absent", "@model"])(DOC, CTX) == "m-1"
    assert compile_first_of(["/absent", "@null"])(DOC, CTX) is MISSING
    assert compile_first_of("/a")(DOC, CTX) == 1  # a single string is one source


# -------------------------------------------------------------------------------- templates
def test_a_constant_template_is_a_new_copy_every_time():
    render = compile_template({"type": "object", "properties": {}, "required": ["a"]})
    first = render(DOC, CTX)
    first["properties"]["x"] = 1
    first["required"].append("b")
    assert render(DOC, CTX) == {"type": "object", "properties": {}, "required": ["a"]}


@pytest.mark.parametrize("constant", ["text", 3, 2.5, True, None, [], {}])
def test_scalar_and_empty_constants_render_as_themselves(constant):
    assert compile_template(constant)(DOC, CTX) == constant


def test_const_writes_a_literal_that_looks_like_a_source():
    assert compile_template({"const": "/not/a/pointer"})(DOC, CTX) == "/not/a/pointer"
    assert compile_template({"k": {"const": "@model"}, "m": "@model"})(DOC, CTX) == {"k": "@model", "m": "m-1"}


def test_an_object_template_drops_missing_keys_and_keeps_its_key_order():
    render = compile_template({"type": "tool_use", "id": "/absent", "name": "@model", "input": "/nested/list/1"})
    out = render(DOC, CTX)
    assert out == {"type": "tool_use", "name": "m-1", "input": {"deep": "d"}}
    assert list(out) == ["type", "name", "input"]


def test_an_object_template_with_nothing_present_is_missing_unless_it_has_constants():
    assert compile_template({"a": "/absent", "b": "@absent"})(DOC, CTX) is MISSING
    assert compile_template({"type": "text", "text": "@absent"})(DOC, CTX) == {"type": "text"}


def test_nested_objects_that_render_empty_are_dropped():
    render = compile_template({"source": {"url": "/absent"}, "kind": "/a"})
    assert render(DOC, CTX) == {"kind": 1}


def test_a_list_template_drops_missing_items_and_is_missing_when_empty():
    assert compile_template(["/a", "/absent", "@model"])(DOC, CTX) == [1, "m-1"]
    assert compile_template(["/absent", "@absent"])(DOC, CTX) is MISSING
    assert compile_template([{"parts": [{"text": "@text"}]}])(DOC, CTX) == [{"parts": [{"text": "hi"}]}]


def test_a_template_renders_against_the_value_it_is_given():
    render = compile_template({"name": "/function/name", "model": "@model"})
    assert render({"function": {"name": "get_weather"}}, CTX) == {"name": "get_weather", "model": "m-1"}
    assert render("not an object", CTX) == {"model": "m-1"}


def test_an_inline_rule_in_a_template_runs_its_op():
    # As gemini.yaml renders a tool result: `response: {op: json_decode, from: "@text", wrap: result}`.
    render = compile_template({"name": "@name", "response": {"op": "json_decode", "from": "@text", "wrap": "result"}})
    assert render({}, {"name": "f", "text": '{"temp": 21}'}) == {"name": "f", "response": {"temp": 21}}
    assert render({}, {"name": "f", "text": "sunny"}) == {"name": "f", "response": {"result": "sunny"}}
    concat = compile_template({"op": "concat", "pieces": ["models/", "@model"]})
    assert concat({}, CTX) == "models/m-1"


def test_fresh_copies_containers_deeply_and_keeps_scalars():
    original = {"a": [1, {"b": 2}], "c": "s"}
    copy = fresh(original)
    assert copy == original
    copy["a"][1]["b"] = 3
    assert original["a"][1]["b"] == 2
    assert fresh("s") == "s" and fresh(None) is None


# ------------------------------------------------------------------------------- conditions
@pytest.mark.parametrize(("cond", "src", "expected"), [
    ({"eq": ["/v", 1]}, {"v": True}, False),  # JSON true is not 1, either way round
    ({"eq": ["/v", True]}, {"v": 1}, False),
    ({"eq": ["/v", 1]}, {"v": 1.0}, True),  # but 1 and 1.0 are the same number
    ({"ne": ["/v", False]}, {"v": 0}, True),
    ({"in": ["/v", [1, 2]]}, {"v": True}, False),
    ({"in": ["/v", [True]]}, {"v": True}, True),
    ({"not_in": ["/v", [0]]}, {"v": False}, True),
    ({"eq": ["/v", {"k": 1}]}, {"v": {"k": 1}}, True),  # structural equality of objects
    ({"eq": ["/v", [1, 2]]}, {"v": [1, 2]}, True),
    ({"has": "@value"}, {"v": 1}, True),
    ({"eq": ["/v", "x"]}, "not an object", False),
    ({"ne": ["/v", "x"]}, None, True),
])
def test_comparisons_follow_json_equality(cond, src, expected):
    assert compile_condition(cond)(src, CTX) is expected


def test_conditions_read_the_context():
    assert compile_condition({"eq": ["@stream", True]})({}, CTX) is True
    assert compile_condition({"in": ["@info/limit", [4, 5]]})({}, CTX) is True
    assert compile_condition({"has": "@out/thinking"})({}, {"out": {"thinking": {}}}) is True
    assert compile_condition({"has": "@out/thinking"})({}, {"out": {}}) is False


def test_several_keys_and_a_list_both_mean_all_of_them():
    both = compile_condition({"has": "/a", "eq": ["/zero", 0]})
    assert both(DOC, CTX) is True
    assert both({"a": 1, "zero": 1}, CTX) is False
    listed = compile_condition([{"has": "/a"}, {"not_has": "/none"}, {"eq": ["@model", "m-2"]}])
    assert listed(DOC, CTX) is False
    assert listed(DOC, {**CTX, "model": "m-2"}) is True


def test_any_and_all_nest_and_empty_lists_behave_as_in_logic():
    cond = compile_condition({"any": [{"all": [{"has": "/a"}, {"has": "/absent"}]}, {"eq": ["/empty", ""]}]})
    assert cond(DOC, CTX) is True
    assert cond({"a": 1}, CTX) is False
    assert compile_condition({"any": []})(DOC, CTX) is False
    assert compile_condition({"all": []})(DOC, CTX) is True
    assert compile_condition([])(DOC, CTX) is True


def test_an_unknown_condition_is_rejected_by_name():
    with pytest.raises(ValueError, match="unknown condition 'greater'"):
        compile_condition({"greater": ["/a", 1]})


def test_a_condition_on_a_literal_instead_of_a_source_is_rejected():
    with pytest.raises(ValueError, match="must start with '/'"):
        compile_condition({"has": "a"})
