"""The rule primitives in isolation: sources, conditions, and how `from`, `default` and `when` combine."""

from __future__ import annotations

import pytest

from engine.mapping.rules import compile_rules, interpret_rules
from engine.mapping.templates import compile_condition, compile_source
from engine.pointer import MISSING

DOC = {"a": 1, "flag": True, "zero": 0, "none": None, "nested": {"b": "x", "list": [10, 20]}, "type": "json_schema"}
CTX = {"model": "m-1", "stream": False, "info": {"limit": 5}, "empty": None}


@pytest.mark.parametrize(("source", "expected"), [
    ("/a", 1),
    ("/none", MISSING),  # JSON null counts as missing
    ("/absent", MISSING),
    ("/nested/b", "x"),
    ("/nested/list/1", 20),
    ("/nested/list/5", MISSING),
    ("/a/b", MISSING),  # a path through a scalar
    ("@model", "m-1"),
    ("@stream", False),
    ("@empty", MISSING),
    ("@absent", MISSING),
    ("@info/limit", 5),
    ("@info/absent", MISSING),
])
def test_sources(source, expected):
    assert compile_source(source)(DOC, CTX) == expected if expected is not MISSING else \
        compile_source(source)(DOC, CTX) is MISSING


def test_a_field_source_on_something_not_an_object_is_missing():
    assert compile_source("/a")([1, 2], CTX) is MISSING
    assert compile_source("/a")("text", CTX) is MISSING


CONDITIONS = [
    ({"has": "/a"}, True),
    ({"has": "/none"}, False),
    ({"not_has": "/absent"}, True),
    ({"eq": ["/flag", True]}, True),
    ({"eq": ["/a", True]}, False),  # 1 is not true in JSON
    ({"eq": ["/zero", False]}, False),
    ({"ne": ["/a", 2]}, True),
    ({"in": ["/type", ["json_schema", "json_object"]]}, True),
    ({"in": ["/absent", ["json_schema"]]}, False),
    ({"not_in": ["/type", ["text"]]}, True),
    ({"not_in": ["/absent", ["text"]]}, True),
    ({"not_in": ["/flag", [1]]}, True),
    ([{"has": "/a"}, {"eq": ["@model", "m-1"]}], True),
    ([{"has": "/a"}, {"eq": ["@model", "other"]}], False),
    ({"has": "/a", "not_has": "/a"}, False),
    ({"any": [{"has": "/absent"}, {"eq": ["/a", 1]}]}, True),
    ({"any": [{"has": "/absent"}, {"eq": ["/a", 2]}]}, False),
    ({"all": [{"has": "/a"}, {"any": [{"has": "/nested/b"}]}]}, True),
    ({"eq": ["@stream", False]}, True),
    ({"ne": ["@stream", True]}, True),
    ({"eq": ["/zero", 0]}, True),
    ({"eq": ["/none", None]}, False),  # null is missing, and missing equals nothing
    ({"ne": ["/type", "json_schema"]}, False),
    ({"eq": ["/nested/b", "x"]}, True),
    ({"has": "@info/limit"}, True),
    ({"has": "@empty"}, False),
    ({"not_has": "@empty"}, True),
    ({"has": "@out/x"}, False),
    ({"has": "/nested/list/1"}, True),
    ({"not_has": "/nested/list/5"}, True),
    ({"in": ["@model", ["m-1", "m-2"]]}, True),
    ({"not_in": ["/nested", ["x"]]}, True),
    # Numeric order: both sides must be numbers (a boolean, a string or a missing value never is).
    ({"lt": ["/zero", "/a"]}, True),
    ({"le": ["/a", 1]}, True),
    ({"lt": ["/a", 1]}, False),
    ({"gt": ["@info/limit", "/a"]}, True),
    ({"ge": ["/a", "@info/limit"]}, False),
    ({"ge": ["/flag", 0]}, False),
    ({"le": ["/absent", 5]}, False),
    ({"gt": ["/nested/b", 0]}, False),
    ({"lt": ["/a", "/absent"]}, False),
    ({"le": ["/nested/list/0", "/nested/list/1"]}, True),
]


@pytest.mark.parametrize(("cond", "expected"), CONDITIONS)
def test_conditions(cond, expected):
    assert compile_condition(cond)(DOC, CTX) is expected


ONE_RULE = [
    ({"to": "/x", "from": "/a", "when": {"eq": ["@stream", True]}}, {}),
    ({"to": "/x", "from": "/a", "when": {"eq": ["@stream", False]}}, {"x": 1}),
    ({"to": "/x", "from": "/absent", "when": {"eq": ["@stream", False]}}, {}),
    ({"to": "/x", "from": "/absent", "default": 7, "when": {"eq": ["@stream", False]}}, {"x": 7}),
    ({"to": "/x", "from": "/absent", "default": 7, "when": {"eq": ["@stream", True]}}, {}),
    ({"to": "/x", "from": ["/absent", "/a"], "when": {"has": "/flag"}}, {"x": 1}),
    ({"to": "/x", "const": "c", "when": {"has": "/absent"}}, {}),
    ({"to": "/x", "from": "/a", "op": "table", "table": {"1": "one", "_default": "_omit"}, "when": {"has": "/a"}}, {}),
    ({"to": "/x/y", "from": "/nested/list", "template": {"first": "/0", "n": "@model"}}, {"x": {"y": {"first": 10, "n": "m-1"}}}),
    ({"to": "", "from": "/nested"}, {"b": "x", "list": [10, 20]}),
    ({"to": "", "from": "/a"}, {}),  # a scalar cannot be merged into the root
    ({"to": "/x", "from": "@info/limit", "op": "clamp", "hi": 3}, {"x": 3}),
    ({"to": "/x", "from": "/none", "default": None}, {"x": None}),
    ({"to": "/x", "const": {"k": [1]}}, {"x": {"k": [1]}}),
    ({"to": "/x/0", "from": "/type"}, {"x": ["json_schema"]}),
    ({"to": "/x", "from": "", "op": "omit_keys", "keys": ["a", "flag", "zero", "none", "nested"]}, {"x": {"type": "json_schema"}}),
    ({"to": "/x", "from": "/nested", "template": "/absent", "op": "json_encode"}, {}),
    ({"to": "/x", "op": "sum", "of": ["/a", "/nested/list/1", "/absent"]}, {"x": 21}),
    ({"to": "/x", "op": "sum", "of": ["/a", "/zero"], "minus": ["/nested/list/0", "/none"]}, {"x": 0}),  # never below 0
    ({"to": "/x", "op": "sum", "of": ["/a"], "minus": ["/absent"]}, {"x": 1}),
    ({"to": "/x", "op": "sum", "of": ["/absent", "/type"]}, {}),  # no number, nothing written
]


@pytest.mark.parametrize(("rule", "expected"), ONE_RULE)
def test_one_rule(rule, expected):
    assert compile_rules([rule])(DOC, dict(CTX)) == expected


def test_when_sees_what_earlier_rules_wrote():
    mapper = compile_rules([
        {"to": "/thinking", "from": "/flag"},
        {"to": "/temperature", "from": "/a", "when": {"not_has": "@out/thinking"}},
        {"to": "/top_k", "from": "/a", "when": {"has": "@out/thinking"}},
    ])
    assert mapper(DOC, dict(CTX)) == {"thinking": True, "top_k": 1}


def test_rules_on_absent_fields_are_skipped_while_defaults_and_constants_apply():
    """compile_rules skips a rule whose `from` keys are all absent (it could only write what it
    reads); rules with `default`, `const` or a context source must still run."""
    run = compile_rules([
        {"to": "/a", "from": ["/x", "/y"]},
        {"to": "/b", "from": "/missing", "default": 3},
        {"to": "/c", "const": 1},
        {"to": "/d", "from": "/missing"},
        {"to": "/e", "from": "/y/z"},
        {"to": "/f", "from": "@model"},
        {"to": "/g", "from": "/y", "when": {"has": "/y/z"}, "op": "omit_keys", "keys": ["z"]},
    ])
    assert run({"y": {"z": 2, "w": 0}}, {"model": "m"}) == {"a": {"z": 2, "w": 0}, "b": 3, "c": 1, "e": 2, "f": "m", "g": {"w": 0}}
    assert run(["not", "a", "mapping"], {}) == {"b": 3, "c": 1}


def test_templates_keep_key_order_with_constant_and_missing_values():
    from engine.mapping.templates import compile_template

    render = compile_template({"type": "text", "n": None, "text": "@text", "mark": "@part/cache_control", "kind": "k",
                               "meta": {"const": "/literal"}})
    out = render({}, {"text": "hi"})
    assert out == {"type": "text", "n": None, "text": "hi", "kind": "k", "meta": "/literal"}
    assert list(out) == ["type", "n", "text", "kind", "meta"]
    first, second = render({}, {"text": "a"}), render({}, {"text": "b"})
    first["type"] = "changed"
    assert second["type"] == "text"  # each rendering is a new object


# Rule lists run as generated code (engine/mapping/codegen.py); the interpreter is the reference.
@pytest.mark.parametrize(("cond", "expected"), CONDITIONS)
def test_generated_conditions_decide_as_the_interpreter(cond, expected):
    rules = [{"to": "/hit", "const": True, "when": cond}]
    for src in (DOC, {}, {"a": None, "type": True, "nested": "x", "flag": 1, "zero": False}):
        ctx = dict(CTX)
        generated, interpreted = compile_rules(rules)(src, ctx), interpret_rules(rules)(src, dict(CTX))
        assert generated == interpreted, (cond, src)
        assert "out" not in ctx  # the context is left as it was
    assert compile_rules(rules)(DOC, dict(CTX)) == ({"hit": True} if expected else {})


@pytest.mark.parametrize(("rule", "expected"), ONE_RULE)
def test_generated_rules_write_as_the_interpreter(rule, expected):
    for src in (DOC, {}, {"a": "text", "nested": {"list": "no"}, "none": 0, "type": None}):
        assert compile_rules([rule])(src, dict(CTX)) == interpret_rules([rule])(src, dict(CTX)), (rule, src)


def test_a_generated_runner_restores_an_outer_out_and_shows_its_code_in_tracebacks():
    import traceback

    run = compile_rules([{"to": "/x", "from": "/a", "op": "json_decode"}])
    outer = {"kept": 1}
    ctx = {"out": outer}
    assert run({"a": "[1]"}, ctx) == {"x": [1]}
    assert ctx["out"] is outer
    with pytest.raises(Exception) as failure:
        run({"a": "not json"}, ctx)
    assert ctx["out"] is outer
    assert "_k0(v, src, ctx)" in "".join(traceback.format_tb(failure.value.__traceback__))


@pytest.mark.parametrize("writes", [
    ["/choices/0/message", "/choices/0/finish_reason", "/choices/1/index"],
    ["/x/y/z", "/x/y/w", "/x/v"],
    ["/0/a", "/list/2", "/list/0/deep"],
    ["/x", "/x/y"],  # a scalar on the way is replaced by an object
    ["/x/0", "/x/k"],  # a list on the way, written with a key: put's own error, as before
])
def test_generated_writes_build_paths_as_put_does(writes):
    rules = [{"to": to, "from": "/nested/b"} for to in writes]
    try:
        expected = interpret_rules(rules)(DOC, dict(CTX))
    except (AssertionError, TypeError) as exc:
        with pytest.raises(type(exc)):
            compile_rules(rules)(DOC, dict(CTX))
    else:
        assert compile_rules(rules)(DOC, dict(CTX)) == expected


# -- the arithmetic ops: clamp with bounds read per request, sum of sources, hash ----------------
def test_clamp_bounds_may_be_sources_and_below_is_exclusive():
    rules = [
        {"to": "/max", "from": "/max", "op": "clamp", "hi": "@info/limit"},
        {"to": "/budget", "from": "/budget", "op": "clamp", "lo": 3, "below": "@out/max"},
    ]
    run = compile_rules(rules)
    assert run({"max": 9, "budget": 1}, dict(CTX)) == {"max": 5, "budget": 3}
    assert run({"max": 4, "budget": 8}, dict(CTX)) == {"max": 4, "budget": 3}
    assert run({"max": 2, "budget": 8}, dict(CTX)) == {"max": 2, "budget": 1}  # `below` wins over `lo`
    # A bound whose source is missing sets no bound; a value that is not a number passes.
    assert run({"max": 9, "budget": 7}, {"info": {}}) == {"max": 9, "budget": 7}
    assert run({"max": "x", "budget": True}, dict(CTX)) == {"max": "x", "budget": True}


def test_sum_adds_pointers_sources_and_literals():
    rules = [{"to": "/n", "op": "sum", "of": ["/a", "@info/limit", 10], "minus": ["/zero", 2]}]
    assert compile_rules(rules)(DOC, dict(CTX)) == {"n": 14}
    missing = [{"to": "/n", "op": "sum", "of": ["/absent", "@out/absent"]}]
    assert compile_rules(missing)(DOC, dict(CTX)) == {}


def test_hash_is_a_stable_hex_digest():
    import hashlib

    rules = [{"to": "/id", "from": "/user", "op": "hash"}, {"to": "/obj", "from": "/o", "op": "hash", "algorithm": "md5"}]
    out = compile_rules(rules)({"user": "a@b.example", "o": {"b": 1, "a": 2}}, {})
    assert out["id"] == hashlib.sha256(b"a@b.example").hexdigest()
    assert out["obj"] == hashlib.md5(b'{"a":2,"b":1}').hexdigest()
    with pytest.raises(ValueError):
        compile_rules([{"to": "/id", "from": "/user", "op": "hash", "algorithm": "rot13"}])
