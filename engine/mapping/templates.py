"""Value sources, conditions and templates: the primitives every mapping rule is made of.

A *source* string is `/pointer` (into the document being mapped), `@name[/pointer]` (into the
engine context: `@model`, `@stream`, `@out`, part fields such as `@text`), or `@value` (the value
the template is rendered against). Anything else is a literal. Everything compiles to closures
`fn(src, ctx)`; per request nothing is parsed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..pointer import MISSING, compile_pointer, get
from .registry import Getter, compile_inline_rule

__all__ = ["Getter", "compile_condition", "compile_source", "compile_template", "fresh"]

Predicate = Callable[[Any, dict[str, Any]], bool]


def is_source(text: str) -> bool:
    return text.startswith(("/", "@"))


def compile_source(source: str) -> Getter:
    """Compile '/a/b', '@ctx/a' or '@value' into a getter."""
    if source == "@value":
        return lambda src, ctx: src if src is not None else MISSING
    if source.startswith("@"):
        name, _, rest = source[1:].partition("/")
        if not rest:
            def from_context_name(src: Any, ctx: dict[str, Any]) -> Any:
                value = ctx.get(name)
                return MISSING if value is None else value

            return from_context_name
        tokens = compile_pointer("/" + rest)

        def from_context(src: Any, ctx: dict[str, Any]) -> Any:
            value = ctx.get(name, MISSING)
            if value is MISSING or value is None:
                return MISSING
            return get(value, tokens)

        return from_context
    tokens = compile_pointer(source)
    if len(tokens) == 1 and isinstance(tokens[0], str):
        # The common case, `/field`: what `get` does for one key, without its loop.
        key = tokens[0]

        def field(src: Any, ctx: dict[str, Any]) -> Any:
            if isinstance(src, dict):
                value = src.get(key)
                return MISSING if value is None else value
            return MISSING

        return field
    return lambda src, ctx: get(src, tokens)


def compile_first_of(sources: str | list[str]) -> Getter:
    """`from: P` or `from: [P1, P2]`: the first present value wins."""
    if isinstance(sources, str):
        return compile_source(sources)
    getters = [compile_source(s) for s in sources]

    def first(src: Any, ctx: dict[str, Any]) -> Any:
        for getter in getters:
            value = getter(src, ctx)
            if value is not MISSING:
                return value
        return MISSING

    return first


def fresh(value: Any) -> Any:
    """A copy of a constant JSON value, so later rules can write into it safely."""
    if isinstance(value, dict):
        return {k: fresh(v) for k, v in value.items()}
    if isinstance(value, list):
        return [fresh(v) for v in value]
    return value


def _is_constant(shape: Any) -> bool:
    if isinstance(shape, str):
        return not is_source(shape)
    if isinstance(shape, dict):
        if set(shape) == {"const"}:
            return True
        if "op" in shape:
            return False
        return all(_is_constant(v) for v in shape.values())
    if isinstance(shape, list):
        return all(_is_constant(v) for v in shape)
    return True


def _strip_const(shape: Any) -> Any:
    if isinstance(shape, dict):
        if set(shape) == {"const"}:
            return shape["const"]
        return {k: _strip_const(v) for k, v in shape.items()}
    if isinstance(shape, list):
        return [_strip_const(v) for v in shape]
    return shape


def compile_template(shape: Any) -> Getter:
    """Compile a JSON shape whose strings may be sources; keys that resolve to nothing are dropped.

    Example: `{type: tool_use, id: "@id", name: "@name", input: "@args"}`.
    `{const: "/literal"}` writes a literal that starts with '/' or '@'. A mapping with an `op`
    key is an inline rule, e.g. `{op: json_decode, from: "@text", wrap: result}`.
    """
    if _is_constant(shape):
        value = _strip_const(shape)
        if isinstance(value, (dict, list)):
            return lambda src, ctx: fresh(value)
        return lambda src, ctx: value
    if isinstance(shape, str):
        return compile_source(shape)
    if isinstance(shape, dict):
        if "op" in shape:
            return compile_inline_rule(shape)
        # Leading constant scalars (`type: text`) are copied in one go, in their place in the order.
        head: dict[str, Any] = {}
        for key, value in shape.items():
            if isinstance(value, (dict, list)) or not _is_constant(value):
                break
            head[key] = _strip_const(value)
        items = [(k, compile_template(v)) for k, v in list(shape.items())[len(head):]]

        def render_object(src: Any, ctx: dict[str, Any]) -> Any:
            out = head.copy()
            for key, fn in items:
                value = fn(src, ctx)
                if value is not MISSING:
                    out[key] = value
            return out or MISSING

        return render_object
    assert isinstance(shape, list)
    elements = [compile_template(v) for v in shape]

    def render_list(src: Any, ctx: dict[str, Any]) -> Any:
        out = [v for v in (fn(src, ctx) for fn in elements) if v is not MISSING]
        return out or MISSING

    return render_list


def compile_condition(cond: Any) -> Predicate:
    """`when:` — `{has: P}`, `{not_has: P}`, `{eq: [P, v]}`, `{ne: [P, v]}`, `{in: [P, [..]]}`,
    `{not_in: [P, [..]]}`, `{lt|le|gt|ge: [P, number | P]}`, `{all: [..]}`, `{any: [..]}`,
    `{blank: P}` (a whitespace-only string, or a list holding one);
    a list means all of them."""
    if isinstance(cond, list):
        return _all_of([compile_condition(c) for c in cond])
    return _all_of([_compile_one_condition(op, arg) for op, arg in cond.items()])


def _all_of(preds: list[Predicate]) -> Predicate:
    if len(preds) == 1:
        return preds[0]

    def all_of(src: Any, ctx: dict[str, Any]) -> bool:
        for pred in preds:
            if not pred(src, ctx):
                return False
        return True

    return all_of


def _compile_one_condition(op: str, arg: Any) -> Predicate:
    if op == "all":
        return _all_of([compile_condition(c) for c in arg])
    if op == "any":
        parts = [compile_condition(c) for c in arg]

        def any_of(src: Any, ctx: dict[str, Any]) -> bool:
            for pred in parts:
                if pred(src, ctx):
                    return True
            return False

        return any_of
    if op in ("has", "not_has"):
        getter = compile_source(arg)
        if op == "has":
            return lambda src, ctx: getter(src, ctx) is not MISSING
        return lambda src, ctx: getter(src, ctx) is MISSING
    if op == "blank":
        getter = compile_source(arg)
        return lambda src, ctx: _blank(getter(src, ctx))
    getter = compile_source(arg[0])
    expected = arg[1]
    if op in _ORDER:
        return _compile_order(op, getter, expected)
    if op == "eq":
        return lambda src, ctx: _same(getter(src, ctx), expected)
    if op == "ne":
        return lambda src, ctx: not _same(getter(src, ctx), expected)
    if op in ("in", "not_in"):
        def is_in(src: Any, ctx: dict[str, Any]) -> bool:
            value = getter(src, ctx)
            if value is MISSING:
                return False
            for candidate in expected:
                if _same(value, candidate):
                    return True
            return False

        if op == "in":
            return is_in
        return lambda src, ctx: not is_in(src, ctx)
    raise ValueError(f"unknown condition {op!r}")


def _blank(value: Any) -> bool:
    """A whitespace-only string, or a list holding one."""
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, list) and any(isinstance(v, str) and not v.strip() for v in value)


#: Numeric comparisons: `{le: ["@out/max_tokens", "@out/thinking/budget_tokens"]}`.
_ORDER: dict[str, Callable[[float, float], bool]] = {
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _compile_order(op: str, getter: Getter, other: Any) -> Predicate:
    """`[source, number | source]`: holds only when both sides are numbers (never for a missing,
    boolean or string value) and they compare as `op` says."""
    compare = _ORDER[op]
    if isinstance(other, str):
        right = compile_source(other)
    elif _is_number(other):
        right = lambda src, ctx: other  # noqa: E731
    else:
        raise ValueError(f"{op}: compare with a number or a source, not {other!r}")

    def ordered(src: Any, ctx: dict[str, Any]) -> bool:
        a, b = getter(src, ctx), right(src, ctx)
        return _is_number(a) and _is_number(b) and compare(a, b)

    return ordered


def _same(value: Any, expected: Any) -> bool:
    # JSON has no bool/int identity: `true == 1` must be false here, whichever side is the bool.
    if isinstance(expected, bool) or isinstance(value, bool):
        return type(value) is type(expected) and value == expected
    return bool(value == expected)
