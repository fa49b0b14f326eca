"""Provider content parts -> one OpenAI assistant message (`parts_to_message`), the inverse of
`messages_to_turns`, and the part classifier it shares with stream event tables.

Tool-call ids that must round-trip provider data (a signature the provider wants back on the next
turn) carry it inside the id the client echoes: `<id><sep><base64url JSON>`. Stateless, so it works
across gateway instances; `messages_to_turns` unpacks it as `@carry/...`.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from typing import Any

from ..pointer import MISSING, compile_pointer, get
from .templates import compile_condition, compile_first_of

__all__ = ["Classifier", "compile_classifier", "compile_parts_to_message", "encode_carry", "new_call_id"]

Classifier = Callable[[Any, dict[str, Any]], str | None]
IGNORE = "_ignore"


def new_call_id(prefix: str = "call_") -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def encode_carry(call_id: str, carry: dict[str, Any], sep: str) -> str:
    if not carry:
        return call_id
    packed = base64.urlsafe_b64encode(json.dumps(carry, separators=(",", ":")).encode()).rstrip(b"=")
    return f"{call_id}{sep}{packed.decode()}"


def compile_classifier(spec: Any) -> Classifier:
    """`{by: /type, cases: {text: text, _default: _ignore}}` or `[{kind: tool_call, when: {has: /x}}, ...]`.

    Returns the kind of a part, or None to ignore it.
    """
    if isinstance(spec, dict):
        by = compile_pointer(spec["by"])
        cases: dict[Any, str] = spec["cases"]
        default = cases.get("_default", IGNORE)

        def by_value(part: Any, ctx: dict[str, Any]) -> str | None:
            value = get(part, by)
            kind = cases.get(value, default) if isinstance(value, (str, int, bool)) else default
            return None if kind == IGNORE else kind

        return by_value
    ordered = [(entry["kind"], compile_condition(entry["when"]) if "when" in entry else None) for entry in spec]

    def first_match(part: Any, ctx: dict[str, Any]) -> str | None:
        for kind, when in ordered:
            if when is None or when(part, ctx):
                return None if kind == IGNORE else kind
        return None

    return first_match


def _compile_fields(fields: dict[str, Any]) -> dict[str, Callable[[Any, dict[str, Any]], Any]]:
    return {name: compile_first_of(source) for name, source in fields.items()}


#: A compiled part field: (kind, field name, part, ctx) -> its value, or MISSING.
FieldGetter = Callable[[str, str, Any, dict[str, Any]], Any]
#: Renders a tool-call part as an OpenAI tool call: (part, ctx, the last part of each kind before it).
ToolCallRenderer = Callable[[Any, dict[str, Any], dict[str, Any]], dict[str, Any]]


def _compile_field_getter(rule: dict[str, Any]) -> FieldGetter:
    """`fields: {kind: {name: source, ...}}`: where each kind of part keeps its text, id, name, arguments."""
    fields = {kind: _compile_fields(f) for kind, f in rule.get("fields", {}).items()}

    def field(kind: str, name: str, part: Any, ctx: dict[str, Any]) -> Any:
        getter = fields.get(kind, {}).get(name)
        return getter(part, ctx) if getter is not None else MISSING

    return field


def _compile_tool_call(rule: dict[str, Any], field: FieldGetter) -> ToolCallRenderer:
    """A tool-call part -> `{id, type: function, function: {name, arguments}}`, with provider data it must
    get back (`id.carry`: from the part; `id.carry_preceding`: from the part of a kind just before it)
    packed into the id."""
    args_are_objects = rule.get("arguments_encoding", "object") == "object"
    ids = rule.get("id", {})
    id_prefix: str = ids.get("synth_prefix", "call_")
    carry_sep: str = ids.get("carry_sep", "~")
    carry_own = {name: compile_pointer(p) for name, p in ids.get("carry", {}).items()}
    carry_preceding = {
        name: (spec["kind"], compile_pointer(spec["from"])) for name, spec in ids.get("carry_preceding", {}).items()
    }

    def tool_call(part: Any, ctx: dict[str, Any], last_of_kind: dict[str, Any]) -> dict[str, Any]:
        make_id = ctx.get("new_call_id", new_call_id)
        call_id = field("tool_call", "id", part, ctx)
        if not isinstance(call_id, str) or not call_id:
            call_id = make_id(id_prefix)
        carry: dict[str, Any] = {}
        for name, tokens in carry_own.items():
            got = get(part, tokens)
            if got is not MISSING:
                carry[name] = got
        for name, (kind, tokens) in carry_preceding.items():
            before = last_of_kind.get(kind)
            if before is not None:
                got = get(before, tokens)
                if got is not MISSING:
                    carry[name] = got
        for kind, _ in carry_preceding.values():
            last_of_kind.pop(kind, None)  # a preceding part is carried by the first call after it only
        if args_are_objects:
            args = field("tool_call", "args", part, ctx)
            arguments = json.dumps(args if args is not MISSING else {}, ensure_ascii=False)
        else:
            arguments = field("tool_call", "arguments", part, ctx)
            arguments = arguments if isinstance(arguments, str) else "{}"
        return {
            "id": encode_carry(call_id, carry, carry_sep),
            "type": "function",
            "function": {"name": field("tool_call", "name", part, ctx), "arguments": arguments},
        }

    return tool_call


def compile_parts_to_message(rule: dict[str, Any]) -> Callable[[Any, Any, dict[str, Any]], Any]:
    """The `parts_to_message` op: a provider's content parts -> one OpenAI assistant message."""
    classify = compile_classifier(rule["classify"])
    field = _compile_field_getter(rule)
    tool_call = _compile_tool_call(rule, field)
    extra_sources = [compile_first_of(s) for s in rule.get("also_from", [])]
    # A tool the spec itself forced (structured output by tool call): its arguments are the content.
    content_tool: str | None = rule.get("content_tool")

    def to_message(value: Any, src: Any, ctx: dict[str, Any]) -> Any:
        parts = list(value) if isinstance(value, list) else []
        for extra in extra_sources:
            more = extra(src, ctx)
            if isinstance(more, list):
                parts.extend(more)
        texts: list[str] = []
        reasoning: list[str] = []
        refusals: list[str] = []
        calls: list[dict[str, Any]] = []
        last_of_kind: dict[str, Any] = {}
        for part in parts:
            kind = classify(part, ctx)
            if kind is None:
                continue
            if kind in ("text", "reasoning", "refusal"):
                text = field(kind, "text", part, ctx)
                if isinstance(text, str):
                    {"text": texts, "reasoning": reasoning, "refusal": refusals}[kind].append(text)
            elif kind == "tool_call":
                call = tool_call(part, ctx, last_of_kind)
                if content_tool is not None and call["function"]["name"] == content_tool:
                    texts.append(call["function"]["arguments"])
                else:
                    calls.append(call)
            last_of_kind[kind] = part
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
        if reasoning:
            message["reasoning_content"] = "".join(reasoning)
        message["refusal"] = "".join(refusals) if refusals else None
        if calls:
            message["tool_calls"] = calls
        return message

    return to_message
