"""Mapping rules: `{to, from, default, const, template, when, op, ...}` compiled into closures.

A list of rules maps one document into a new one. Each rule picks a value (`const`, else the first
present `from`, else the whole source), falls back to `default`, renders `template` against it,
applies `op` (from the closed catalogue in `ops`), and writes the result at `to` unless it is
missing. `to: ""` merges an object into the root. `@out/...` in `when` sees what earlier rules wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..pointer import MISSING, compile_pointer, put
from . import registry
from .codegen import generate_runner
from .ops import OPS_WITH_OWN_TEMPLATE, compile_op
from .registry import Getter, Mapper
from .templates import compile_condition, compile_first_of, compile_template, fresh

__all__ = ["RULE_KEYS", "Mapper", "compile_rule_value", "compile_rules", "interpret_rules"]

#: Keys every rule may carry, whatever its op.
RULE_KEYS = frozenset({"to", "from", "default", "const", "template", "when", "op", "description"})


def compile_rule_value(rule: dict[str, Any]) -> Getter:
    """Compile the value part of a rule (everything but `to`): fn(src, ctx) -> value | MISSING."""
    if "const" in rule:
        constant = rule["const"]
        pick: Getter = (lambda src, ctx: fresh(constant)) if isinstance(constant, (dict, list)) else (
            lambda src, ctx: constant
        )
    elif "from" in rule:
        pick = compile_first_of(rule["from"])
    else:
        def pick(src: Any, ctx: dict[str, Any]) -> Any:
            return src

    if "default" in rule:
        default = rule["default"]
        base_pick = pick

        def pick(src: Any, ctx: dict[str, Any]) -> Any:
            value = base_pick(src, ctx)
            return fresh(default) if value is MISSING else value

    steps: list[Callable[[Any, Any, dict[str, Any]], Any]] = []
    if "template" in rule and rule.get("op") not in OPS_WITH_OWN_TEMPLATE:
        render = compile_template(rule["template"])
        steps.append(lambda value, src, ctx: render(value, ctx))
    if "op" in rule:
        steps.append(compile_op(rule))

    when = compile_condition(rule["when"]) if "when" in rule else None

    if when is not None and "from" in rule and "default" not in rule and "const" not in rule:
        # A rule that reads a field the request lacks does nothing whatever `when` says, and
        # most optional fields are absent: look first (neither side has effects).
        def value_of_present(src: Any, ctx: dict[str, Any]) -> Any:
            value = pick(src, ctx)
            if value is MISSING or not when(src, ctx):
                return MISSING
            for step in steps:
                value = step(value, src, ctx)
                if value is MISSING:
                    return MISSING
            return value

        return value_of_present

    def value_of(src: Any, ctx: dict[str, Any]) -> Any:
        if when is not None and not when(src, ctx):
            return MISSING
        value = pick(src, ctx)
        for step in steps:
            if value is MISSING:
                return MISSING
            value = step(value, src, ctx)
        return value

    return value_of


def _gate(rule: dict[str, Any]) -> tuple[str, ...] | None:
    """The top-level keys a rule reads when it can only write what it reads (`from` pointers,
    no `const` or `default`): with none of them in the source, the rule does nothing. Most
    rules map optional fields a request lacks; the generated code skips them with one `in`
    test each."""
    if "const" in rule or "default" in rule or "from" not in rule:
        return None
    sources = rule["from"] if isinstance(rule["from"], list) else [rule["from"]]
    keys = []
    for source in sources:
        if not isinstance(source, str) or not source.startswith("/"):
            return None
        keys.append(str(compile_pointer(source)[0]))
    return tuple(keys)


def compile_rules(rules: list[dict[str, Any]]) -> Mapper:
    """Compile a rule list into fn(src, ctx) -> new document. `ctx['out']` is the document so far.

    The runner is generated code (codegen.py); sources that are not objects, rare, go through
    the interpreter, compiled when first needed."""
    interpreted: list[Mapper] = []

    def interpret(src: Any, ctx: dict[str, Any]) -> dict[str, Any]:
        if not interpreted:
            interpreted.append(interpret_rules(rules))
        return interpreted[0](src, ctx)

    return generate_runner(rules, [_gate(rule) for rule in rules], interpret)


def interpret_rules(rules: list[dict[str, Any]]) -> Mapper:
    """A rule list as a loop over compiled closures: the reference the generated code follows,
    kept plain (no gates, no shortcuts) so the tests compare the generated code with the rules'
    meaning. Used for sources that are not objects."""
    compiled = [(compile_pointer(rule.get("to", "")), compile_rule_value(rule)) for rule in rules]

    def run(src: Any, ctx: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        outer = ctx.get("out", MISSING)
        ctx["out"] = out
        try:
            for tokens, value_of in compiled:
                value = value_of(src, ctx)
                if value is MISSING:
                    continue
                if tokens:
                    put(out, tokens, value)
                elif isinstance(value, dict):
                    out.update(value)
        finally:
            if outer is MISSING:
                ctx.pop("out", None)
            else:
                ctx["out"] = outer
        return out

    return run


# Rules nest inside templates and ops (see registry.py): from now on they compile with these.
registry.register(compile_rule_value, compile_rules)
