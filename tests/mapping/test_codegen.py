"""engine/mapping/codegen.py: rule lists as generated functions (`generate_runner`), which must map
exactly as the interpreted rules (`interpret_rules`) do; `compile_rules` runs the generated code."""

from __future__ import annotations

import traceback

import pytest

from engine.errors import InvalidRequest
from engine.mapping import compile_rules
from engine.mapping.codegen import generate_runner
from engine.mapping.rules import interpret_rules


def never(src, ctx):
    raise AssertionError("the interpreter was not expected to run")


def test_a_generated_runner_maps_an_object_source():
    rules = [{"to": "/model", "from": "@model"}, {"to": "/generationConfig/topP", "from": "/top_p"},
             {"to": "/stream", "const": True, "when": {"eq": ["@stream", True]}}]
    run = generate_runner(rules, [None] * len(rules), never)
    assert run({"top_p": 0.9}, {"model": "m", "stream": True}) == {
        "model": "m", "generationConfig": {"topP": 0.9}, "stream": True}
    assert run({}, {"model": "m", "stream": False}) == {"model": "m"}


def test_sources_that_are_not_objects_go_to_the_interpreter():
    calls = []

    def interpret(src, ctx):
        calls.append(src)
        return {"interpreted": True}

    run = generate_runner([{"to": "/x", "from": "/0"}], [None], interpret)
    assert run(["a"], {}) == {"interpreted": True}
    assert run("text", {}) == {"interpreted": True}
    assert run({"0": "a"}, {}) == {"x": "a"}
    assert calls == [["a"], "text"]


def test_a_gate_skips_a_rule_unless_one_of_its_keys_is_in_the_source():
    rules = [{"to": "/x", "from": ["/a", "/b"], "op": "as_list"}]
    run = generate_runner(rules, [("a", "b")], never)
    assert run({"b": "v"}, {}) == {"x": ["v"]}
    assert run({"c": "v"}, {}) == {}


def test_the_generated_code_shows_in_tracebacks():
    run = compile_rules([{"to": "/x", "from": "/a", "op": "json_decode"}])
    with pytest.raises(InvalidRequest) as failure:
        run({"a": "not json"}, {})
    frames = traceback.format_tb(failure.value.__traceback__)
    generated = [f for f in frames if "<mapping rules #" in f]
    assert generated, frames
    assert "(v, src, ctx)" in generated[0]  # the source line of the generated function is shown


def test_constants_and_defaults_are_copied_on_every_run():
    run = compile_rules([{"to": "/a", "const": {"k": [1]}}, {"to": "/b", "from": "/absent", "default": {"d": []}}])
    first = run({}, {})
    first["a"]["k"].append(2)
    first["b"]["d"].append(3)
    assert run({}, {}) == {"a": {"k": [1]}, "b": {"d": []}}


# Rules whose generated form takes every inline path (fields, context, @out, presence, string and
# boolean comparisons, membership, unrolled writes) and the ones it hands to compiled closures.
RULES = [
    {"to": "/f", "from": "/a"},
    {"to": "/deep/x", "from": "/n/m"},
    {"to": "/ctx", "from": "@model"},
    {"to": "/ctxdeep", "from": "@info/limit"},
    {"to": "/whole", "from": "", "op": "omit_keys", "keys": ["n", "list", "s", "b", "num", "nul"]},
    {"to": "/value", "from": "@value", "op": "omit_keys", "keys": ["n", "list", "s", "b", "num", "nul", "a"]},
    {"to": "/firstof", "from": ["/nul", "/absent", "@absent", "/s"]},
    {"to": "/list/1/k", "from": "/s"},
    {"to": "/out_seen", "from": "@out/f"},
    {"to": "/out_deep", "from": "@out/deep/x"},
    {"to": "/has_s", "const": 1, "when": {"has": "/s"}},
    {"to": "/not_has_nul", "const": 1, "when": {"not_has": "/nul"}},
    {"to": "/has_ctx_null", "const": 1, "when": {"has": "@empty"}},
    {"to": "/has_deep", "const": 1, "when": {"has": "/n/m"}},
    {"to": "/has_value", "const": 1, "when": {"has": "@value"}},
    {"to": "/eq_s", "const": 1, "when": {"eq": ["/s", "x"]}},
    {"to": "/ne_s", "const": 1, "when": {"ne": ["/s", "x"]}},
    {"to": "/eq_true", "const": 1, "when": {"eq": ["/b", True]}},
    {"to": "/ne_false", "const": 1, "when": {"ne": ["/b", False]}},
    {"to": "/eq_num", "const": 1, "when": {"eq": ["/num", 1]}},
    {"to": "/eq_null", "const": 1, "when": {"eq": ["/nul", None]}},
    {"to": "/in_s", "const": 1, "when": {"in": ["/s", ["x", "y"]]}},
    {"to": "/not_in_s", "const": 1, "when": {"not_in": ["/s", ["x"]]}},
    {"to": "/in_mixed", "const": 1, "when": {"in": ["/num", [1, "1", True]]}},
    {"to": "/any", "const": 1, "when": {"any": [{"eq": ["/s", "nope"]}, {"has": "@out/f"}]}},
    {"to": "/all", "const": 1, "when": {"all": [{"has": "/a"}, {"eq": ["@stream", True]}]}},
    {"to": "/default_when", "from": "/absent", "default": "d", "when": {"eq": ["@stream", False]}},
    {"to": "/template", "from": "/n", "template": {"m": "/m", "model": "@model"}},
    {"to": "/template_op", "from": "/n", "template": "/m", "op": "json_encode"},
    {"to": "", "from": "/n"},
]

SOURCES = [
    {"a": 1, "n": {"m": "deep"}, "list": [], "s": "x", "b": True, "num": 1, "nul": None},
    {"a": None, "n": {"m": None}, "s": "y", "b": 1, "num": True, "nul": 0},
    {"n": "not an object", "list": "not a list", "s": 5, "b": False, "num": 1.0, "nul": False},
    {},
]


@pytest.mark.parametrize("src", SOURCES)
@pytest.mark.parametrize("stream", [True, False])
def test_generated_rules_map_as_the_interpreter(src, stream):
    ctx = {"model": "m", "stream": stream, "info": {"limit": 5}, "empty": None}
    generated = compile_rules(RULES)(src, dict(ctx))
    interpreted = interpret_rules(RULES)(src, dict(ctx))
    assert generated == interpreted


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_alone_maps_as_the_interpreter(rule):
    for src in SOURCES:
        ctx = {"model": "m", "stream": True, "info": {"limit": 5}, "empty": None}
        assert compile_rules([rule])(src, dict(ctx)) == interpret_rules([rule])(src, dict(ctx)), src


def test_the_shared_rules_decide_as_expected_on_a_full_source():
    out = compile_rules(RULES)(SOURCES[0], {"model": "m", "stream": True, "info": {"limit": 5}, "empty": None})
    assert out["f"] == 1 and out["out_seen"] == 1 and out["out_deep"] == "deep"
    assert out["list"] == [{}, {"k": "x"}]
    assert out["firstof"] == "x"
    assert {"has_s", "not_has_nul", "eq_s", "eq_true", "ne_false", "eq_num", "in_s", "in_mixed", "any", "all",
            "has_deep", "has_value"} <= set(out)
    assert not {"has_ctx_null", "ne_s", "eq_null", "not_in_s", "default_when"} & set(out)
    assert out["m"] == "deep"  # `to: ""` merged /n
