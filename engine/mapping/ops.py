"""The closed catalogue of mapping operations. Each is generic and parameterised from the spec.

Every op compiles once into `step(value, src, ctx) -> value | MISSING`; `value` is what the rule
picked (`from`, `const` or the whole source). The schema (schemas/provider.schema.json) documents
each op's parameters with an example.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from ..errors import InvalidRequest
from ..pointer import MISSING
from .client import compile_message_to_parts, compile_turns_to_messages
from .message import compile_parts_to_message
from .registry import compile_nested_rules
from .templates import compile_condition, compile_source, compile_template
from .turns import compile_collect_text, compile_messages_to_turns

__all__ = ["OPS", "OPS_WITH_OWN_TEMPLATE", "compile_op"]

Step = Callable[[Any, Any, dict[str, Any]], Any]
OMIT = "_omit"

#: Ops that read `template` as their own parameter (per item, or with `@text`), so the rule does
#: not render it first.
OPS_WITH_OWN_TEMPLATE = frozenset({"each", "collect_text"})


def _op_table(rule: dict[str, Any]) -> Step:
    """Look the value up in a plain map; the key of an object is its `/type`."""
    entries = {key: compile_template(v) if v != OMIT else None for key, v in rule["table"].items()}
    default = entries.get("_default")

    def lookup(value: Any, src: Any, ctx: dict[str, Any]) -> Any:
        key = value.get("type", MISSING) if isinstance(value, dict) else value
        try:
            render = entries.get(key, default)
        except TypeError:  # unhashable value
            render = default
        return MISSING if render is None else render(value, ctx)

    return lookup


def _op_each(rule: dict[str, Any]) -> Step:
    """Map every item of a list; drop items failing `when_item`; optionally `wrap` the list."""
    if "map" in rule:
        item_mapper = compile_nested_rules(rule["map"])
        render: Callable[[Any, dict[str, Any]], Any] = item_mapper
    else:
        render = compile_template(rule.get("template", "@value"))
    keep = compile_condition(rule["when_item"]) if "when_item" in rule else None
    wrap = compile_template(rule["wrap"]) if "wrap" in rule else None

    def each(value: Any, src: Any, ctx: dict[str, Any]) -> Any:
        if not isinstance(value, list):
            return MISSING
        items = [render(item, ctx) for item in value if keep is None or keep(item, ctx)]
        items = [i for i in items if i is not MISSING]
        if not items:
            return MISSING
        if wrap is None:
            return items
        ctx["items"] = items
        try:
            return wrap(value, ctx)
        finally:
            del ctx["items"]

    return each


def _number_source(item: Any) -> Callable[[Any, dict[str, Any]], Any]:
    """A number operand: a literal, a `/pointer` into the picked value, or an `@context` source."""
    if isinstance(item, (int, float)) and not isinstance(item, bool):
        return lambda value, ctx: item
    return compile_source(item)


def _number(getter: Callable[[Any, dict[str, Any]], Any], value: Any, ctx: dict[str, Any]) -> float | None:
    number = getter(value, ctx)
    return number if isinstance(number, (int, float)) and not isinstance(number, bool) else None


def _op_sum(rule: dict[str, Any]) -> Step:
    """Add the numbers of `of` (pointers, `@` sources, literals); a missing addend counts 0."""
    addends = [_number_source(p) for p in rule["of"]]
    subtrahends = [_number_source(p) for p in rule.get("minus", ())]

    # Plain loops: this runs on every reply's usage (no comprehensions or generators to set up).
    def total(value: Any, src: Any, ctx: dict[str, Any]) -> Any:
        result: float = 0
        found = False
        for addend in addends:
            n = _number(addend, value, ctx)
            if n is not None:
                result += n
                found = True
        if not found:
            return MISSING
        less: float = 0
        subtracted = False
        for subtrahend in subtrahends:
            n = _number(subtrahend, value, ctx)
            if n is not None:
                less += n
                subtracted = True
        return max(0, result - less) if subtracted else result

    return total


def _op_json_encode(rule: dict[str, Any]) -> Step:
    def encode(value: Any, src: Any, ctx: dict[str, Any]) -> Any:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    return encode


def _op_json_decode(rule: dict[str, Any]) -> Step:
    """Parse a JSON string; with `wrap: key`, a non-object result (or non-JSON text) becomes {key: value}."""
    wrap = rule.get("wrap")

    def decode(value: Any, src: Any, ctx: dict[str, Any]) -> Any:
        if not isinstance(value, str):
            return value if wrap is None or isinstance(value, dict) else {wrap: value}
        try:
            parsed = json.loads(value)
        except ValueError:
            if wrap is None:
                raise InvalidRequest(f"expected a JSON string, got {value[:60]!r}") from None
            return {wrap: value}
        if wrap is not None and not isinstance(parsed, dict):
            return {wrap: parsed}
        return parsed

    return decode


def _op_as_list(rule: dict[str, Any]) -> Step:
    drop_blank = rule.get("drop_blank", False)

    def as_list(value: Any, src: Any, ctx: dict[str, Any]) -> Any:
        items = value if isinstance(value, list) else [value]
        if drop_blank:
            items = [i for i in items if not (isinstance(i, str) and not i.strip())]
        return items or MISSING

    return as_list


def _op_clamp(rule: dict[str, Any]) -> Step:
    """Limit a number to `lo`..`hi`, and under `below` (an exclusive bound: at most `below - 1`).
    Each bound is a number or a source (`@out/max_tokens`, `@model_info/max_output_tokens`); a
    bound whose source is missing does not apply. The upper bounds win over `lo`."""
    bounds = {name: _number_source(rule[name]) for name in ("lo", "hi", "below") if name in rule}
    lo, hi, below = bounds.get("lo"), bounds.get("hi"), bounds.get("below")

    def clamp(value: Any, src: Any, ctx: dict[str, Any]) -> Any:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return value
        floor = _number(lo, src, ctx) if lo is not None else None
        if floor is not None and value < floor:
            value = floor
        ceiling = _number(hi, src, ctx) if hi is not None else None
        if ceiling is not None and value > ceiling:
            value = ceiling
        under = _number(below, src, ctx) if below is not None else None
        if under is not None and value >= under:
            value = under - 1
        return value

    return clamp


def _op_hash(rule: dict[str, Any]) -> Step:
    """A value -> the hex digest of its text (a non-string as its JSON), e.g. an end-user id a
    provider must not receive in clear. `algorithm` is one of hashlib's (sha256 by default)."""
    algorithm = rule.get("algorithm", "sha256")
    hashlib.new(algorithm)  # an unknown algorithm fails at load, not per request

    def digest(value: Any, src: Any, ctx: dict[str, Any]) -> Any:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
        return hashlib.new(algorithm, text.encode()).hexdigest()

    return digest


def _op_object_schema(rule: dict[str, Any]) -> Step:
    """A missing or empty JSON Schema becomes `{type: object, properties: {}}`."""

    def object_schema(value: Any, src: Any, ctx: dict[str, Any]) -> Any:
        if not isinstance(value, dict) or not value:
            return {"type": "object", "properties": {}}
        if "type" not in value:
            return {"type": "object", **value}
        return value

    return object_schema


def _op_omit_keys(rule: dict[str, Any]) -> Step:
    """Pass an object through minus some keys (no copy of nested values)."""
    keys = frozenset(rule.get("keys", ()))

    def omit_keys(value: Any, src: Any, ctx: dict[str, Any]) -> Any:
        if not isinstance(value, dict):
            return value
        return {k: v for k, v in value.items() if k not in keys}

    return omit_keys


def _op_concat(rule: dict[str, Any]) -> Step:
    """Join strings from `pieces` (sources or literals), e.g. a resource name `models/<model>`."""
    parts = [compile_template(p) for p in rule["pieces"]]

    def concat(value: Any, src: Any, ctx: dict[str, Any]) -> Any:
        pieces = [part(value, ctx) for part in parts]
        if any(p is MISSING for p in pieces):
            return MISSING
        return "".join(str(p) for p in pieces)

    return concat


def _op_bucket(rule: dict[str, Any]) -> Step:
    """A number -> the label of the first `ranges` entry `[upto, label]` with value <= upto, else `above`."""
    ranges = [(float(upto), label) for upto, label in rule["ranges"]]
    above = rule.get("above", MISSING)

    def bucket(value: Any, src: Any, ctx: dict[str, Any]) -> Any:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return MISSING
        for upto, label in ranges:
            if value <= upto:
                return label
        return above

    return bucket


#: Op name -> its compiler. The structural conversions (messages <-> turns of parts) are larger and
#: live in turns.py, message.py and client.py.
OPS: dict[str, Callable[[dict[str, Any]], Step]] = {
    "table": _op_table,
    "each": _op_each,
    "sum": _op_sum,
    "collect_text": compile_collect_text,
    "messages_to_turns": compile_messages_to_turns,
    "parts_to_message": compile_parts_to_message,
    "json_encode": _op_json_encode,
    "json_decode": _op_json_decode,
    "as_list": _op_as_list,
    "clamp": _op_clamp,
    "object_schema": _op_object_schema,
    "omit_keys": _op_omit_keys,
    "concat": _op_concat,
    "bucket": _op_bucket,
    "hash": _op_hash,
    "turns_to_messages": compile_turns_to_messages,
    "message_to_parts": compile_message_to_parts,
}


def compile_op(rule: dict[str, Any]) -> Step:
    return OPS[rule["op"]](rule)

