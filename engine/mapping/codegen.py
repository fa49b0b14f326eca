"""Rule lists compiled into one generated Python function each, at load.

The interpreted runner (rules.py) calls a closure per rule, per source and per condition: ~0.2 us
a rule even when the field it maps is absent, which is most rules for most requests. The
generated function spells the same steps out in straight-line code: `/field` sources become
`src.get('field')`, simple conditions become expressions, writes to `/field` become one store.
What has no inline form (templates, ops, multi-step pointers) is called as the same compiled
closure the interpreter uses, so each operation still has one implementation.

The generated code handles object sources, which is what rule lists map; anything else goes to
the interpreter. The source of every generated function is kept for tracebacks (linecache).
"""

from __future__ import annotations

import itertools
import linecache
from collections.abc import Callable
from typing import Any

from ..pointer import MISSING, compile_pointer, get, put
from .ops import OPS_WITH_OWN_TEMPLATE, compile_op
from .templates import compile_condition, compile_template, fresh, is_source

__all__ = ["generate_runner"]

Runner = Callable[[Any, dict[str, Any]], dict[str, Any]]
_serial = itertools.count()


class _Emitter:
    """Collects generated lines and the objects they refer to by name."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {"MISSING": MISSING, "get": get, "put": put, "fresh": fresh}
        self._by_id: dict[int, str] = {}

    def bind(self, obj: Any) -> str:
        """A name for `obj` in the generated function's globals."""
        if id(obj) not in self._by_id:
            name = f"_k{len(self._by_id)}"
            self._by_id[id(obj)] = name
            self.names[name] = obj
        return self._by_id[id(obj)]

    def line(self, depth: int, text: str) -> None:
        self.lines.append("    " * depth + text)


# ---------------------------------------------------------------------------------- sources
# In generated code `src` is an object and `out` the document being written (what `@out` reads).
def _direct_read(source: str) -> str | None:
    """A one-lookup expression for `/field`, `@name` and `@out/field`, whose result still needs
    null (and, from the context, MISSING) treated as absent; None for other sources."""
    if source.startswith("/"):
        key = _single_key(source)
        return None if key is None else f"src.get({key!r})"
    if source.startswith("@") and source != "@value":
        name, _, rest = source[1:].partition("/")
        if not rest:
            return f"ctx.get({name!r})"
        key = _single_key("/" + rest)
        if name == "out" and key is not None:
            return f"out.get({key!r})"
    return None


def _single_key(source: str) -> str | None:
    """The key of a `/field` source, else None."""
    tokens = compile_pointer(source)
    return tokens[0] if len(tokens) == 1 and isinstance(tokens[0], str) else None


def _value_expression(em: _Emitter, source: str) -> str:
    """An expression for a source's value; null may come out as None or MISSING, so only tests
    that treat both as absent may use it."""
    direct = _direct_read(source)
    if direct is not None:
        return direct
    if source in ("@value", ""):  # the whole source, an object here
        return "src"
    if source.startswith("/"):
        return f"get(src, {em.bind(compile_pointer(source))})"
    name, _, rest = source[1:].partition("/")
    base = "out" if name == "out" else f"ctx.get({name!r})"
    return f"get({base}, {em.bind(compile_pointer('/' + rest))})"


def _source_lines(em: _Emitter, source: str, var: str, depth: int) -> None:
    """Statements that set `var` to the value of a source, or MISSING (a JSON null is missing)."""
    direct = _direct_read(source)
    em.line(depth, f"{var} = {_value_expression(em, source)}")
    if direct is not None:
        em.line(depth, f"if {var} is None: {var} = MISSING")


def _presence_expression(em: _Emitter, source: str, present: bool) -> str:
    """`has` / `not_has` as an expression: a value that is neither null nor MISSING."""
    if source in ("@value", ""):
        return "True" if present else "False"  # the source of a generated runner is an object
    expr = _value_expression(em, source)
    if _direct_read(source) is None:
        return f"{expr} {'is not' if present else 'is'} MISSING"  # `get` maps null to MISSING
    if present:
        return f"((_t := {expr}) is not None and _t is not MISSING)"
    return f"((_t := {expr}) is None or _t is MISSING)"


# ------------------------------------------------------------------------------- conditions
def _plain(value: Any) -> bool:
    """Constants an `==` in generated code compares exactly as the interpreter's `_same` does:
    strings (a boolean is never equal to one). Numbers and booleans need `_same`'s type check."""
    return isinstance(value, str)


def _condition_expression(em: _Emitter, cond: Any) -> str:
    if isinstance(cond, list):
        return _conjunction([_condition_expression(em, c) for c in cond])
    return _conjunction([_one_condition(em, op, arg) for op, arg in cond.items()])


def _conjunction(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else "(" + " and ".join(parts) + ")"


def _one_condition(em: _Emitter, op: str, arg: Any) -> str:
    if op == "all":
        return _conjunction([_condition_expression(em, c) for c in arg])
    if op == "any":
        return "(" + " or ".join(_condition_expression(em, c) for c in arg) + ")"
    if op in ("has", "not_has") and isinstance(arg, str) and is_source(arg):
        return _presence_expression(em, arg, op == "has")
    if op in ("eq", "ne") and _simple_comparison(arg) and _plain(arg[1]):
        return f"{_value_expression(em, arg[0])} {'==' if op == 'eq' else '!='} {arg[1]!r}"
    if op in ("eq", "ne") and _simple_comparison(arg) and isinstance(arg[1], bool):
        # `_same` with a boolean: the very same boolean (JSON's true is not 1).
        return f"{_value_expression(em, arg[0])} {'is' if op == 'eq' else 'is not'} {arg[1]!r}"
    if op in ("in", "not_in") and _simple_comparison(arg) and isinstance(arg[1], list) and all(map(_plain, arg[1])):
        return f"{_value_expression(em, arg[0])} {'in' if op == 'in' else 'not in'} {tuple(arg[1])!r}"
    # Anything else (numbers, booleans, nulls): the interpreter's predicate.
    return f"{em.bind(compile_condition({op: arg}))}(src, ctx)"


def _simple_comparison(arg: Any) -> bool:
    return isinstance(arg, list) and len(arg) == 2 and isinstance(arg[0], str) and is_source(arg[0])


# ------------------------------------------------------------------------------------ rules
def _rule_lines(em: _Emitter, rule: dict[str, Any], gate: tuple[str, ...] | None, depth: int) -> None:
    """One rule: pick a value, fall back to `default`, check `when`, render, apply the op, write."""
    if gate is not None:
        em.line(depth, "if " + " or ".join(f"{key!r} in src" for key in gate) + ":")
        depth += 1
    when = _condition_expression(em, rule["when"]) if "when" in rule else None
    may_be_missing = "const" not in rule and "default" not in rule and "from" in rule

    if "const" in rule:
        if when is not None:
            em.line(depth, f"if {when}:")
            depth += 1
        constant = rule["const"]
        em.line(depth, f"v = fresh({em.bind(constant)})" if isinstance(constant, (dict, list)) else f"v = {em.bind(constant)}")
    else:
        if "from" in rule:
            sources = rule["from"] if isinstance(rule["from"], list) else [rule["from"]]
            _source_lines(em, sources[0], "v", depth)
            for source in sources[1:]:
                em.line(depth, "if v is MISSING:")
                _source_lines(em, source, "v", depth + 1)
        else:
            em.line(depth, "v = src")
        if "default" in rule:
            default = rule["default"]
            value = f"fresh({em.bind(default)})" if isinstance(default, (dict, list)) else em.bind(default)
            em.line(depth, f"if v is MISSING: v = {value}")
        tests = (["v is not MISSING"] if may_be_missing else []) + ([when] if when is not None else [])
        if tests:
            em.line(depth, f"if {' and '.join(tests)}:")
            depth += 1

    steps = []
    if "template" in rule and rule.get("op") not in OPS_WITH_OWN_TEMPLATE:
        steps.append(f"{em.bind(compile_template(rule['template']))}(v, ctx)")
    if "op" in rule:
        steps.append(f"{em.bind(compile_op(rule))}(v, src, ctx)")
    for i, step in enumerate(steps):
        if i:
            em.line(depth, "if v is not MISSING:")
            depth += 1
        em.line(depth, f"v = {step}")
    if steps:
        em.line(depth, "if v is not MISSING:")
        depth += 1
    tokens = compile_pointer(rule.get("to", ""))
    if len(tokens) == 1 and isinstance(tokens[0], str):
        em.line(depth, f"out[{tokens[0]!r}] = v")
    elif tokens:
        _put_lines(em, "out", tokens, 0, depth)
    else:
        em.line(depth, "if isinstance(v, dict): out.update(v)")


def _put_lines(em: _Emitter, target: str, tokens: tuple[str | int, ...], i: int, depth: int) -> None:
    """`put(target, tokens[i:], v)` unrolled: each step takes the branch the token's type expects
    (an object for a key, a list for an index) inline and hands anything else to `put` itself,
    which carries on from there exactly as it would have."""
    token, rest = tokens[i], em.bind(tokens[i:])
    if i == len(tokens) - 1:
        em.line(depth, f"if isinstance({target}, list): put({target}, {rest}, v)")
        em.line(depth, f"else: {target}[{str(token)!r}] = v")
        return
    child, empty = f"c{i}", "[]" if isinstance(tokens[i + 1], int) else "{}"
    if isinstance(token, str):
        em.line(depth, f"if isinstance({target}, list): put({target}, {rest}, v)")
        em.line(depth, "else:")
        em.line(depth + 1, f"{child} = {target}.get({token!r})")
        em.line(depth + 1, f"if not isinstance({child}, (dict, list)): {child} = {target}[{token!r}] = {empty}")
    else:
        em.line(depth, f"if not isinstance({target}, list): put({target}, {rest}, v)")
        em.line(depth, "else:")
        em.line(depth + 1, f"while len({target}) <= {token}: {target}.append({empty})")
        em.line(depth + 1, f"{child} = {target}[{token}]")
    _put_lines(em, child, tokens, i + 1, depth + 1)


def generate_runner(rules: list[dict[str, Any]], gates: list[tuple[str, ...] | None], interpret: Runner) -> Runner:
    """fn(src, ctx) -> new document for a rule list, as generated code. `gates` are the top-level
    keys each rule reads (see rules._gate); `interpret` runs the rules on sources that are not
    objects."""
    em = _Emitter()
    em.names["interpret"] = interpret
    em.line(0, "def run(src, ctx):")
    em.line(1, "if src.__class__ is not dict:")
    em.line(2, "return interpret(src, ctx)")
    em.line(1, "out = {}")
    em.line(1, "outer = ctx.get('out', MISSING)")
    em.line(1, "ctx['out'] = out")
    em.line(1, "try:")
    for rule, gate in zip(rules, gates):
        _rule_lines(em, rule, gate, 2)
    em.line(2, "pass")
    em.line(1, "finally:")
    em.line(2, "if outer is MISSING: ctx.pop('out', None)")
    em.line(2, "else: ctx['out'] = outer")
    em.line(1, "return out")
    source = "\n".join(em.lines) + "\n"
    filename = f"<mapping rules #{next(_serial)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), em.names)  # noqa: S102 - text generated above, from compiled specs
    run: Runner = em.names["run"]
    return run
